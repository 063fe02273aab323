"""File locks and file-system checks shared by the layers (core, tuning, tracking)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["file_lock", "why_not_creatable"]


@contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """An flock on `path` (created if missing); the kernel releases it if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def why_not_creatable(path: Path) -> str | None:
    """Why the file `path` cannot be opened for writing or created, or None if it can: it
    exists as a writable file, or its nearest existing ancestor is a writable folder.

    Checked up front because the libraries that open these files (SQLite through SQLAlchemy,
    MLflow) report an unwritable folder only after minutes of retries.
    """
    if path.exists():
        if not path.is_file():
            return f"{path} exists and is not a file"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not writable"
        return None
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None
