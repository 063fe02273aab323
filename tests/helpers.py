"""Helpers shared by tests (importable because pytest puts `tests/` on the path)."""

from __future__ import annotations

import os
from pathlib import Path

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
