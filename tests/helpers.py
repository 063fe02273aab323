"""Helpers shared by tests (importable because pytest puts `tests/` on the path).

Real servers (MLflow, Prefect) and the process-group helpers are in `servers.py`, which the
benchmarks use too.
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: The installed `mfstudy` console script, as a user runs it.
EXE = str(Path(sys.executable).with_name("mfstudy"))


def tiny_data(
    users: int = 300,
    items: int = 150,
    interactions: int = 8_000,
    *,
    pruner: str | None = None,
    threads_per_worker: int | None = None,
) -> list[str]:
    """Config overrides (`key=value`) for small synthetic data, so that a trial takes about a
    second; optionally the pruner kind and the threads per trial worker too."""
    sets = [f"data.n_users={users}", f"data.n_items={items}", f"data.n_interactions={interactions}"]
    if pruner is not None:
        sets.append(f"study.pruner.kind={pruner}")
    if threads_per_worker is not None:
        sets.append(f"study.threads_per_worker={threads_per_worker}")
    return sets


def grown_feed(
    users: int, items: int, interactions: int, seed: int, keep: float = 0.7
) -> tuple[Any, Any]:
    """(base, grown) interaction frames for the nightly retraining's tests: `keep` of the
    distinct pairs of planted-preference synthetic data (affinity 3), then all of them."""
    import numpy as np

    from mfstudy.config import SyntheticSource
    from mfstudy.data import generate_synthetic

    raw = generate_synthetic(
        SyntheticSource(n_users=users, n_items=items, n_interactions=interactions, affinity=3.0),
        seed,
    )
    frame = raw.frame[["user", "item", "weight"]].drop_duplicates(["user", "item"])
    kept = np.random.default_rng(seed).random(len(frame)) < keep
    return frame[kept], frame


def cli_sets(overrides: Iterable[str]) -> list[str]:
    """The `mfstudy` arguments for config overrides: `--set` before each."""
    return [arg for override in overrides for arg in ("--set", override)]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on 127.0.0.1 (a free port, its own thread); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


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
