"""`mfstudy study` (no server) and the `mf-study` flow (a real Prefect server) are the same
study: on a small grid every point is tried by both, so they must agree on every trial's value,
per-epoch curve, the best trial, the retrained model's score and the registration."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from helpers import EXE, journal_study, tiny_data

GRID = (
    "search_space={wrmf: {factors: {type: categorical, choices: [4, 12]}, "
    "regularization: {type: categorical, choices: [0.01, 1.0]}, iterations: 6}}"
)


def _overrides(workdir: Path, uri: str | None) -> list[str]:
    tracking = [] if uri is None else [f"tracking.uri={uri}"]
    return [
        *tracking,
        "name=it-same",
        *tiny_data(400, 200, 12_000),
        f"workdir={workdir}",
        "study.sampler.kind=grid",
        "study.pruner.kind=none",
        "study.threads_per_worker=1",
        GRID,
    ]


def _trials(workdir: Path) -> dict[tuple[Any, ...], tuple[float, dict[int, float]]]:
    study = journal_study(workdir / "it-same" / "optuna.journal", "it-same")
    trials = study.get_trials()
    assert all(t.state.name == "COMPLETE" for t in trials)
    return {tuple(sorted(t.params.items())): (t.value, dict(t.intermediate_values)) for t in trials}


def _registered(uri: str) -> tuple[str, dict[str, float]]:
    ml = MlflowClient(uri)
    version = ml.get_model_version_by_alias("it-same", "champion")
    run = ml.get_run(version.run_id)
    return version.version, run.data.params


def test_cli_and_flow_run_the_same_study(
    tmp_path: Path, prefect_server: Any, tracking_uri: str
) -> None:
    from flows.study import study_flow

    # The command with its default store (SQLite under the workdir), the flow with the
    # tracking server: both register version 1 of `it-same`.
    cli_dir = tmp_path / "cli"
    args = [a for o in _overrides(cli_dir, None) for a in ("--set", o)]
    res = subprocess.run(
        [EXE, "study", "--n-trials", "4", "--workers", "1", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    cli_version, cli_params = _registered(f"sqlite:///{cli_dir / 'mlflow.db'}")

    flow_dir = tmp_path / "flow"
    result = study_flow(n_trials=4, workers=1, overrides=_overrides(flow_dir, tracking_uri))
    flow_version, flow_params = _registered(tracking_uri)

    cli_trials, flow_trials = _trials(cli_dir), _trials(flow_dir)
    assert len(cli_trials) == 4 and cli_trials.keys() == flow_trials.keys()
    for key, (value, curve) in cli_trials.items():
        assert flow_trials[key][0] == pytest.approx(value, rel=1e-9, abs=1e-12)
        assert flow_trials[key][1] == pytest.approx(curve, rel=1e-9, abs=1e-12)
    best_cli = max(cli_trials.items(), key=lambda kv: kv[1][0])
    assert result["best_value"] == pytest.approx(best_cli[1][0], rel=1e-9)
    assert dict(best_cli[0]).items() <= result["params"].items()
    assert result["promoted"]
    assert str(result["model_version"]) == str(flow_version) == str(cli_version) == "1"
    # The retrained-and-registered model came from the same recipe (params, epochs): every
    # logged parameter is equal but where each was told to write and track.
    differ = {
        k for k in cli_params.keys() | flow_params.keys() if cli_params.get(k) != flow_params.get(k)
    }
    assert {k.removeprefix("stats.config.") for k in differ} == {"workdir", "tracking.uri"}
    # The same prepared data (split) underneath.
    for name in ("train.npz", "test.npz", "users.csv", "items.csv"):
        a = (cli_dir / "it-same" / "data" / name).read_bytes()
        assert a == (flow_dir / "it-same" / "data" / name).read_bytes(), name
