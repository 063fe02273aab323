"""Prefect tasks: thin wrappers over `mfstudy`, one per stage of a study.

Prefect is imported here and in `flows/` only; the library itself never depends on it. Each
task is one call into `mfstudy` plus what only an orchestrator adds: retries on the steps
that do I/O, caching of the data preparation (keyed by the input files' checksum and the
config), and logging to Prefect's run logger.
"""

from tasks.data import data_cache_key, ingest_task, split_task, threshold_task
from tasks.study import (
    end_study_task,
    open_study_task,
    register_task,
    retrain_best_task,
    retrain_champion_task,
    run_trial_task,
    similarities_task,
    summarize_task,
    warm_up_task,
)

__all__ = [
    "data_cache_key",
    "end_study_task",
    "ingest_task",
    "open_study_task",
    "register_task",
    "retrain_best_task",
    "retrain_champion_task",
    "run_trial_task",
    "similarities_task",
    "split_task",
    "summarize_task",
    "threshold_task",
    "warm_up_task",
]
