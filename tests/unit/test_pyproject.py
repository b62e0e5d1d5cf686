"""pyproject.toml uses the metadata forms current setuptools accepts without a warning."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_license_is_an_spdx_expression_and_the_backend_supports_it() -> None:
    doc = tomllib.loads(PYPROJECT.read_text())
    # PEP 639: a table (``{text = ...}``) is deprecated by setuptools >= 77 (a warning on
    # every install); an SPDX string needs setuptools >= 77 to build.
    assert doc["project"]["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in doc["project"].get("classifiers", []))
    (req,) = [r for r in doc["build-system"]["requires"] if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", req.replace(" ", ""))
    assert match is not None and int(match.group(1)) >= 77, req
