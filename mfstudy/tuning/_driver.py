"""The one way a study's trials run: a driver reserves trials and hands each to a lane.

:func:`drive_trials` reserves a trial (under the budget lock, in the caller's process) and
submits the unit :func:`one_trial` for its number to :class:`TrialLanes`, keeping one unit per
worker in flight, until the budget is used up or the deadline passed; then it waits for the
rest. So every unit runs a trial (none finds the budget gone) and the trial's number is known
when the unit is submitted. `mfstudy study` and the Prefect flow both call it; they differ
only in their lanes (where a unit executes):

- :class:`LocalLanes` (the command): in this process for one worker, else on `workers`
  long-lived processes (:class:`~mfstudy.tuning._executors.TrialProcesses`) fed by a thread
  each;
- the flow's lanes (`flows/study.py`): a Prefect task run per trial, named by its number,
  whose thread hands the unit to the same trial processes, or runs it on a Dask worker.

A trial's parameters are sampled when its unit starts (:func:`~mfstudy.tuning._worker.take_trial`)
by a sampler seeded by the trial number
(:class:`~mfstudy.tuning._factories.PerTrialSeedSampler`): with one worker every path runs the
same trials in the same order with the same results. With several workers, trials overlap and
a proposal depends on which trials had finished when it was sampled; see
`tests/prefect_flows/test_same_as_cli.py` for the cases that stay deterministic.

This mirrors Optuna's own `study/_optimize.py`, whose parallel path resubmits its sequential
unit.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Protocol

import optuna

from mfstudy.prepare import Prepared, read_prepared
from mfstudy.tuning._executors import TrialExecutor, TrialProcesses, WorkerDied
from mfstudy.tuning._study import fail_worker_trial, quiet
from mfstudy.tuning._worker import (
    TrialContext,
    TrialOutcome,
    load_study,
    reserve_trial,
    run_trial,
    take_trial,
)
from mfstudy.workdir import study_lock

__all__ = [
    "LocalLanes",
    "TrialLanes",
    "TrialsStopped",
    "drive_trials",
    "one_trial",
    "run_local",
    "run_one",
]

log = logging.getLogger("mfstudy.tuning")

#: Called with the study after units returned, and with `last=True` once all have.
OnPoll = Callable[[optuna.Study, bool], None]


class TrialsStopped(Exception):
    """The trial workers were stopped (a cancelled or interrupted study) while a unit ran; its
    trial, if it had reserved one, is marked failed and re-run when the study resumes."""


# ----------------------------------------------------------------------------- the unit

# One prepared dataset per process: a worker process runs many units of one study, and reading
# the matrices for each would cost more than a short trial. Keyed by the folder and its
# stats.json stamp, so a study re-prepared in the same folder is read again.
_PREPARED_CACHE: dict[tuple[str, int], Prepared] = {}


def _prepared(ctx: TrialContext) -> Prepared:
    with study_lock(ctx.config, shared=True):  # not while another process rewrites it
        stamp = (ctx.prepared_dir / "stats.json").stat().st_mtime_ns
        key = (str(ctx.prepared_dir), stamp)
        prepared = _PREPARED_CACHE.get(key)
        if prepared is None:
            _PREPARED_CACHE.clear()
            prepared = _PREPARED_CACHE[key] = read_prepared(ctx.prepared_dir)
    return prepared


def one_trial(ctx: TrialContext, number: int) -> TrialOutcome:
    """Run the reserved trial `number` here: sample its parameters, train, report, tell. The
    fit, evaluation included, runs under the trial's thread cap (`run_trial`)."""
    quiet()
    prepared = _prepared(ctx)
    study = load_study(ctx)
    return run_trial(take_trial(study, number), study, prepared, ctx)


class _Logs(Protocol):
    def log(self, level: int, msg: str, *args: Any) -> None: ...

    def warning(self, msg: str, *args: Any) -> None: ...


def run_one(
    ctx: TrialContext, number: int, trials: TrialExecutor | None, logs: _Logs = log
) -> TrialOutcome:
    """:func:`one_trial` for trial `number` on one of `trials` (None: here, in this process),
    re-emitting the log lines it wrote there on `logs`.

    If the worker process dies mid-trial (`kill -9`, the OOM killer), the trial is marked
    failed in Optuna and tracking and returned as failed; a fresh process has taken the dead
    one's place and the budget re-runs it. If the workers were stopped (an interrupted or
    cancelled study), the trial is marked failed the same way and :class:`TrialsStopped` says
    so.
    """
    if trials is None:
        return one_trial(ctx, number)
    try:
        outcome, lines = trials.run(one_trial, ctx, number)
    except WorkerDied as died:
        trial = fail_worker_trial(ctx, number, died.reason)
        logs.warning("%s: trial %d marked failed", died.reason, number)
        if died.stopped is not None:
            raise TrialsStopped(f"{died.reason}: trial {number} marked failed") from None
        params = {} if trial is None else dict(trial.params)
        return TrialOutcome(number, "failed", None, None, params, died.reason)
    for level, _name, message in lines:  # said in a worker process, shown here
        logs.log(level, "%s", message)
    return outcome


# ----------------------------------------------------------------------------- lanes


class TrialLanes(Protocol):
    """Where units run. `submit(ctx, number)` starts :func:`run_one` for the reserved trial
    `number` somewhere and returns a future (anything with `result()`, giving the
    :class:`TrialOutcome`); `wait(futures, timeout)` returns `(done, not_done)` once at least
    one is done or `timeout` seconds passed."""

    def submit(self, ctx: TrialContext, number: int) -> Any: ...

    def wait(self, futures: list[Any], timeout: float) -> tuple[Iterable[Any], Iterable[Any]]: ...


class LocalLanes:
    """This machine, without an orchestrator (`mfstudy study`).

    One worker: each unit runs in this process at submission, like a plain loop (nothing to
    start; a debugger sees the trial; Ctrl-C stops it where it is, and a resume fails the
    trial it held). Several: `workers` :class:`TrialProcesses` and a thread per unit in flight
    handing it to a free one; leaving the block on an exception (Ctrl-C) stops the processes,
    failing the trials they held.
    """

    def __init__(self, workers: int, threads: int, warm_up: Callable[[], Any] | None = None):
        self.workers = workers
        self._procs = TrialProcesses(workers, threads, warm_up) if workers > 1 else None
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> LocalLanes:
        if self._procs is not None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="trial")
            self._procs.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._procs is not None and self._pool is not None:
            try:
                self._procs.__exit__(exc_type, exc, tb)  # stops them on an exception
            finally:
                self._pool.shutdown(wait=True)  # the threads end once their process answers

    def submit(self, ctx: TrialContext, number: int) -> Future[TrialOutcome]:
        if self._pool is None:
            fut: Future[TrialOutcome] = Future()
            fut.set_result(one_trial(ctx, number))  # an exception (Ctrl-C) propagates from here
            return fut
        return self._pool.submit(run_one, ctx, number, self._procs)

    def wait(self, futures: list[Any], timeout: float) -> tuple[Iterable[Any], Iterable[Any]]:
        return concurrent.futures.wait(futures, timeout, concurrent.futures.FIRST_COMPLETED)


# ----------------------------------------------------------------------------- the driver


def drive_trials(
    ctx: TrialContext,
    lanes: TrialLanes,
    workers: int,
    on_poll: OnPoll | None = None,
    poll_seconds: float = 2.0,
) -> list[TrialOutcome]:
    """Reserve trials and submit them on `lanes`, `workers` at a time, until the budget is used
    up (or the deadline passed), then wait for the others; the outcomes of the trials run.

    Trials are reserved here, one at a time, under the study's reservation lock, so the budget
    is exact whatever runs the units (also with other processes on the same study).
    `on_poll(study, last)` is called once before the first trial, after trials returned, and
    with `last=True` at the end. An exception from a unit (a bug, or :class:`TrialsStopped`)
    is raised at once: the caller's lanes, left on it, stop the units still running.
    """
    study = load_study(ctx)
    if on_poll is not None:
        on_poll(study, False)
    outcomes: list[TrialOutcome] = []
    pending: set[Any] = set()
    exhausted = False

    def submit() -> None:
        nonlocal exhausted
        trial = reserve_trial(study, ctx)
        if trial is None:
            exhausted = True
        else:
            pending.add(lanes.submit(ctx, trial.number))

    while not exhausted and len(pending) < workers:
        submit()
    while pending:
        done, _ = lanes.wait(list(pending), poll_seconds)
        pending.difference_update(done)
        for fut in done:
            outcomes.append(fut.result())
            if not exhausted:
                submit()
        if done and on_poll is not None:
            on_poll(study, False)
    if on_poll is not None:
        on_poll(study, True)
    return outcomes


def run_local(
    ctx: TrialContext,
    workers: int,
    on_poll: OnPoll | None = None,
    warm_up: Callable[[], Any] | None = None,
) -> list[TrialOutcome]:
    """:func:`drive_trials` on this machine's :class:`LocalLanes` (what `mfstudy study` does
    between opening and closing the study); the outcomes of the trials that ran."""
    with LocalLanes(workers, ctx.threads, warm_up) as lanes:
        return drive_trials(ctx, lanes, workers, on_poll=on_poll)
