"""Study and retraining tasks: open the study, one trial per task run, and the final steps.

Trial and warm-up task runs are thin: on this machine they run in the flow's process (a thread
each) and hand the work to the study's trial workers (`mfstudy.tuning.local_trials`), so a task
run per trial costs milliseconds, not a process's start-up and context.

Retries go on the steps that talk to MLflow or storage and are safe to repeat (opening the
study finds its parent run again; logging artifacts overwrites them). Registering a model is
not retried: a retry after a lost reply would register a second version. The nightly
retraining retries only tracking failures before it registers, never its data gate.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed, Failed

from mfstudy.config import StudyConfig
from mfstudy.models import Recommender
from mfstudy.prepare import Prepared
from mfstudy.registration import log_similarities, refit_best, register_model
from mfstudy.retrain import RetrainResult, retrain_champion, retry_is_safe
from mfstudy.secrets import redact_uri
from mfstudy.study import (
    StudySession,
    end_study,
    open_study,
    summarize_study,
    warm_up,
)
from mfstudy.tuning import (
    BestTrial,
    TrialContext,
    TrialExecutor,
    TrialOutcome,
    TrialsStopped,
    WorkerDied,
    run_one,
)
from tasks._retry import unless_user_error

__all__ = [
    "TrialFailed",
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
def warm_up_task(cfg: StudyConfig, slot: int = 0, trials: TrialExecutor | None = None) -> float:
    """Wait for trial worker `slot` to pay its one-time costs (imports, numba's cache, a tiny
    fit), started while the data is still being prepared; the seconds it took.

    With `trials` (this machine's trial workers) the worker warms up on its own as it starts;
    without (a Dask cluster) the warm-up runs here, in the task's own process.
    """
    if trials is not None:
        try:
            return trials.warmed(slot)
        except WorkerDied as died:  # stopped: the flow run was cancelled or failed meanwhile
            return Cancelled(message=died.reason)  # type: ignore[return-value]
    return warm_up(cfg)


@task(
    name="open-study",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=unless_user_error,  # a tracking server away, not a refused resume
    **_PLAIN,
)
def open_study_task(cfg: StudyConfig, prepared: Prepared) -> StudySession:
    """Write the prepared data, create or resume the Optuna study and the MLflow parent run.

    The study's MLflow runs (parent and trials) are tagged with this flow run's id and its URL
    in the Prefect UI (`prefect.flow_run_id`, `prefect.flow_run_url`), so a run found in MLflow
    leads back to the flow run that made it."""
    from prefect.runtime import flow_run

    links = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_url": flow_run.ui_url}
    session = open_study(cfg, prepared, run_tags={k: v for k, v in links.items() if v})
    get_run_logger().info(
        "study %s: parent run %s at %s, data in %s",
        session.cfg.name,  # the study for this data (its name may carry the fingerprint)
        session.parent_run_id,
        redact_uri(session.uri),
        session.data_dir,
    )
    return session


class TrialFailed(Exception):
    """A trial that failed (diverged, crashed, its worker died): the data of its task run's
    Failed state, which must be an exception; `outcome` is the trial's :class:`TrialOutcome`."""

    def __init__(self, message: str, outcome: TrialOutcome) -> None:
        super().__init__(message, outcome)
        self.outcome = outcome

    def __str__(self) -> str:
        return str(self.args[0])


@task(name="trial", task_run_name="trial-{number}", **_PLAIN)
def run_trial_task(
    ctx: TrialContext, number: int, trials: TrialExecutor | None = None
) -> TrialOutcome:
    """Run the reserved Optuna trial `number`; the task run is named after it.

    With `trials` the trial runs on one of this machine's trial workers (the task run itself
    only waits for it, so it costs the flow's process next to nothing); without, here (a Dask
    worker). The task run's state tells the trial's: Completed for a complete trial, Completed
    named "Pruned" for a pruned one, Failed with the trial's one-line error for a failed one
    (its worker process dying included: the trial is marked failed in Optuna and MLflow and
    the budget re-runs it). If the workers were stopped (a cancelled flow run), the task run
    ends Cancelled, its trial marked failed, without a traceback. Each state carries the
    :class:`TrialOutcome`.
    """
    logger = get_run_logger()
    try:
        outcome = run_one(ctx, number, trials, logger)
    except TrialsStopped as stopped:  # the flow run is being cancelled (or failed)
        return Cancelled(message=str(stopped))  # type: ignore[return-value]
    value = "-" if outcome.value is None else f"{outcome.value:.5f}"
    line = (
        f"trial {outcome.number} {outcome.state}: {ctx.config.metric}={value} at epoch "
        f"{outcome.best_epoch}, {outcome.params}"
    )
    if outcome.state == "failed":
        logger.error("%s", line)
        message = f"trial {number} failed: {outcome.error}"
        return Failed(message=message, data=TrialFailed(message, outcome))  # type: ignore[return-value]
    logger.info("%s", line)
    if outcome.state == "pruned":
        return Completed(name="Pruned", message=line, data=outcome)  # type: ignore[return-value]
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
    model = refit_best(best, session.prepared, session.cfg, session.threads)
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


def _transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the retraining only after a tracking failure before anything was registered
    (`mfstudy.retrain.retry_is_safe`): the data gate's verdict on the same data would not
    change, and a retry after registering could register a second version."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and retry_is_safe(exc)


@task(
    name="retrain-champion",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_transient_failure,
    **_PLAIN,
)
def retrain_champion_task(cfg: StudyConfig, prepared: Prepared) -> RetrainResult | None:
    """Check today's data against the champion's, refit the champion's recipe on it, gate it,
    register it (None: no champion; decision "unchanged": nothing registered). A failed data
    gate raises `RetrainGateError` (one line) and is not retried."""
    result = retrain_champion(cfg, prepared)
    if result is None:
        name = cfg.study.register_as or cfg.name
        get_run_logger().info("no champion registered for %s yet", name)
    return result
