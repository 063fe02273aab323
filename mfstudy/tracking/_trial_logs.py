"""The trial logger a study hands its workers: opens each trial's nested run (:class:`TrialRun`).

It travels pickled in the trial context to worker processes, so it holds plain ids and paths
and imports MLflow only when a trial's run is opened.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfstudy.tracking._errors import TrackingError
from mfstudy.tracking._tags import check_tags

__all__ = ["MlflowTrialLogs"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MlflowTrialLogs:
    """Opens a trial's nested MLflow run; picklable, so worker processes can call it.

    The run is created at the trial's first flush (after `flush_seconds`) or at its end,
    whichever comes first (see `tracking.flush_seconds`). `metric` is the study's objective
    metric (`study.metric`): a trial's best value is logged as `best_<metric>`. `tags` are set
    on every trial run it opens (checked here: ValueError for one mfstudy sets itself)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    spool_dir: Path
    flush_seconds: float
    metric: str | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_tags(self.tags)

    def __call__(self, number: int, params: dict[str, Any]) -> Any:
        from mfstudy.tracking._trial import TrialRun

        return TrialRun.start(
            self.uri,
            self.experiment_id,
            self.parent_run_id,
            number,
            params,
            spool_dir=self.spool_dir,
            flush_every=None,
            flush_seconds=self.flush_seconds,
            create_now=False,
            metric=self.metric,
            tags=dict(self.tags),
        )

    def fail_crashed(self, number: int, run_id: str | None, reason: str) -> None:
        """End FAILED (tag `mfstudy.error`: `reason`) the run of trial `number`, whose worker
        process died mid-study; as `open_study` does for a crashed worker's trials."""
        from mfstudy.tracking._study import fail_trial_run

        try:
            fail_trial_run(self.uri, self.experiment_id, self.parent_run_id, number, run_id, reason)
        except TrackingError as exc:  # the study goes on; Optuna has it failed
            _log.warning("trial %d: %s", number, exc)
