"""MLflow tracking of studies: the only package of mfstudy that imports mlflow.

Layout of what a study records:

- one experiment per study (tag `mlflow.experimentKind=custom_model_development`), holding one
  parent run (tag `mfstudy.study`), found again on resume (:func:`start_study`,
  :func:`finish_study`);
- one nested run per trial (`trial-0007`, tag `mlflow.parentRunId`) with per-epoch metrics at
  step = epoch and, at its end, the value the study chose for it (`best_<metric>`,
  `best_epoch`), ended FINISHED / KILLED (pruned) / FAILED (:class:`TrialRun`, opened in the
  workers by :class:`MlflowTrialLogs`); data the server could not take is spooled locally and
  sent later (:func:`replay_spool`);
- on the parent run: the config (params, once), data metrics `data.*` and `stats.json`
  (:func:`start_study`); trials table, the study's best (`best_<metric>`, `best_epoch`,
  `best_trial`), figures (:func:`log_study_artifacts`);
- a caller's extra tags (links to its own runs) on all of them (`start_study(tags=...)`,
  `MlflowTrialLogs(tags=...)`), and a run's browser address (:func:`run_url`);
- the retrained model as a pyfunc model, registered with alias `champion` when it beats the
  current one (:func:`log_recommender`, :func:`set_champion_if_better`,
  :func:`load_recommender`); the nightly retraining reads the champion and moves the alias by
  its own decision (:func:`champion_version`, :func:`move_champion`). Callers hold
  `mfstudy.workdir.champion_lock` around every read-compare-move.

Every function takes the tracking URI as a string and builds its own client: nothing is set
globally, and everything handed to worker processes is plain ids and strings. Importing this
package is cheap; MLflow is imported on first use of a name that needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mfstudy.tracking._errors import HoldoutMismatchError, TrackingError, UnknownIdError
from mfstudy.tracking._uri import redact_uri, run_url, tracking_uri_for

if TYPE_CHECKING:
    from mfstudy.tracking._artifacts import log_study_artifacts
    from mfstudy.tracking._model import (
        load_recommender,
        log_recommender,
        set_champion_if_better,
    )
    from mfstudy.tracking._recommender import LoadedRecommender
    from mfstudy.tracking._retrain import champion_version, move_champion
    from mfstudy.tracking._study import (
        fail_trial_run,
        find_study_run,
        finish_study,
        log_file,
        start_study,
    )
    from mfstudy.tracking._transport import check_reachable
    from mfstudy.tracking._trial import TrialRun, replay_spool
    from mfstudy.tracking._trial_logs import MlflowTrialLogs

__all__ = [
    "HoldoutMismatchError",
    "LoadedRecommender",
    "MlflowTrialLogs",
    "TrackingError",
    "TrialRun",
    "UnknownIdError",
    "champion_version",
    "check_reachable",
    "fail_trial_run",
    "find_study_run",
    "finish_study",
    "load_recommender",
    "log_file",
    "log_recommender",
    "log_study_artifacts",
    "move_champion",
    "redact_uri",
    "replay_spool",
    "run_url",
    "set_champion_if_better",
    "start_study",
    "tracking_uri_for",
]

_LAZY = {
    "log_study_artifacts": "_artifacts",
    "load_recommender": "_model",
    "log_recommender": "_model",
    "set_champion_if_better": "_model",
    "LoadedRecommender": "_recommender",
    "champion_version": "_retrain",
    "move_champion": "_retrain",
    "finish_study": "_study",
    "fail_trial_run": "_study",
    "find_study_run": "_study",
    "log_file": "_study",
    "start_study": "_study",
    "check_reachable": "_transport",
    "TrialRun": "_trial",
    "replay_spool": "_trial",
    "MlflowTrialLogs": "_trial_logs",
}


def __getattr__(name: str) -> Any:
    # PEP 562: `import mfstudy.tracking` must not cost MLflow's import time (seconds) for a CLI
    # command that never tracks anything.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
