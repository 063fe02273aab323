"""Optuna studies over the model families: the only package that imports optuna.

Search spaces come from the config (`search_space`), storage is a journal file by default (safe
for parallel processes) or any RDB URL, and trials run in worker processes that each own one
trial at a time.
"""

from mfstudy.tuning._checks import check_tuning
from mfstudy.tuning._driver import (
    LocalLanes,
    TrialLanes,
    TrialsStopped,
    drive_trials,
    one_trial,
    run_local,
    run_one,
)
from mfstudy.tuning._executors import (
    InProcessTrials,
    LogLine,
    TrialExecutor,
    TrialProcesses,
    WorkerDied,
    local_trials,
)
from mfstudy.tuning._factories import make_pruner, make_sampler, make_storage, storage_spec
from mfstudy.tuning._figures import optuna_figures
from mfstudy.tuning._space import check_space, constructor_params, grid_size, grid_space, suggest
from mfstudy.tuning._study import (
    BestTrial,
    best_trial,
    check_sampler,
    counts,
    create_study,
    fail_stale_trials,
    fail_worker_trial,
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
    load_study,
    reserve_trial,
    run_trial,
)

__all__ = [
    "BestTrial",
    "InProcessTrials",
    "LocalLanes",
    "LogLine",
    "TrialContext",
    "TrialExecutor",
    "TrialLanes",
    "TrialLog",
    "TrialOutcome",
    "TrialProcesses",
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
    "fail_worker_trial",
    "find_study",
    "grid_size",
    "grid_space",
    "load_study",
    "local_trials",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "one_trial",
    "optuna_figures",
    "quiet",
    "reserve_trial",
    "run_local",
    "run_one",
    "run_trial",
    "storage_spec",
    "suggest",
    "threads_per_worker",
    "trials_table",
]
