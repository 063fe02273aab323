"""What the Prefect UI shows of a study's trials, on a real server: one task run per Optuna
trial, named by its number (none that only finds the budget used up); its state names the
trial's (Completed, Completed named Pruned, Failed with the trial's one line); the progress
artifact says trials done of the budget, the best so far, pruned and failed; and the links run
both ways: MLflow runs carry the flow run's id and URL, the study artifact links to the MLflow
parent run and the best trial's run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from helpers import journal_study, tiny_data

NAME = "it-states"


def test_trial_task_runs_are_named_and_end_as_their_trials(
    tmp_path: Path, prefect_server: Any, tracking_uri: str
) -> None:
    from flows.study import study_flow

    overrides = [
        f"name={NAME}",
        f"workdir={tmp_path / 'runs'}",
        f"tracking.uri={tracking_uri}",
        *tiny_data(400, 200, 12_000, threads_per_worker=1),
        "data.values=count",
        # Good, slow and diverging learning rates: some complete, some pruned, one fails.
        "search_space={sgd: {learning_rate: {type: categorical, "
        "choices: [0.02, 0.03, 0.00001, 0.00002, 1.0e+6]}, factors: 4, iterations: 6}}",
        "study.sampler.kind=grid",
        "study.pruner={kind: median, n_startup_trials: 1, n_warmup_steps: 0}",
    ]
    state = study_flow(n_trials=5, workers=1, overrides=overrides, return_state=True)
    assert state.is_completed(), state

    trials = {
        t.number: t
        for t in journal_study(tmp_path / "runs" / NAME / "optuna.journal", NAME).get_trials()
    }
    states = {t.state for t in trials.values()}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}, states

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            limit=200,
        )
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"trials-{NAME}"]))
        )
    by_name = {t.name: t for t in tasks if t.name.startswith("trial-")}
    # One task run per trial, named by its number: no task run that ran nothing.
    assert sorted(by_name) == sorted(f"trial-{n}" for n in trials)
    for number, trial in trials.items():
        task_state = by_name[f"trial-{number}"].state
        if trial.state == TrialState.COMPLETE:
            assert task_state.is_completed() and task_state.name == "Completed", task_state
        elif trial.state == TrialState.PRUNED:
            assert task_state.is_completed() and task_state.name == "Pruned", task_state
        else:
            assert task_state.is_failed(), task_state
            assert task_state.message.startswith(f"trial {number} failed: DivergedError")
            assert "Traceback" not in task_state.message

    # The progress artifact's last word: every trial done, with the best, pruned and failed.
    assert progress, "no progress artifact"
    done = sum(t.state != TrialState.RUNNING for t in trials.values())
    best = max(t.value for t in trials.values() if t.state == TrialState.COMPLETE)
    n_pruned = sum(t.state == TrialState.PRUNED for t in trials.values())
    assert progress[0].data == pytest.approx(100.0)
    assert progress[0].description == (
        f"{NAME}: trials {done}/5 done, best test_precision_at_5 {best:.5f}, "
        f"pruned {n_pruned}, failed 1"
    )

    # Links: every MLflow run of the study names this flow run; the study artifact links to
    # the parent run and the best trial's run on the tracking server.
    flow_run_id = str(state.state_details.flow_run_id)
    ml = MlflowClient(tracking_uri)
    exp = ml.get_experiment_by_name(NAME)
    runs = ml.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 1 + len(trials)
    for run in runs:
        assert run.data.tags["prefect.flow_run_id"] == flow_run_id, run.info.run_name
        assert run.data.tags["prefect.flow_run_url"].endswith(f"/flow-runs/flow-run/{flow_run_id}")
    parent = next(r for r in runs if r.data.tags.get("mfstudy.role") == "study")
    best_number = max(
        (t for t in trials.values() if t.state == TrialState.COMPLETE), key=lambda t: t.value
    ).number
    best_run = trials[best_number].user_attrs["mlflow_run_id"]
    with get_client(sync_client=True) as client:
        (study_md,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"study-{NAME}"]))
        )
    base = f"{tracking_uri}/#/experiments/{exp.experiment_id}/runs"
    assert f"]({base}/{parent.info.run_id})" in str(study_md.data)
    assert f"[trial-{best_number:04d}]({base}/{best_run})" in str(study_md.data)
