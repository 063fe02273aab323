"""Shared fixtures: where the real datasets live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import shared_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        # CI always has the datasets; a silent skip there would hide a broken data path.
        if os.environ.get("CI"):
            pytest.fail("real datasets not found: set MFSTUDY_DATA_DIR")
        pytest.skip("real datasets not available (set MFSTUDY_DATA_DIR)")
    return d
