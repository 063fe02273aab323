"""Where an orchestrator's one-trial-at-a-time calls run: this process, or long-lived workers.

An orchestrator that shows each trial as its own unit (a Prefect task run per trial) hands out
one trial at a time. Starting a process per trial, or re-creating an orchestration context in a
pool process for each one, costs a noticeable share of a seconds-long trial. So trials run in

- :class:`InProcessTrials` (one worker): in the caller's process, one at a time, like
  `mfstudy study` with one worker: nothing to start, nothing to pickle;
- :class:`TrialProcesses` (several workers): that many spawned processes kept for the whole
  study. Each caps its threads and pays its one-time costs (imports, numba's cache, a tiny fit)
  once, when it starts, while the caller goes on preparing data.

Both have the same interface: :meth:`run` calls `fn(*args)` on a free worker and returns its
result with the log lines the `mfstudy` loggers wrote meanwhile (a spawned process has no
orchestrator logging of its own, so the caller re-emits them); :meth:`warmed` waits until
worker `slot` has started. Calls beyond the number of workers wait for a free one, so a caller
may keep one call queued to start the next trial the moment one ends.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any, Protocol, TypeVar

from mfstudy.tuning._worker import limit_threads

__all__ = ["InProcessTrials", "LogLine", "TrialExecutor", "TrialProcesses", "local_trials"]

T = TypeVar("T")

#: (level, logger name, formatted message) of a log record written in a worker.
LogLine = tuple[int, str, str]


class TrialExecutor(Protocol):
    """Runs trial calls on `workers` workers; a context manager that owns them."""

    workers: int

    def __enter__(self) -> TrialExecutor: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, list[LogLine]]:
        """`fn(*args)` on a free worker (waiting for one): its result and its log lines."""
        ...

    def warmed(self, slot: int) -> float:
        """Wait until worker `slot` has paid its one-time costs; the seconds that took."""
        ...


class InProcessTrials:
    """One worker: calls run in the caller's process, one at a time (a lock queues the rest).

    Log lines go straight to the `mfstudy` loggers, so :meth:`run` returns none; threads are
    capped by each trial itself (`one_trial`), as in `mfstudy study`.
    """

    def __init__(self, warm_up: Callable[[], Any] | None = None) -> None:
        self.workers = 1
        self._warm_up = warm_up
        self._lock = threading.Lock()
        self._warmed: float | None = None

    def __enter__(self) -> InProcessTrials:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, list[LogLine]]:
        with self._lock:
            return fn(*args), []

    def warmed(self, slot: int = 0) -> float:
        if slot != 0:
            raise ValueError(f"one worker: no slot {slot}")
        with self._lock:
            if self._warmed is None:
                start = time.perf_counter()
                if self._warm_up is not None:
                    self._warm_up()
                self._warmed = time.perf_counter() - start
            return self._warmed


# ----------------------------------------------------------------------------- in a worker

_started_seconds = 0.0
_lines: list[LogLine] = []
_limits: Any = None


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _lines.append((record.levelno, record.name, record.getMessage()))


def _start_worker(threads: int, warm_up: Callable[[], Any] | None) -> None:
    """Process initializer: thread caps, log capture, then the one-time costs."""
    global _started_seconds, _limits
    start = time.perf_counter()
    logger = logging.getLogger("mfstudy")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Collect())
    logger.propagate = False  # the caller re-emits them; no second copy on stderr
    _limits = limit_threads(threads)
    if warm_up is not None:
        warm_up()
        # threadpoolctl caps only the libraries loaded so far: again for those the warm-up
        # loaded (implicit's OpenMP, numba's threading layer). Kept for the process's life.
        _limits = limit_threads(threads)
    _started_seconds = time.perf_counter() - start


def _started() -> float:
    return _started_seconds


def _call(fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[T, list[LogLine]]:
    _lines.clear()
    try:
        result = fn(*args)
    except BaseException as exc:
        for level, name, message in _lines:  # what the worker said before it failed
            exc.add_note(f"{logging.getLevelName(level)} {name}: {message}")
        raise
    return result, list(_lines)


class TrialProcesses:
    """`workers` spawned processes kept until the context exits.

    All of them start on entering (concurrent.futures starts processes on demand, so one
    start-up probe per worker is submitted at once) and warm up in their initializer. A worker
    that is ready first may answer two probes, so :meth:`warmed` is a good wait, not a proof
    that every worker is ready (a trial on a cold one simply waits for its start-up).
    """

    def __init__(
        self, workers: int, threads: int, warm_up: Callable[[], Any] | None = None
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads
        self._warm_up = warm_up
        self._pool: ProcessPoolExecutor | None = None
        self._probes: list[Future[float]] = []

    def __enter__(self) -> TrialProcesses:
        # spawn, not fork: forking a process that already runs BLAS/OpenMP/numba threads can
        # deadlock the child.
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.threads, self._warm_up),
        )
        self._probes = [self._pool.submit(_started) for _ in range(self.workers)]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, list[LogLine]]:
        if self._pool is None:
            raise RuntimeError("TrialProcesses used outside its `with` block")
        return self._pool.submit(_call, fn, args).result()

    def warmed(self, slot: int) -> float:
        return self._probes[slot].result()

    def __reduce__(self) -> Any:
        # Holds live processes: it must stay with the caller, never travel to a worker.
        raise TypeError("TrialProcesses cannot be pickled")


def local_trials(
    workers: int, threads: int, warm_up: Callable[[], Any] | None = None
) -> InProcessTrials | TrialProcesses:
    """In this process for one worker (as `mfstudy study` does), else long-lived processes."""
    if workers == 1:
        return InProcessTrials(warm_up)
    return TrialProcesses(workers, threads, warm_up)
