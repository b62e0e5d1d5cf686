"""Fixtures shared by the in-process integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.inproc import InProcessFactory


@pytest.fixture(name="inproc")
def _inproc(tmp_path: Path) -> Iterator[InProcessFactory]:
    """Workers run in this process on real loopback sockets; closed after the test."""
    factory = InProcessFactory(tmp_path)
    yield factory
    factory.close()
