"""The nightly retraining flow: re-ingest, refit the champion's recipe, gate, register.

What is compared and why the champion is re-fitted rather than scored as is: see
`mfstudy/retrain.py`. The data tasks are the study's cached ones, keyed by the input files'
checksum, so grown data is re-prepared and unchanged data is not. The nightly logic itself is
`mfstudy.nightly.nightly`, the same as `mfstudy retrain CONFIG`; here the retraining is a task
run and the fallback study (no champion yet, `retrain.fallback_trials` trials) a subflow.
The data gate, the unchanged check and the intervals are in `mfstudy.retrain`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from flows.study import RunnerKind, artifact_key, prepare_data, study_flow
from mfstudy.config import StudyConfig, load_config
from mfstudy.errors import RetrainGateError
from mfstudy.nightly import nightly
from mfstudy.prepare import Prepared
from mfstudy.study import StudyResult
from tasks import retrain_champion_task

__all__ = ["retrain_flow"]


@flow(name="mf-retrain", validate_parameters=True)
def retrain_flow(
    config: str | None = None,
    overrides: list[str] | None = None,
    task_runner: RunnerKind = "process",
    dask_address: str | None = None,
) -> dict[str, Any] | State[Any]:
    """Retrain the champion of the study `config` on today's data; move the alias if the new
    version is not worse than the champion's re-score by more than `retrain.tolerance`.

    Unchanged data ends Completed with decision "unchanged" (nothing registered); a failed
    data gate (`retrain.max_shrink`, schema) ends Failed with its one line (nothing
    registered, champion kept).

    `task_runner`/`dask_address` are used only by the fallback study (no champion yet).
    """
    logger = get_run_logger()
    cfg = load_config(config, overrides or [])
    prepared = prepare_data(cfg)
    key = artifact_key("retrain", cfg.name)

    def study(fallback: StudyConfig, _prepared: Prepared) -> StudyResult:
        # A subflow, so the fallback study shows as the study flow it is; its data tasks hit
        # the cache this flow's filled.
        return study_flow(
            config=config,
            n_trials=fallback.study.n_trials,
            overrides=overrides,
            task_runner=task_runner,
            dask_address=dask_address,
        )

    try:
        result = nightly(cfg, prepared, retrain=retrain_champion_task, study=study)
    except RetrainGateError as exc:
        # The champion is kept and nothing registered: the run fails with the gate's one line
        # as its message (not Prefect's "encountered an exception" wrapper), the artifact
        # says what changed.
        create_markdown_artifact(
            exc.report, key=key, description=f"{cfg.name}: nightly retraining (gate failed)"
        )
        logger.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    logger.info("%s", result.summary())
    create_markdown_artifact(
        result.markdown(), key=key, description=f"{cfg.name}: nightly retraining decision"
    )
    return result.to_dict()


if __name__ == "__main__":  # pragma: no cover - `python flows/retrain.py [config]`
    import sys

    retrain_flow(config=sys.argv[1] if len(sys.argv) > 1 else None)
