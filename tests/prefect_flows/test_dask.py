"""Trials on a Dask cluster: a LocalCluster of 2 worker processes on 127.0.0.1 runs the study
flow's trial tasks; all trials land in the one Optuna study and in MLflow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from helpers import journal_study, tiny_data

N_TRIALS = 4


def test_dask_cluster_runs_the_trials_of_one_study(
    tmp_path: Path, tracking_uri: str, prefect_server: Any
) -> None:
    from distributed import Client, LocalCluster

    from flows.study import study_flow

    overrides = [
        "name=it-dask",
        *tiny_data(400, 200, 12_000, pruner="none"),
        f"workdir={tmp_path / 'runs'}",
        f"tracking.uri={tracking_uri}",
        "search_space={wrmf: {factors: {type: int, low: 2, high: 24, log: true}, iterations: 5}}",
    ]
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        worker_pids = set(client.run(os.getpid).values())
        result = study_flow(
            n_trials=N_TRIALS,
            workers=2,
            overrides=overrides,
            task_runner="dask",
            dask_address=cluster.scheduler_address,
        )
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids

    study = journal_study(tmp_path / "runs" / "it-dask" / "optuna.journal", "it-dask")
    trials = study.get_trials()
    assert len(trials) == N_TRIALS and all(t.state.name == "COMPLETE" for t in trials)
    # Every trial ran in a Dask worker process (its reservation token names the process).
    pids = {int(t.user_attrs["mfstudy.worker"].split(":")[1]) for t in trials}
    assert pids <= worker_pids
    # Distinct startup proposals: each task's sampler is seeded by its own index.
    assert (
        len(
            {
                t.params["wrmf.factors"] if "wrmf.factors" in t.params else t.params.get("factors")
                for t in trials
            }
        )
        > 1
    )

    ml = MlflowClient(tracking_uri)
    exp = ml.get_experiment_by_name("it-dask")
    runs = ml.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("mfstudy.role") == "study")
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == N_TRIALS
    assert {int(r.data.tags["mfstudy.trial_number"]) for r in nested} == {t.number for t in trials}
    assert result.model_version == "1" and result.promoted
