"""Where an orchestrator's one-trial-at-a-time calls run: this process, or long-lived workers.

An orchestrator that shows each trial as its own unit (a Prefect task run per trial) hands out
one trial at a time. Starting a process per trial, or re-creating an orchestration context in a
pool process for each one, costs a noticeable share of a seconds-long trial. So trials run in

- :class:`InProcessTrials` (one worker): in the caller's process, one at a time, like
  `mfstudy study` with one worker: nothing to start, nothing to pickle;
- :class:`TrialProcesses` (several workers): that many spawned processes kept for the whole
  study. Each caps its threads and pays its one-time costs (imports, numba's cache, a tiny fit)
  once, when it starts, while the caller goes on preparing data. A worker that dies (`kill -9`,
  the OOM killer) is replaced, and only its own call fails (:class:`WorkerDied`): `mfstudy
  study --workers N` runs its trials on them too (`_driver.LocalLanes`).

Both have the same interface: :meth:`run` calls `fn(*args)` on a free worker and returns its
result with the log lines the `mfstudy` loggers wrote meanwhile (a spawned process has no
orchestrator logging of its own, so the caller re-emits them); :meth:`warmed` waits until
worker `slot` has started. Calls beyond the number of workers wait for a free one, so a caller
may keep one call queued to start the next trial the moment one ends.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Protocol, TypeVar

from mfstudy.threads import limit_threads
from mfstudy.tuning._worker import worker_token

__all__ = [
    "InProcessTrials",
    "LogLine",
    "TrialExecutor",
    "TrialProcesses",
    "WorkerDied",
    "local_trials",
]

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

    def stop(self, reason: str) -> None:
        """Stop the workers now, failing running calls with :class:`WorkerDied` (if it can)."""
        ...


class InProcessTrials:
    """One worker: calls run in the caller's process, one at a time (a lock queues the rest).

    Log lines go straight to the `mfstudy` loggers, so :meth:`run` returns none; threads are
    capped by each trial itself (`one_trial`).
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

    def stop(self, reason: str) -> None:
        """Nothing to stop: a call in this process cannot be killed, it ends on its own."""

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
    """A worker's start-up: thread caps, log capture, then the one-time costs."""
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


def _call(fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[T, list[LogLine]]:
    _lines.clear()
    try:
        result = fn(*args)
    except BaseException as exc:
        for level, name, message in _lines:  # what the worker said before it failed
            exc.add_note(f"{logging.getLevelName(level)} {name}: {message}")
        raise
    return result, list(_lines)


class WorkerDied(Exception):
    """The worker process running a call ended before answering it.

    Either it died (`kill -9`, the OOM killer, a crash in native code: `exitcode` is minus the
    signal or the exit status) and a fresh process has already taken its place, or the
    workers were stopped (:meth:`TrialProcesses.stop`, `stopped` is True, `reason` says why).
    `token` is the dead process's :func:`~mfstudy.tuning._worker.worker_token`, the one a trial
    it reserved carries, so the caller can tell which trial it held.
    """

    def __init__(self, token: str, exitcode: int | None, stopped: str | None = None) -> None:
        self.token = token
        self.exitcode = exitcode
        self.stopped = stopped
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        if self.stopped is not None:
            return f"trial workers stopped: {self.stopped}"
        code = self.exitcode
        if code is None:
            return "worker process died"
        if code < 0:
            return f"worker process died (signal {-code})"
        return f"worker process died (exit code {code})"


class _RemoteTraceback(Exception):
    """The worker-side traceback of a call's exception, attached as its cause."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)

    def __str__(self) -> str:
        return str(self.args[0])


def _serve(conn: Connection, threads: int, warm_up: Callable[[], Any] | None) -> None:
    """A worker process's main: start up, then run calls from `conn` until told to stop.

    The process leaves SIGINT and SIGTERM to its parent: Ctrl-C in a terminal and a Prefect
    cancellation signal the whole process group, and the parent must fail the running trials
    and stop its workers itself, not find them already dead and take them for crashes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _start_worker(threads, warm_up)
    except BaseException as exc:
        _send(conn, ("failed", exc))
        return
    _send(conn, ("ready", (_started_seconds, worker_token())))
    try:
        while (msg := conn.recv()) is not None:
            fn, args = msg
            try:
                _send(conn, ("ok", _call(fn, args)))
            except BaseException as exc:  # answered to the caller, the worker lives on
                _send(conn, ("error", exc))
    except (EOFError, KeyboardInterrupt):  # the parent went away, or Ctrl-C while idle
        return


def _send(conn: Connection, msg: tuple[str, Any]) -> None:
    kind, value = msg
    if isinstance(value, BaseException):
        value = _portable(value)
    try:
        conn.send((kind, value))
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an unpicklable result
        conn.send(("error", _portable(RuntimeError(f"could not send the {kind} result: {exc}"))))


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """`exc` (or a RuntimeError saying it, when it does not pickle: the caller must get an
    exception either way) with its traceback's text, which pickling would drop."""
    tb = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        plain = RuntimeError(f"{type(exc).__name__}: {exc}")
        for note in getattr(exc, "__notes__", ()):
            plain.add_note(note)
        exc = plain
    return exc, tb


def _raise_remote(value: tuple[BaseException, str]) -> None:
    exc, tb = value
    raise exc from _RemoteTraceback(f'\n"""\n{tb}"""')


class _Slot:
    """One worker: its process, the parent's end of its pipe, and what it said on start-up."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.started: float | None = None
        self.token = f"?:{process.pid}:?"


class TrialProcesses:
    """`workers` spawned processes kept until the context exits, each answering one call at a
    time over its own pipe.

    All of them start on entering and warm up (thread caps, log capture, `warm_up`) before
    their first call. A worker that dies (`kill -9`, the OOM killer) fails only the call it
    was running, with :class:`WorkerDied`, and a fresh process takes its place at once; the
    others go on (a `concurrent.futures` process pool breaks as a whole when one child dies).

    The workers ignore SIGINT and SIGTERM and capture their `mfstudy` log lines for the
    caller; the caller stops them (:meth:`stop`, or leaving the `with` block on an exception),
    which fails the calls still running with :class:`WorkerDied` (`stopped` set).
    """

    def __init__(
        self,
        workers: int,
        threads: int,
        warm_up: Callable[[], Any] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads
        self._warm_up = warm_up
        self._slots: list[_Slot] = []
        self._free: list[int] = []
        self._cond = threading.Condition()
        self._stopped: str | None = None
        self._entered = False

    # ------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> TrialProcesses:
        self._slots = [self._spawn() for _ in range(self.workers)]
        self._free = list(range(self.workers))
        self._stopped = None
        self._entered = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if not self._entered:
            return
        if exc_type is not None:
            self.stop(f"the caller ended early ({exc_type.__name__})")
        with self._cond:
            self._stopped = self._stopped or "closed"
            self._cond.notify_all()
            idle = [self._slots[i] for i in self._free]
            self._free = []
        for slot in idle:  # idle workers end on None; busy ones were stopped above
            try:
                slot.conn.send(None)
            except OSError:
                pass
        for slot in idle:
            slot.process.join(timeout=30)
            if slot.process.is_alive():  # pragma: no cover - a worker ignoring its pipe
                slot.process.kill()
                slot.process.join()
            slot.conn.close()
        self._entered = False

    def stop(self, reason: str) -> None:
        """Kill every worker now; calls still running fail with :class:`WorkerDied`
        (`stopped=reason`), waiting ones at once. For a cancelled or failed study: the
        trials they held are left for the caller to fail (their processes are gone)."""
        with self._cond:
            if self._stopped is not None:
                return
            self._stopped = reason
            for slot in self._slots:
                if slot.process.is_alive():
                    slot.process.kill()
            self._cond.notify_all()

    def _spawn(self) -> _Slot:
        # spawn, not fork: forking a process that already runs BLAS/OpenMP/numba threads can
        # deadlock the child.
        mp = multiprocessing.get_context("spawn")
        ours, theirs = mp.Pipe()
        process = mp.Process(
            target=_serve,
            args=(theirs, self.threads, self._warm_up),
            name="mfstudy-trial-worker",
            daemon=True,  # never outlives this process's normal exit
        )
        process.start()
        theirs.close()  # so a dead worker reads as EOF here
        return _Slot(process, ours)

    # ------------------------------------------------------------------------- calls

    def _take(self, slot: int | None = None) -> int:
        with self._cond:
            while True:
                if self._stopped is not None:
                    raise WorkerDied("", None, stopped=self._stopped)
                if slot is None and self._free:
                    return self._free.pop(0)
                if slot is not None and slot in self._free:
                    self._free.remove(slot)
                    return slot
                self._cond.wait()

    def _give_back(self, i: int) -> None:
        with self._cond:
            self._free.append(i)
            self._cond.notify_all()

    def _receive(self, i: int) -> tuple[str, Any]:
        """The next message of worker `i`; on its death, reap it, put a fresh process in its
        place (unless stopped) and raise :class:`WorkerDied`."""
        slot = self._slots[i]
        try:
            return slot.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            pass
        # Reaped before anyone asks whether its pid still runs (a zombie still answers).
        slot.process.join()
        slot.conn.close()
        died = WorkerDied(slot.token, slot.process.exitcode)
        with self._cond:
            if self._stopped is not None:
                died = WorkerDied(slot.token, slot.process.exitcode, stopped=self._stopped)
            else:
                self._slots[i] = self._spawn()
        raise died

    def _ready(self, i: int) -> float:
        slot = self._slots[i]
        if slot.started is None:
            kind, value = self._receive(i)
            if kind == "failed":
                _raise_remote(value)
            slot.started, slot.token = value
        return slot.started

    def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, list[LogLine]]:
        if not self._entered:
            raise RuntimeError("TrialProcesses used outside its `with` block")
        i = self._take()
        try:
            for attempt in range(3):
                try:
                    self._ready(i)
                    break
                except WorkerDied as exc:  # died before it had a call: nothing was lost
                    if exc.stopped is not None or attempt == 2:
                        raise
            self._slots[i].conn.send((fn, args))
            kind, value = self._receive(i)
        finally:
            self._give_back(i)
        if kind == "error":
            _raise_remote(value)
        return value  # type: ignore[no-any-return]

    def warmed(self, slot: int) -> float:
        self._take(slot)
        try:
            return self._ready(slot)
        finally:
            self._give_back(slot)

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
