"""Study and retraining tasks: open the study, one trial per task run, and the final steps.

Retries go on the steps that talk to MLflow or storage and are safe to repeat (opening the
study finds its parent run again; logging artifacts overwrites them). Registering a model is
not retried: a retry after a lost reply would register a second version.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mfstudy.config import StudyConfig
from mfstudy.models import Recommender
from mfstudy.prepare import Prepared
from mfstudy.retrain import RetrainResult, retrain_champion
from mfstudy.study import (
    StudySession,
    end_study,
    log_similarities,
    one_trial,
    open_study,
    register_model,
    retrain,
    summarize_study,
)
from mfstudy.tuning import BestTrial, TrialContext, TrialOutcome

__all__ = [
    "end_study_task",
    "open_study_task",
    "register_task",
    "retrain_best_task",
    "retrain_champion_task",
    "run_trial_task",
    "similarities_task",
    "summarize_task",
    "warm_up_task",
]

# Inputs are configs, sessions and matrices: hashing them for Prefect's default cache policy
# would cost time on every call for nothing, so only the data tasks cache.
_PLAIN: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="warm-up", task_run_name="warm-up-{slot}", **_PLAIN)
def warm_up_task(cfg: StudyConfig, slot: int = 0) -> float:
    """Pay a trial process's one-time costs while the data is still being prepared.

    A fresh worker process spends seconds importing Optuna, MLflow and `implicit` and loading
    the numba kernels from their cache; run first, this overlaps that with ingest, threshold
    and split instead of adding it to the first trial. Fits each searched family for one
    epoch on a tiny generated matrix (nothing is written or logged). Returns the seconds spent.
    """
    import time

    import numpy as np
    import scipy.sparse as sp

    from mfstudy import tracking
    from mfstudy.evaluation import evaluate_model
    from mfstudy.models import model_class
    from mfstudy.tuning import build_model, constructor_params

    start = time.perf_counter()
    tracking.TrialRun  # noqa: B018  (imports MLflow, as a trial's logging does)
    rng = np.random.default_rng(cfg.seed)
    dense = (rng.random((12, 10)) < 0.5).astype(np.float32) * rng.integers(1, 5, (12, 10))
    train = sp.csr_matrix(dense)
    users = np.arange(12, dtype=np.int64)
    for family in cfg.search_space:
        accepted = constructor_params(model_class(family))
        tiny = {k: v for k, v in {"factors": 2, "iterations": 1}.items() if k in accepted}
        model = build_model(cfg, family, tiny, threads=1)
        model.fit(train)
        evaluate_model(model, train, train, users, cfg.evaluation)
    return time.perf_counter() - start


@task(name="open-study", retries=2, retry_delay_seconds=5, **_PLAIN)
def open_study_task(cfg: StudyConfig, prepared: Prepared) -> StudySession:
    """Write the prepared data, create or resume the Optuna study and the MLflow parent run."""
    session = open_study(cfg, prepared)
    get_run_logger().info(
        "study %s: parent run %s at %s, data in %s",
        cfg.name,
        session.parent_run_id,
        session.uri,
        session.data_dir,
    )
    return session


@task(name="trial", task_run_name="trial-{slot}", **_PLAIN)
def run_trial_task(ctx: TrialContext, slot: int = 0) -> TrialOutcome | None:
    """Reserve one trial and run it; None when the budget is used up (nothing was run).

    `slot` only names the task run; the trial number is known once the trial is reserved.
    """
    outcome = one_trial(ctx)
    logger = get_run_logger()
    if outcome is None:
        logger.info("budget of %d trials reached: nothing to run", ctx.n_trials)
    else:
        value = "-" if outcome.value is None else f"{outcome.value:.5f}"
        logger.info(
            "trial %d %s: %s=%s at epoch %s, %s",
            outcome.number,
            outcome.state,
            ctx.config.metric,
            value,
            outcome.best_epoch,
            outcome.params,
        )
    return outcome


@task(name="summarize", retries=2, retry_delay_seconds=5, **_PLAIN)
def summarize_task(session: StudySession) -> tuple[BestTrial, dict[str, int], list[dict]]:
    """Best trial, trial counts and the trials table; logs the study's artifacts to MLflow."""
    best, counts, table = summarize_study(session)
    get_run_logger().info(
        "best trial %d (%s): %s=%.5f at epoch %d; %s",
        best.number,
        best.family,
        session.cfg.metric,
        best.value,
        best.best_epoch,
        counts,
    )
    return best, counts, table


@task(name="retrain", **_PLAIN)
def retrain_best_task(session: StudySession, best: BestTrial) -> Recommender:
    """The best trial's model fitted on the full data for its best epoch count."""
    model = retrain(best, session.prepared, session.cfg, session.threads)
    get_run_logger().info("retrained trial %d on the full data", best.number)
    return model


@task(name="similarities", retries=2, retry_delay_seconds=5, **_PLAIN)
def similarities_task(session: StudySession, model: Recommender) -> None:
    """Log the item-to-item similarity table on the parent run."""
    log_similarities(session.cfg, model, session.prepared, session.parent_run_id, session.uri)


@task(name="register", **_PLAIN)
def register_task(
    session: StudySession, best: BestTrial, model: Recommender
) -> tuple[str, str, bool]:
    """Register the model; alias `champion` moves if it beats the champion on this holdout."""
    name, version, promoted = register_model(
        session.cfg, best, model, session.prepared, session.parent_run_id, session.uri
    )
    verdict = "now champion" if promoted else "champion unchanged"
    get_run_logger().info("registered %s v%s: %s", name, version, verdict)
    return name, version, promoted


@task(name="end-study", retries=2, retry_delay_seconds=5, **_PLAIN)
def end_study_task(session: StudySession, state: str) -> None:
    """End the MLflow parent run (complete, failed or interrupted)."""
    end_study(session, state)


@task(name="retrain-champion", **_PLAIN)
def retrain_champion_task(cfg: StudyConfig, prepared: Prepared) -> RetrainResult | None:
    """Refit the champion's recipe on fresh data, gate it, register it (None: no champion)."""
    result = retrain_champion(cfg, prepared)
    logger = get_run_logger()
    if result is None:
        logger.info("no champion registered for %s yet", cfg.study.register_as or cfg.name)
    else:
        logger.info(
            "%s: new v%s %s=%.6g vs champion v%s re-scored %.6g -> %s",
            result.model_name,
            result.new_version,
            result.metric,
            result.candidate_score,
            result.champion_version,
            result.champion_score,
            result.decision,
        )
    return result
