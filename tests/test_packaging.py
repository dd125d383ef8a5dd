"""Package metadata: what `pip install` reads must not rely on deprecated forms, and agree with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

import retinascan_hf

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression():
    """A `{text = ...}` table makes setuptools >= 77 warn at every install that the form is deprecated."""
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert int(PYPROJECT["build-system"]["requires"][0].split(">=")[1]) >= 77


def test_version_has_one_source():
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "retinascan_hf.__version__"}
    assert retinascan_hf.__version__.count(".") == 2
