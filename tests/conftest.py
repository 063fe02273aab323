"""Shared fixtures: where the real datasets live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """`$MFSTUDY_DATA_DIR`, or `../shared/data` beside the repo when it exists."""
    env = os.environ.get("MFSTUDY_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real datasets not available (set MFSTUDY_DATA_DIR)")
    return d
