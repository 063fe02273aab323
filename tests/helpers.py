"""Helpers shared by tests (importable because pytest puts `tests/` on the path)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def journal_study(journal: Path, name: str) -> Any:
    """The Optuna study `name` in a journal file, opened as the workers open it
    (`mfstudy.tuning._factories.make_storage`, with its flock)."""
    import optuna

    from mfstudy.tuning._factories import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(str(journal)))


def shared_data_dir() -> Path | None:
    """`$MFSTUDY_DATA_DIR`, or `../shared/data` beside the repo when it exists."""
    env = os.environ.get("MFSTUDY_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def lock_held(path: Path) -> bool:
    """Whether some open file (of any process, this one included) holds an flock on `path`:
    a non-blocking exclusive flock from a fresh file descriptor is refused then."""
    if not path.exists():
        return False  # never taken (`file_lock` creates the file)
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
