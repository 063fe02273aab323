"""The same config and seed give the same results, through the real `mfstudy` command.

- `prepare`: two runs into two folders give identical matrices (shape, indptr, indices and
  values, byte for byte), id maps, evaluated users and statistics; another seed changes the
  split (and, for synthetic data, the data itself).
- `study` with one thread per worker and one worker: two runs in two fresh working folders
  give the same trial parameters, per-epoch intermediate values and final values in Optuna,
  and the same per-epoch metrics of every trial run in MLflow, for WRMF (implicit feedback,
  synthetic data) and for SGD (explicit ratings, MovieLens 100k).

The `.npz` files themselves are not compared byte for byte: the zip format stamps every member
with the time it was written.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from servers import stop_group

from helpers import EXE, REPO, cli_sets, journal_study, tiny_data

# Every test runs the `mfstudy` command several times.
pytestmark = pytest.mark.slow

TINY = cli_sets(tiny_data())
ML100K = ["--set", "data.source=movielens-100k", "--set", "split.kind=new_users"]


def _run(args: list[str], cwd: Path) -> str:
    res = subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _run_together(args: list[str], folders: list[Path]) -> None:
    """Run the same command in each folder at once (each its own process group, killed on
    any failure or timeout): runs that share nothing but the config must still agree."""
    procs = []
    try:
        for folder in folders:
            folder.mkdir()
            procs.append(
                subprocess.Popen(
                    [EXE, *args],
                    cwd=folder,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            stop_group(p, term_wait=0)


# --------------------------------------------------------------------------- prepare


def _prepared(folder: Path) -> dict[str, Any]:
    """Everything `prepare` wrote, as comparable values (matrices as their raw arrays)."""
    out: dict[str, Any] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix == ".npz":
            m = sp.load_npz(f).tocsr()
            out[f.name] = (
                m.shape,
                m.indptr.astype(np.int64).tobytes(),
                m.indices.astype(np.int64).tobytes(),
                m.data.dtype.str,
                m.data.tobytes(),
            )
        else:
            out[f.name] = f.read_bytes()
    return out


@pytest.mark.parametrize(
    ("source", "args"),
    [
        pytest.param("synthetic", TINY, id="synthetic"),
        pytest.param("ml-100k", ML100K, id="ml-100k"),
    ],
)
def test_prepare_same_seed_same_split(
    tmp_path: Path, source: str, args: list[str], request: pytest.FixtureRequest
) -> None:
    if source == "ml-100k":
        request.getfixturevalue("data_dir")
    for out, seed in (("a", 7), ("b", 7), ("c", 8)):
        _run(["prepare", *args, "--set", f"seed={seed}", "--out", out], cwd=tmp_path)
    a, b, c = (_prepared(tmp_path / x) for x in "abc")

    expected = {"full.npz", "train.npz", "test.npz", "users.csv", "items.csv"}
    expected |= {"users_evaluated.npy", "stats.json", ".mfstudy-prepared"}
    if source == "ml-100k":
        expected.add("foldin.npz")
    assert set(a) == expected
    assert a == b  # byte for byte, stats.json included

    # Another seed: another split. For a file the data and its id maps stay, for synthetic
    # data the generated interactions change too.
    assert a["train.npz"] != c["train.npz"] and a["test.npz"] != c["test.npz"]
    assert a["users_evaluated.npy"] != c["users_evaluated.npy"]
    if source == "ml-100k":
        assert a["full.npz"] == c["full.npz"]
        assert a["users.csv"] == c["users.csv"] and a["items.csv"] == c["items.csv"]
    else:
        assert a["full.npz"] != c["full.npz"]
    sa, sc = json.loads(a["stats.json"]), json.loads(c["stats.json"])
    assert (sa["seed"], sc["seed"]) == (7, 8)


# --------------------------------------------------------------------------- study


def _optuna_trials(workdir: Path, name: str) -> list[tuple[Any, ...]]:
    study = journal_study(workdir / "runs" / name / "optuna.journal", name)
    return [
        (t.number, t.state.name, t.params, t.intermediate_values, t.value)
        for t in study.get_trials(deepcopy=False)
    ]


def _mlflow_trial_metrics(workdir: Path, name: str) -> dict[str, Any]:
    """Per trial run (by name): its parameters and every metric's (step, value) history."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    out: dict[str, Any] = {}
    for run in client.search_runs([exp.experiment_id]):
        if "mlflow.parentRunId" not in run.data.tags:
            continue  # the study's parent run
        history = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics
        }
        out[run.info.run_name] = (run.info.status, run.data.params, history)
    return out


SGD_SPACE = (
    "search_space={sgd: {factors: {type: int, low: 4, high: 16}, "
    "learning_rate: {type: float, low: 0.005, high: 0.02, log: true}, "
    "reg_factors: {type: float, low: 0.01, high: 0.1, log: true}, iterations: 5}}"
)


@pytest.mark.parametrize(
    ("name", "metric", "args"),
    [
        pytest.param("quickstart", "test_precision_at_5", TINY, id="wrmf-synthetic"),
        pytest.param(
            "movielens-100k",
            "test_rmse",
            [str(REPO / "configs" / "movielens-100k.yaml"), "--set", SGD_SPACE],
            id="sgd-ml-100k",
        ),
    ],
)
def test_study_same_seed_same_trials(
    tmp_path: Path, name: str, metric: str, args: list[str], request: pytest.FixtureRequest
) -> None:
    if name == "movielens-100k":
        request.getfixturevalue("data_dir")
    one_thread = ["--n-trials", "3", "--workers", "1", "--set", "study.threads_per_worker=1"]
    first, second = tmp_path / "first", tmp_path / "second"
    _run_together(["study", *args, *one_thread], [first, second])

    trials = _optuna_trials(first, name)
    assert len(trials) == 3
    assert [t[1] for t in trials] == ["COMPLETE"] * 3
    # Every trial reported every epoch, and the trials did not all draw the same parameters.
    assert all(len(t[3]) >= 5 for t in trials)
    assert len({json.dumps(t[2], sort_keys=True) for t in trials}) == 3
    assert _optuna_trials(second, name) == trials

    runs = _mlflow_trial_metrics(first, name)
    assert _mlflow_trial_metrics(second, name) == runs
    assert sorted(runs) == ["trial-0000", "trial-0001", "trial-0002"]
    for number, _, params, intermediate, value in trials:
        status, logged_params, history = runs[f"trial-{number:04d}"]
        assert status == "FINISHED" and set(params) <= set(logged_params)
        # The value the study selected, once: best_<metric> and the epoch it was reached at.
        best_value = history.pop(f"best_{metric}")
        best_epoch = history.pop("best_epoch")
        assert best_value == [(0, value)] and intermediate[int(best_epoch[0][1])] == value
        # One point per evaluated epoch for every other metric, the objective among them,
        # equal to what Optuna was told.
        steps = sorted(intermediate)
        assert history and all([s for s, _ in h] == steps for h in history.values())
        assert dict(history[metric]) == intermediate
