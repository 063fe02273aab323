"""A whole study on this machine: prepare, tune in parallel, retrain the best, register it.

This module wires the layers together: `mfstudy.tuning` (Optuna) runs the trials,
`mfstudy.tracking` (MLflow) records them. The Prefect flow calls the same steps as tasks.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfstudy.config import StudyConfig
from mfstudy.errors import StudyError
from mfstudy.models import DivergedError, Recommender, model_class
from mfstudy.prepare import Prepared, prepare, write_prepared
from mfstudy.tuning import (
    BestTrial,
    TrialContext,
    best_trial,
    build_model,
    check_space,
    constructor_params,
    counts,
    create_study,
    fail_stale_trials,
    limit_threads,
    optuna_figures,
    run_workers,
    threads_per_worker,
    trials_table,
)

__all__ = [
    "MlflowTrialLogs",
    "StudyResult",
    "holdout_fingerprint",
    "retrain",
    "run_study",
    "similar_items_table",
]

log = logging.getLogger("mfstudy.study")


@dataclass(frozen=True)
class MlflowTrialLogs:
    """Opens a trial's nested MLflow run; picklable, so worker processes can call it."""

    uri: str
    experiment_id: str
    parent_run_id: str
    spool_dir: Path

    def __call__(self, number: int, params: dict[str, Any]) -> Any:
        from mfstudy.tracking import TrialRun

        return TrialRun.start(
            self.uri,
            self.experiment_id,
            self.parent_run_id,
            number,
            params,
            spool_dir=self.spool_dir,
        )


@dataclass(frozen=True)
class StudyResult:
    best: BestTrial
    counts: dict[str, int]
    tracking_uri: str
    parent_run_id: str
    model_name: str | None
    model_version: str | None
    promoted: bool
    seconds: float


def holdout_fingerprint(prepared: Prepared) -> str:
    """Identifies the train/test split, so scores are only compared on the same holdout."""
    h = hashlib.sha256()
    for m in (prepared.train, prepared.test):
        h.update(np.asarray(m.shape, np.int64).tobytes())
        h.update(m.indptr.tobytes())
        h.update(m.indices.tobytes())
    h.update(prepared.users.tobytes())
    return h.hexdigest()[:16]


def retrain(best: BestTrial, prepared: Prepared, cfg: StudyConfig, threads: int) -> Recommender:
    """The best trial's model fitted on the full data (train + test) for its best epoch count.

    Raises StudyError if training diverges: a NaN model is never registered.
    """
    params = dict(best.params)
    if "iterations" in constructor_params(model_class(best.family)):
        params["iterations"] = best.best_epoch
    model = build_model(cfg, best.family, params, threads)
    handle = limit_threads(threads)
    try:
        model.fit(prepared.full)
    except DivergedError as exc:
        raise StudyError(
            f"retraining trial {best.number} on the full data diverged: {exc}"
        ) from None
    finally:
        del handle
    p, q = model.scoring_factors()
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise StudyError(f"retraining trial {best.number} produced non-finite factors")
    return model


def similar_items_table(model: Recommender, prepared: Prepared, k: int) -> pd.DataFrame:
    """Top-`k` cosine neighbours of every item, with ids and names (the blog's thumbnails)."""
    inter = prepared.interactions
    n_items = inter.n_items
    k = min(k, n_items - 1)
    items, scores = model.similar_items(np.arange(n_items), k)
    names = inter.item_names if inter.item_names is not None else inter.item_ids.astype(str)
    src = np.repeat(np.arange(n_items), k)
    dst = items.ravel()
    ok = dst >= 0
    return pd.DataFrame(
        {
            "item_id": inter.item_ids[src[ok]],
            "item_name": names[src[ok]],
            "rank": np.tile(np.arange(1, k + 1), n_items)[ok],
            "similar_item_id": inter.item_ids[dst[ok]],
            "similar_item_name": names[dst[ok]],
            "cosine": scores.ravel()[ok],
        }
    )


def progress_info(study: Any, cfg: StudyConfig) -> dict[str, Any]:
    """Trial counts by state, the budget and the best value so far (for progress displays)."""
    c = counts(study)
    try:
        best_value = study.best_value
    except ValueError:
        best_value = None
    return {**c, "total": cfg.study.n_trials, "best": best_value}


def register_best(
    cfg: StudyConfig,
    best: BestTrial,
    prepared: Prepared,
    run_id: str,
    uri: str,
    threads: int,
) -> tuple[str, str, bool]:
    """Retrain the best trial on the full data, log it with its item similarities, register it
    and move alias `champion` to it if it beats the current one on the same holdout.

    Returns (registered name, version, whether it became champion). If retraining fails,
    nothing is registered.
    """
    from mfstudy import tracking

    model = retrain(best, prepared, cfg, threads)
    name = cfg.study.register_as or cfg.name
    holdout = holdout_fingerprint(prepared)
    inter = prepared.interactions
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model.save(Path(tmp) / "model")
        sim_path = Path(tmp) / "similar_items.csv"
        similar_items_table(model, prepared, cfg.study.similar_items_k).to_csv(
            sim_path, index=False
        )
        tracking.log_file(uri, run_id, sim_path)
        logged = tracking.log_recommender(
            uri,
            run_id,
            model_dir,
            item_ids=inter.item_ids,
            item_names=inter.item_names,
            user_ids=inter.user_ids,
            registered_name=name,
            score=best.value,
            holdout=holdout,
        )
    version = str(logged.version)
    try:
        promoted = tracking.set_champion_if_better(
            uri, name, version, best.value, cfg.direction == "maximize", holdout=holdout
        )
    except tracking.HoldoutMismatchError as exc:
        # A champion scored on other data: only the retraining flow, which re-scores both on
        # one fresh holdout, may replace it.
        log.warning("champion unchanged: %s", exc)
        promoted = False
    return name, version, promoted


def run_study(
    cfg: StudyConfig,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> StudyResult:
    """Run the study `cfg` end to end on this machine; see the module docstring."""
    from mfstudy import tracking

    start = time.perf_counter()
    check_space(cfg.search_space, {f: constructor_params(model_class(f)) for f in cfg.search_space})
    root = cfg.workdir.resolve()
    uri = tracking.tracking_uri_for(cfg.tracking.uri, root)
    # Fail before any training if tracking is down: an hour of trials nobody can compare
    # is worse than an error now.
    tracking.check_reachable(uri)

    prepared = prepare(cfg)
    data_dir = write_prepared(prepared, root / cfg.name / "data")
    study, spec = create_study(cfg)
    parent = tracking.start_study(
        uri,
        cfg.tracking.experiment or cfg.name,
        cfg.name,
        cfg.model_dump(mode="json"),
        prepared.stats,
        data_dir / "stats.json",
    )
    spool = root / cfg.name / "mlflow-spool"
    for t in fail_stale_trials(study):
        log.warning("trial %d was left running by a crashed worker: marked failed", t.number)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            tracking.fail_run(uri, run_id, "worker crashed; marked failed on resume")
    tracking.replay_spool(uri, spool)

    workers = cfg.study.workers
    threads = threads_per_worker(cfg, workers)
    ctx = TrialContext(
        config=cfg,
        storage=spec,
        study_name=cfg.name,
        prepared_dir=data_dir,
        n_trials=cfg.study.n_trials,
        threads=threads,
        tracker=MlflowTrialLogs(uri, parent.experiment_id, parent.run_id, spool),
        deadline=time.time() + cfg.study.timeout if cfg.study.timeout else None,
    )

    def poll(s: Any) -> None:
        if on_progress is not None:
            on_progress(progress_info(s, cfg))

    try:
        run_workers(ctx, workers, on_poll=poll)
    except BaseException:
        tracking.finish_study(uri, parent.run_id, "interrupted")
        raise
    tracking.replay_spool(uri, spool)

    n = counts(study)
    try:
        best = best_trial(study, cfg)
        k = cfg.evaluation.k
        tracking.log_study_artifacts(
            uri,
            parent.run_id,
            trials=trials_table(study),
            figures=optuna_figures(study),
            best={
                "number": best.number,
                "value": best.value,
                "best_epoch": best.best_epoch,
                "family": best.family,
                "params": best.params,
                "metric": cfg.metric,
            },
            test_metric=f"test_precision_at_{k}",
            train_metric=f"train_precision_at_{k}",
        )
        name, version, promoted = register_best(cfg, best, prepared, parent.run_id, uri, threads)
    except BaseException:
        tracking.finish_study(uri, parent.run_id, "failed")
        raise
    tracking.finish_study(uri, parent.run_id, "complete")
    return StudyResult(
        best=best,
        counts=n,
        tracking_uri=uri,
        parent_run_id=parent.run_id,
        model_name=name,
        model_version=version,
        promoted=promoted,
        seconds=time.perf_counter() - start,
    )
