"""The one way a study's trials run: a driver that resubmits one unit, on some lanes.

The unit is :func:`one_trial`: reserve a trial under the budget lock and run it (None when the
budget is used up or the deadline passed). :func:`drive_trials` keeps a number of units in
flight on :class:`TrialLanes` and submits another each time one returns a trial, until one
returns None; then it waits for the rest. `mfstudy study` and the Prefect flow both call it;
they differ only in their lanes (where a unit executes):

- :class:`LocalLanes` (the command): in this process for one worker, else on `workers`
  long-lived processes (:class:`~mfstudy.tuning.TrialProcesses`) fed by a thread each;
- the flow's lanes (`flows/study.py`): a Prefect task run per unit, whose thread hands the
  unit to the same trial processes, or runs it on a Dask worker.

Which trial a unit runs, and which parameters it gets, is decided in the study's storage under
the reservation lock, and the sampler is seeded by the trial number
(:class:`~mfstudy.tuning._factories.PerTrialSeedSampler`): so with one worker every path runs
the same trials in the same order with the same results. With several workers, trials run
concurrently and a proposal depends on which trials had finished when it was asked; see
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
from mfstudy.tuning._study import _poll_study, fail_worker_trial, quiet
from mfstudy.tuning._worker import TrialContext, TrialOutcome, load_study, reserve_trial, run_trial
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


def one_trial(ctx: TrialContext) -> TrialOutcome | None:
    """Reserve one trial of the study (under the budget lock) and run it; None when the budget
    is used up or the deadline passed. The trial's fit, evaluation included, runs under its
    thread cap (`run_trial`)."""
    quiet()
    prepared = _prepared(ctx)
    study = load_study(ctx)
    trial = reserve_trial(study, ctx)
    if trial is None:
        return None
    return run_trial(trial, study, prepared, ctx)


class _Logs(Protocol):
    def log(self, level: int, msg: str, *args: Any) -> None: ...

    def warning(self, msg: str, *args: Any) -> None: ...


def run_one(
    ctx: TrialContext, trials: TrialExecutor | None, logs: _Logs = log
) -> TrialOutcome | None:
    """:func:`one_trial` on one of `trials` (None: here, in this process), re-emitting the log
    lines it wrote there on `logs`.

    If the worker process dies mid-trial (`kill -9`, the OOM killer), that trial is marked
    failed in Optuna and tracking and returned as failed; a fresh process has taken the dead
    one's place and the budget re-runs it. If the workers were stopped (an interrupted or
    cancelled study), :class:`TrialsStopped` says which trial was marked failed.
    """
    if trials is None:
        return one_trial(ctx)
    for attempt in range(3):
        try:
            outcome, lines = trials.run(one_trial, ctx)
            break
        except WorkerDied as died:
            trial = fail_worker_trial(ctx, died.token, died.reason)
            held = "no trial" if trial is None else f"trial {trial.number} marked failed"
            logs.warning("%s: %s", died.reason, held)
            if died.stopped is not None:
                raise TrialsStopped(f"{died.reason}: {held}") from None
            if trial is not None:
                return TrialOutcome(
                    trial.number, "failed", None, None, dict(trial.params), died.reason
                )
            if attempt == 2:  # workers dying before they even reserve a trial
                raise
    for level, _name, message in lines:  # said in a worker process, shown here
        logs.log(level, "%s", message)
    return outcome


# ----------------------------------------------------------------------------- lanes


class TrialLanes(Protocol):
    """Where units run. `submit(ctx, slot)` starts :func:`run_one` for `ctx` somewhere and
    returns a future (anything with `result()`); `wait(futures, timeout)` returns
    `(done, not_done)` once at least one is done or `timeout` seconds passed. `slot` numbers
    the submissions from 1 (to name them; the trial number is known only once reserved)."""

    def submit(self, ctx: TrialContext, slot: int) -> Any: ...

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

    @property
    def in_flight(self) -> int:
        """Units to keep submitted: one per worker, plus one queued so the next trial starts
        the moment one ends (none queued in this process: it would run at submission)."""
        return 1 if self._procs is None else self.workers + 1

    def __enter__(self) -> LocalLanes:
        if self._procs is not None:
            self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="trial")
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

    def submit(self, ctx: TrialContext, slot: int) -> Future[TrialOutcome | None]:
        if self._pool is None:
            fut: Future[TrialOutcome | None] = Future()
            fut.set_result(one_trial(ctx))  # an exception (Ctrl-C) propagates from here
            return fut
        return self._pool.submit(run_one, ctx, self._procs)

    def wait(self, futures: list[Any], timeout: float) -> tuple[Iterable[Any], Iterable[Any]]:
        return concurrent.futures.wait(futures, timeout, concurrent.futures.FIRST_COMPLETED)


# ----------------------------------------------------------------------------- the driver


def drive_trials(
    ctx: TrialContext,
    lanes: TrialLanes,
    in_flight: int,
    on_poll: OnPoll | None = None,
    poll_seconds: float = 2.0,
) -> list[TrialOutcome]:
    """Keep `in_flight` units submitted on `lanes` until one finds the budget used up (or the
    deadline passed), then wait for the others; the outcomes of the trials that ran.

    Each unit reserves its trial when it starts, under the study's lock, so the budget is exact
    whatever runs the units. `on_poll(study, last)` is called once before the first unit, after
    units returned, and with `last=True` at the end. An exception from a unit (a bug, or
    :class:`TrialsStopped`) is raised at once: the caller's lanes, left on it, stop the units
    still running.
    """
    study = _poll_study(ctx)
    if on_poll is not None:
        on_poll(study, False)
    outcomes: list[TrialOutcome] = []
    slot = 0
    exhausted = False

    def submit() -> Any:
        nonlocal slot
        slot += 1
        return lanes.submit(ctx, slot)

    pending: set[Any] = set()
    for _ in range(in_flight):
        pending.add(submit())
    while pending:
        done, rest = lanes.wait(list(pending), poll_seconds)
        pending = set(rest)
        for fut in done:
            outcome = fut.result()
            if outcome is None:
                exhausted = True
                continue
            outcomes.append(outcome)
            if not exhausted:
                pending.add(submit())
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
        return drive_trials(ctx, lanes, lanes.in_flight, on_poll=on_poll)
