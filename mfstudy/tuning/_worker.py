"""One trial: reserve it under the budget lock, train, report every evaluated epoch, tell.

Everything a trial needs travels in a picklable :class:`TrialContext`, so the same code runs
in this process, a local trial process or a Dask worker (`_driver.py` decides which trials
run; this module runs one).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import optuna
from optuna.trial import TrialState

from mfstudy.config import StudyConfig
from mfstudy.evaluation import evaluate_model
from mfstudy.models import DivergedError, Recommender, model_class
from mfstudy.prepare import Prepared
from mfstudy.threads import fit_capped
from mfstudy.tuning._factories import make_pruner, make_sampler, make_storage
from mfstudy.tuning._space import suggest
from mfstudy.workdir import reservation_lock

__all__ = [
    "TrialContext",
    "TrialLog",
    "TrialOutcome",
    "build_model",
    "finished_count",
    "load_study",
    "run_trial",
]

log = logging.getLogger("mfstudy.tuning")

WORKER_ATTR = "mfstudy.worker"
CRASHED_ATTR = "mfstudy.crashed"
BEST_EPOCH_ATTR = "best_epoch"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialLog(Protocol):
    """What a trial reports to (tracking implements it; None means no tracking)."""

    run_id: str | None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def end(
        self,
        state: str,
        best_epoch: int | None,
        best_value: float | None,
        error: str | None = None,
    ) -> None: ...


@runtime_checkable
class FailsCrashedTrials(Protocol):
    """A trial log factory that can also end FAILED the run of a trial whose worker process
    died (tracking's `MlflowTrialLogs` does), so tracking agrees with Optuna at once."""

    def fail_crashed(self, number: int, run_id: str | None, reason: str) -> None: ...


#: Opens a TrialLog for (trial number, params); must be picklable (a module-level callable or
#: a dataclass instance with __call__).
TrialLogFactory = Callable[[int, dict[str, Any]], TrialLog]


@dataclass(frozen=True)
class TrialContext:
    """What a worker needs: the study's storage and name, the prepared data and the config."""

    config: StudyConfig
    storage: str
    study_name: str
    prepared_dir: Path
    n_trials: int
    threads: int = 1
    tracker: TrialLogFactory | None = None
    deadline: float | None = None  # time.time() after which no new trial starts


@dataclass
class TrialOutcome:
    number: int
    state: str
    value: float | None
    best_epoch: int | None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ----------------------------------------------------------------------------- study access


def load_study(ctx: TrialContext) -> optuna.Study:
    cfg = ctx.config
    return optuna.load_study(
        study_name=ctx.study_name,
        storage=make_storage(ctx.storage),
        sampler=make_sampler(cfg.study.sampler, cfg),
        pruner=make_pruner(cfg.study.pruner),
    )


def finished_count(study: optuna.Study, running: bool = False) -> int:
    """Trials that count against the budget: complete, pruned, failed by their own training
    (a diverging model is an answer about its hyperparameters), and with `running` also the
    ones in progress. Trials failed because their worker crashed do not count: they are
    re-run, so a resumed study still ends with its requested number of results."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in FINISHED or (running and t.state == TrialState.RUNNING):
            n += 1
        elif t.state == TrialState.FAIL and CRASHED_ATTR not in t.user_attrs:
            n += 1
    return n


def worker_token() -> str:
    """`host:pid:start` identifying this process, to tell crashed trials from running ones."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _process_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return "?"


def token_alive(token: str) -> bool:
    """Whether the process a token names still runs (unknown hosts count as alive)."""
    host, _, rest = token.partition(":")
    pid_s, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_s.isdigit():
        return True
    pid = int(pid_s)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start == "?" or _process_start(pid) == start


def reserve_trial(study: optuna.Study, ctx: TrialContext) -> optuna.Trial | None:
    """A new RUNNING trial, or None when finished + running trials reach the budget (or the
    deadline passed). It carries this process's token until a worker takes it
    (:func:`take_trial`)."""
    import time

    if ctx.deadline is not None and time.time() >= ctx.deadline:
        return None
    with reservation_lock(ctx.config, ctx.storage):
        if finished_count(study, running=True) >= ctx.n_trials:
            return None
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker_token())
        return trial


def take_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """The reserved (RUNNING) trial `number`, to run in this process, stamped with this
    process's token: from now on its trial is failed if this process dies.

    Its parameters are sampled here, when the objective first asks for them, so a sampler sees
    every trial finished before this one started.
    """
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == number:
            # Optuna has no public accessor for a trial's storage id; its public Trial
            # constructor takes one, as Optuna's own ask() does.
            trial = optuna.trial.Trial(study, t._trial_id)
            trial.set_user_attr(WORKER_ATTR, worker_token())
            return trial
    raise RuntimeError(f"trial {number} of study {study.study_name!r} is not running")


# ----------------------------------------------------------------------------- one trial


def build_model(cfg: StudyConfig, family: str, params: dict[str, Any], threads: int) -> Recommender:
    """The model for `params`, seeded by the study seed (every trial starts from the same
    initialisation, so trials differ only by their hyperparameters)."""
    from mfstudy.tuning._space import constructor_params

    cls = model_class(family)
    accepted = constructor_params(cls)
    kwargs = dict(params)
    if "seed" in accepted:
        kwargs.setdefault("seed", cfg.seed)
    if "num_threads" in accepted:
        kwargs.setdefault("num_threads", threads)
    return cls(**kwargs)


class _Best:
    def __init__(self, maximize: bool) -> None:
        self.sign = 1.0 if maximize else -1.0
        self.value: float | None = None
        self.epoch: int | None = None

    def update(self, epoch: int, value: float) -> None:
        if math.isnan(value):
            return
        if self.value is None or self.sign * value > self.sign * self.value:
            self.value, self.epoch = value, epoch


def run_trial(
    trial: optuna.Trial, study: optuna.Study, prepared: Prepared, ctx: TrialContext
) -> TrialOutcome:
    """Train one trial's model, evaluating every `eval_every` epochs; tell the study the result.

    The objective value is the best epoch's metric, and `best_epoch` is stored because the
    final model is retrained for exactly that many epochs. Pruned trials end PRUNED, diverging
    or crashing ones FAIL (with the error as a user attribute); the study goes on either way.
    """
    cfg = ctx.config
    family, params = suggest(trial, cfg.search_space)
    shown = {"model": family, **params}
    # The run may be created only at the trial's first flush or its end (see
    # `tracking.flush_seconds`), so its id is stored once the trial ends; a trial whose worker
    # dies before that is found again by its tags.
    tlog = ctx.tracker(trial.number, shown) if ctx.tracker is not None else None
    best = _Best(cfg.direction == "maximize")
    every = cfg.study.eval_every
    model = build_model(cfg, family, params, ctx.threads)
    total = int(params.get("iterations", 0)) or None

    def on_epoch(epoch: int, m: Recommender) -> None:
        if epoch % every and epoch != total:
            return
        metrics = evaluate_model(m, prepared.train, prepared.test, prepared.users, cfg.evaluation)
        if tlog is not None:
            tlog.log_epoch(epoch, metrics)
        value = metrics[cfg.metric]
        if not math.isfinite(value):
            raise DivergedError(f"{cfg.metric} is {value} at epoch {epoch}")
        best.update(epoch, value)
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    if cfg.metric not in metric_keys(cfg, family):
        raise ValueError(f"study.metric {cfg.metric!r} is not logged for {family} models")
    state, error = "complete", None
    try:
        fit_capped(model, prepared.train, ctx.threads, callback=on_epoch)
        if best.value is None:
            raise DivergedError("no finite evaluation")
    except optuna.TrialPruned:
        state = "pruned"
    except Exception as exc:  # a failed trial must not stop the study
        state, error = "failed", f"{type(exc).__name__}: {exc}"
        log.warning("trial %d failed: %s", trial.number, error)
        log.debug("%s", traceback.format_exc())

    if best.epoch is not None:
        trial.set_user_attr(BEST_EPOCH_ATTR, best.epoch)
    if error is not None:
        trial.set_user_attr("error", error[:1000])
    if tlog is not None:
        tlog.end(state, best.epoch, best.value, error)
        if tlog.run_id is not None:
            trial.set_user_attr("mlflow_run_id", tlog.run_id)
    if state == "complete":
        study.tell(trial, best.value)
    elif state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
    return TrialOutcome(trial.number, state, best.value, best.epoch, shown, error)


def metric_keys(cfg: StudyConfig, family: str) -> set[str]:
    """The metric keys a trial of `family` logs every evaluated epoch."""
    from mfstudy.evaluation import EXPLICIT_FAMILIES
    from mfstudy.metrics import evaluation_keys

    keys = set(evaluation_keys(cfg.evaluation.k))
    if family in EXPLICIT_FAMILIES:
        keys |= {"train_rmse", "test_rmse"}
    return keys
