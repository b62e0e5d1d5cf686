"""The fuzz tests: hypothesis over every parser of untrusted bytes (settings: support.fuzzing)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fuzz/" in str(item.path):
            # dnspython draws message IDs from the random module while building replies
            item.add_marker(
                pytest.mark.filterwarnings(
                    "ignore:Do not use the `random` module"
                    ":hypothesis.errors.HypothesisDeprecationWarning"
                )
            )
