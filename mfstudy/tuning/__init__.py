"""Optuna studies over the model families: the only package that imports optuna.

Search spaces come from the config (`search_space`), storage is a journal file by default (safe
for parallel processes) or any RDB URL. One driver (:func:`drive_trials`) decides which trials
run, for `mfstudy study` (:func:`run_local`) and the Prefect flow alike; each runs as one unit
(:func:`one_trial`) in this process, a trial process or a Dask worker.

Exported: what callers outside this package use. Internals (the executors' classes, the
storage factory, reservation) are reached through their private modules by tests only.
"""

from mfstudy.tuning._checks import check_tuning
from mfstudy.tuning._driver import (
    LocalLanes,
    TrialsStopped,
    drive_trials,
    one_trial,
    run_local,
    run_one,
)
from mfstudy.tuning._executors import (
    TrialExecutor,
    WorkerDied,
    local_trials,
)
from mfstudy.tuning._factories import make_pruner, make_sampler, storage_spec
from mfstudy.tuning._figures import optuna_figures
from mfstudy.tuning._space import check_space, constructor_params, suggest
from mfstudy.tuning._study import (
    BestTrial,
    best_trial,
    check_sampler,
    counts,
    create_study,
    fail_stale_trials,
    find_study,
    quiet,
    threads_per_worker,
    trials_table,
)
from mfstudy.tuning._worker import (
    TrialContext,
    TrialLog,
    TrialOutcome,
    build_model,
    run_trial,
)

__all__ = [
    "BestTrial",
    "LocalLanes",
    "TrialContext",
    "TrialExecutor",
    "TrialLog",
    "TrialOutcome",
    "TrialsStopped",
    "WorkerDied",
    "best_trial",
    "build_model",
    "check_sampler",
    "check_space",
    "check_tuning",
    "constructor_params",
    "counts",
    "create_study",
    "drive_trials",
    "fail_stale_trials",
    "find_study",
    "local_trials",
    "make_pruner",
    "make_sampler",
    "one_trial",
    "optuna_figures",
    "quiet",
    "run_local",
    "run_one",
    "run_trial",
    "storage_spec",
    "suggest",
    "threads_per_worker",
    "trials_table",
]
