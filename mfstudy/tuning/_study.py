"""Creating or resuming a study, failing the trials of dead workers, and reading results back."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mfstudy.config import StudyConfig
from mfstudy.errors import ConfigError, StudyError
from mfstudy.tuning._factories import make_pruner, make_sampler, make_storage, storage_spec
from mfstudy.tuning._space import MODEL_PARAM, grid_size, grid_space
from mfstudy.tuning._worker import (
    BEST_EPOCH_ATTR,
    CRASHED_ATTR,
    WORKER_ATTR,
    FailsCrashedTrials,
    TrialContext,
    finished_count,
    token_alive,
)
from mfstudy.workdir import reservation_lock

log = logging.getLogger("mfstudy.tuning")

__all__ = [
    "BestTrial",
    "best_trial",
    "check_sampler",
    "counts",
    "create_study",
    "fail_stale_trials",
    "fail_worker_trial",
    "find_study",
    "threads_per_worker",
    "trials_table",
]


def check_sampler(cfg: StudyConfig) -> None:
    """Config errors the sampler would raise, checked before any data is prepared: a grid
    needs every parameter's choices, and at most as many trials as it has points."""
    if cfg.study.sampler.kind == "grid":
        grid_space(cfg.search_space)  # every parameter must list its choices
        size = grid_size(cfg.search_space)
        if cfg.study.n_trials > size:
            raise ConfigError(
                f"study.n_trials: {cfg.study.n_trials} exceeds the grid's {size} points"
            )


def create_study(cfg: StudyConfig) -> tuple[optuna.Study, str]:
    """Create the study or load it to resume; returns it with its storage spec."""
    spec = storage_spec(cfg)
    check_sampler(cfg)
    study = optuna.create_study(
        study_name=cfg.name,
        storage=make_storage(spec),
        sampler=make_sampler(cfg.study.sampler, cfg),
        pruner=make_pruner(cfg.study.pruner),
        direction=cfg.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != cfg.direction:
        raise ConfigError(
            f"study {cfg.name!r} exists in {spec} with direction "
            f"{study.direction.name.lower()}, the config asks {cfg.direction}"
        )
    return study, spec


def find_study(cfg: StudyConfig) -> optuna.Study | None:
    """The study `cfg.name` in its storage to read (attributes, trials), or None when there is
    none yet; unlike :func:`create_study`, creates nothing."""
    try:
        return optuna.load_study(
            study_name=cfg.name,
            storage=make_storage(storage_spec(cfg)),
            sampler=optuna.samplers.RandomSampler(),  # never samples; TPE's set-up is wasted
        )
    except KeyError:  # Optuna's "record does not exist"
        return None


def fail_stale_trials(study: optuna.Study, cfg: StudyConfig | None = None) -> list[FrozenTrial]:
    """Mark FAIL the RUNNING trials whose worker process is gone (a crash, `kill -9`).

    Returns them, so their tracking runs can be closed too. Trials of live workers (another
    process working on the same study) are left alone. With `cfg`, this runs under the
    study's reservation lock: a trial is asked for and stamped with its worker's token under
    that lock, so a worker of another process caught in between is not taken for a crashed
    one (its trial has no token yet).
    """
    if cfg is None:
        return _fail_stale_trials(study)
    with reservation_lock(cfg, storage_spec(cfg)):
        return _fail_stale_trials(study)


def _fail_stale_trials(
    study: optuna.Study, reason: str | None = None, number: int | None = None
) -> list[FrozenTrial]:
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        token = t.user_attrs.get(WORKER_ATTR)
        # Trial `number` was handed to a process that died: it may have died before stamping
        # its own token on it, so it is failed whoever holds it.
        if t.number == number or token is None or not token_alive(token):
            # Marked before the FAIL (a finished trial is read-only) so the budget re-runs it.
            study._storage.set_trial_user_attr(t._trial_id, CRASHED_ATTR, True)
            if reason is not None:
                study._storage.set_trial_user_attr(t._trial_id, "error", reason)
            study.tell(t.number, state=TrialState.FAIL)
            stale.append(t)
    return stale


def quiet() -> None:
    """Optuna logs warnings and errors only (its per-trial INFO lines fight progress bars)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def threads_per_worker(cfg: StudyConfig, workers: int) -> int:
    if cfg.study.threads_per_worker:
        return cfg.study.threads_per_worker
    return max(1, (os.cpu_count() or 1) // workers)


def fail_worker_trial(ctx: TrialContext, number: int, reason: str) -> FrozenTrial | None:
    """After the worker process running trial `number` ended mid-call (it died, or was
    stopped): mark that trial FAIL, and any other left RUNNING by dead workers; end their
    tracking runs FAILED with `reason` (when `ctx.tracker` can). Returns trial `number` if it
    was marked here or before (another caller may have been first: two workers lost at once).

    The same marking as on resume (:func:`fail_stale_trials`), only at once: the trial is
    re-run by the budget while the study goes on. The worker must be reaped first (a zombie's
    pid still answers).
    """
    study = _poll_study(ctx)
    with reservation_lock(ctx.config, ctx.storage):
        failed = _fail_stale_trials(study, reason, number)
    if isinstance(ctx.tracker, FailsCrashedTrials):
        for t in failed:
            ctx.tracker.fail_crashed(t.number, t.user_attrs.get("mlflow_run_id"), reason)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number == number and CRASHED_ATTR in t.user_attrs:
            return t
    return None


def _poll_study(ctx: TrialContext) -> optuna.Study:
    return optuna.load_study(study_name=ctx.study_name, storage=make_storage(ctx.storage))


@dataclass(frozen=True)
class BestTrial:
    number: int
    family: str
    params: dict[str, Any]
    value: float
    best_epoch: int


def best_trial(study: optuna.Study, cfg: StudyConfig) -> BestTrial:
    """The best COMPLETE trial with the constructor parameters to retrain it."""
    from mfstudy.tuning._space import param_name

    try:
        t = study.best_trial
    except ValueError:
        raise StudyError(
            f"study {study.study_name!r} has no complete trial to retrain "
            "(all failed or were pruned)"
        ) from None
    families = list(cfg.search_space)
    family = t.params.get(MODEL_PARAM, families[0])
    params: dict[str, Any] = {}
    for name, spec in cfg.search_space[family].items():
        key = param_name(family, name, cfg.search_space)
        params[name] = t.params[key] if key in t.params else spec
    return BestTrial(t.number, family, params, float(t.value), int(t.user_attrs[BEST_EPOCH_ATTR]))


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, best epoch, duration and parameters.

    `value` is the objective's metric at the trial's best epoch, `intermediate_values[
    best_epoch]`, for every trial with a best epoch: for a complete trial that is its Optuna
    value; for a pruned one it is not (Optuna gives a pruned trial its *last* reported value),
    and for a failed one it is the best it reached before failing. The trial runs' MLflow
    metric `best_<metric>` holds the same number. A trial without a best epoch (running, or
    failed before its first evaluation) shows Optuna's value, None.
    """
    rows = []
    for t in study.get_trials(deepcopy=False):
        best_epoch = t.user_attrs.get(BEST_EPOCH_ATTR)
        value = t.value
        if best_epoch is not None and best_epoch in t.intermediate_values:
            value = t.intermediate_values[best_epoch]
        dur = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": value,
                "best_epoch": best_epoch,
                "epochs_reported": len(t.intermediate_values),
                "duration_s": dur,
                "error": t.user_attrs.get("error"),
                **{f"param.{k}": v for k, v in t.params.items()},
            }
        )
    return rows


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    out["finished"] = finished_count(study)
    return out
