"""`mfstudy study` (no server) and the `mf-study` flow (a real Prefect server) are the same
study: one driver (`mfstudy.tuning.drive_trials`) decides which trials run, so they must agree
on every trial's parameters, state, value and per-epoch curve, the best trial, the retrained
model and the registration.

Which cases are deterministic, and why. A trial's sampler is seeded by the study seed and the
trial's number (`PerTrialSeedSampler`), and training is seeded, so a trial's result depends
only on its number and on the trials the study holds when it is asked and pruned:

- one worker: trials run one after another, so what each trial sees is the same on both paths,
  whatever the sampler and pruner: TPE past its random start-up and median pruning included;
- two workers: trials overlap, and which ones had finished when a trial was asked (TPE's model)
  or reached an epoch (the median pruner) depends on timing. A proposal that reads no other
  trial stays deterministic: TPE's random start-up (n_trials <= n_startup_trials) and the grid
  (trial n takes point n of the seed-shuffled grid), without pruning. TPE past its start-up or
  a pruner with two workers is not deterministic on either path, so it is not compared.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from helpers import EXE, cli_sets, journal_study, tiny_data

pytestmark = pytest.mark.slow

SPACE = (
    "search_space={wrmf: {factors: {type: int, low: 2, high: 24}, "
    "regularization: {type: float, low: 0.001, high: 30, log: true}, "
    "alpha: {type: float, low: 0.5, high: 50, log: true}, iterations: 6}}"
)
GRID = (
    "search_space={wrmf: {factors: {type: categorical, choices: [4, 12]}, "
    "regularization: {type: categorical, choices: [0.01, 1.0]}, iterations: 6}}"
)
CASES = {
    # TPE beyond its 3 random start-up trials, and median pruning from the third trial on.
    "tpe-pruned-1": (
        1,
        8,
        [
            SPACE,
            "study.sampler.kind=tpe",
            "study.sampler.n_startup_trials=3",
            "study.pruner.kind=median",
            "study.pruner.n_startup_trials=2",
            "study.pruner.n_warmup_steps=1",
            "study.eval_every=1",
        ],
    ),
    # TPE's random start-up on two workers: no proposal reads another trial.
    "tpe-startup-2": (
        2,
        4,
        [
            SPACE,
            "study.sampler.kind=tpe",
            "study.sampler.n_startup_trials=8",
            "study.pruner.kind=none",
        ],
    ),
    "grid-2": (2, 4, [GRID, "study.sampler.kind=grid", "study.pruner.kind=none"]),
}


def _overrides(name: str, workdir: Path, uri: str | None, extra: list[str]) -> list[str]:
    tracking = [] if uri is None else [f"tracking.uri={uri}"]
    return [
        *tracking,
        f"name={name}",
        *tiny_data(400, 200, 12_000),
        f"workdir={workdir}",
        "study.threads_per_worker=1",
        *extra,
    ]


Trials = dict[int, tuple[str, dict[str, Any], float | None, dict[int, float]]]


def _trials(workdir: Path, name: str) -> Trials:
    study = journal_study(workdir / name / "optuna.journal", name)
    return {
        t.number: (t.state.name, t.params, t.value, dict(t.intermediate_values))
        for t in study.get_trials()
    }


def _registered(uri: str, name: str) -> tuple[str, dict[str, str], dict[str, float]]:
    """The champion's version, and its (parent) run's params and data metrics."""
    ml = MlflowClient(uri)
    version = ml.get_model_version_by_alias(name, "champion")
    run = ml.get_run(version.run_id)
    data = {k: v for k, v in run.data.metrics.items() if k.startswith("data.")}
    return version.version, run.data.params, data


@pytest.mark.parametrize("case", list(CASES))
def test_cli_and_flow_run_the_same_study(
    case: str, tmp_path: Path, prefect_server: Any, tracking_uri: str
) -> None:
    from flows.study import study_flow

    workers, n_trials, extra = CASES[case]
    name = f"it-same-{case}"
    # The command with its default store (SQLite under the workdir), the flow with the
    # tracking server: both register version 1 of the model.
    cli_dir = tmp_path / "cli"
    args = cli_sets(_overrides(name, cli_dir, None, extra))
    res = subprocess.run(
        [EXE, "study", "--n-trials", str(n_trials), "--workers", str(workers), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    cli_version, cli_params, cli_data = _registered(f"sqlite:///{cli_dir / 'mlflow.db'}", name)

    flow_dir = tmp_path / "flow"
    result = study_flow(
        n_trials=n_trials,
        workers=workers,
        overrides=_overrides(name, flow_dir, tracking_uri, extra),
    )
    flow_version, flow_params, flow_data = _registered(tracking_uri, name)

    cli_trials, flow_trials = _trials(cli_dir, name), _trials(flow_dir, name)
    assert sorted(cli_trials) == list(range(n_trials)) == sorted(flow_trials)
    for number, (state, params, value, curve) in cli_trials.items():
        f_state, f_params, f_value, f_curve = flow_trials[number]
        assert (f_state, f_params) == (state, params), f"trial {number}"
        assert f_value == pytest.approx(value, rel=1e-9, abs=1e-12), f"trial {number}"
        assert f_curve == pytest.approx(curve, rel=1e-9, abs=1e-12), f"trial {number}"
    states = [s for s, *_ in cli_trials.values()]
    if case == "tpe-pruned-1":
        # The case must exercise what it claims: pruning, and TPE past its start-up.
        assert "PRUNED" in states and "COMPLETE" in states
        assert n_trials > 3
    else:
        assert set(states) == {"COMPLETE"}
    if case == "grid-2":
        assert len({tuple(sorted(p.items())) for _, p, *_ in cli_trials.values()}) == 4

    complete = {n: v for n, (s, _, v, _) in cli_trials.items() if s == "COMPLETE"}
    best_number = max(complete, key=complete.__getitem__)
    assert result.best.number == best_number
    assert result.best.value == pytest.approx(complete[best_number], rel=1e-9)
    assert cli_trials[best_number][1].items() <= result.best.params.items()
    assert result.promoted
    assert str(result.model_version) == str(flow_version) == str(cli_version) == "1"
    # The command prints the same result: its best trial line and the version's URI.
    assert f"best trial #{best_number} " in res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"models:/{name}/1"
    # The retrained-and-registered model came from the same recipe (params, epochs): every
    # logged parameter (the config, logged once) is equal but where each was told to write
    # and track.
    differ = {
        k for k in cli_params.keys() | flow_params.keys() if cli_params.get(k) != flow_params.get(k)
    }
    assert differ == {"workdir", "tracking.uri"}
    assert not any(k.startswith("stats.") for k in cli_params.keys() | flow_params.keys())
    # The same data statistics (the parent runs' data metrics).
    assert cli_data == flow_data and len(cli_data) >= 10
    # The same prepared data (split) underneath.
    for part in ("train.npz", "test.npz", "users.csv", "items.csv"):
        a = (cli_dir / name / "data" / part).read_bytes()
        assert a == (flow_dir / name / "data" / part).read_bytes(), part
