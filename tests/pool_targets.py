"""Functions the trial-executor tests run in spawned worker processes (importable by name)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path


def pid() -> int:
    return os.getpid()


def mark_warm(folder: str) -> None:
    """A warm-up that leaves one file per process that ran it."""
    Path(folder, f"warm-{os.getpid()}").touch()


def meet(folder: str, n: int, timeout: float = 60.0) -> int:
    """Wait until `n` calls are inside this function at once (proves they overlap); the pid."""
    Path(folder, f"in-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(Path(folder).glob("in-*"))) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(Path(folder).glob('in-*')))} of {n} calls met")
        time.sleep(0.01)
    return os.getpid()


def say(message: str) -> str:
    logging.getLogger("mfstudy.test").warning("said %s", message)
    logging.getLogger("mfstudy.test").debug("not shown %s", message)
    logging.getLogger("elsewhere").warning("not mfstudy's")
    return message


def say_then_fail(message: str) -> None:
    logging.getLogger("mfstudy.test").warning("before failing: %s", message)
    raise ValueError("broken trial machinery")


def load_thread_pools() -> None:
    """A warm-up that loads numba's threading layer (its OpenMP), as a real one does."""
    import numba
    import numpy as np

    @numba.njit(parallel=True)
    def total(x: np.ndarray) -> float:
        s = 0.0
        for i in numba.prange(x.shape[0]):
            s += x[i]
        return s

    total(np.ones(10))


def thread_caps() -> tuple[int, int]:
    """(numba threads, OpenMP/BLAS cap seen by threadpoolctl) in this worker."""
    import numba
    from threadpoolctl import threadpool_info

    caps = [lib["num_threads"] for lib in threadpool_info()]
    return numba.get_num_threads(), max(caps) if caps else -1


def hold(folder: str, timeout: float = 120.0) -> int:
    """Announce this worker's pid in `folder` (file `held-<pid>`), then block as a long trial
    would, until killed; the pid if nobody did."""
    Path(folder, f"held-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid()
