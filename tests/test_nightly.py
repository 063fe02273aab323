"""`mfstudy retrain CONFIG`: the nightly logic (`mfstudy.nightly`) without any server, run the
way a cron job runs it, on a feed that starts, stays the same, grows and then shrinks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import EXE, cli_sets, grown_feed

pytestmark = pytest.mark.slow

NAME = "nightly-cli"


def _retrain(tmp_path: Path, csv: Path) -> subprocess.CompletedProcess[str]:
    sets = [
        f"name={NAME}",
        f"data={{source: table, path: {csv}}}",
        "retrain.fallback_trials=2",
        "study.workers=1",
        "study.threads_per_worker=1",
        "study.pruner.kind=none",
        "search_space={wrmf: {factors: 8, regularization: 1.0, "
        "alpha: {type: float, low: 5, high: 20}, iterations: 6}}",
    ]
    return subprocess.run(
        [EXE, "retrain", *cli_sets(sets)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def _versions(tmp_path: Path) -> list[str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{NAME}'"))


def test_retrain_command_runs_the_nightly_without_a_server(tmp_path: Path) -> None:
    base, grown = grown_feed(400, 200, 16_000, seed=5)
    csv = tmp_path / "likes.csv"
    base.to_csv(csv, index=False)

    # No champion yet: a study of retrain.fallback_trials trials registers one.
    first = _retrain(tmp_path, csv)
    assert first.returncode == 0, first.stderr
    assert "no champion yet: ran a study of 2 trials" in first.stderr
    assert first.stdout.strip().splitlines()[-1] == f"models:/{NAME}/1"
    assert _versions(tmp_path) == ["1"]

    # The same data again: nothing fitted, nothing registered.
    same = _retrain(tmp_path, csv)
    assert same.returncode == 0, same.stderr
    assert f"{NAME}: unchanged: champion v1 kept" in same.stderr
    assert same.stdout.strip() == f"models:/{NAME}/1"
    assert _versions(tmp_path) == ["1"]

    # Grown data: the champion's recipe refitted, gated and registered as version 2.
    grown.to_csv(csv, index=False)
    more = _retrain(tmp_path, csv)
    assert more.returncode == 0, more.stderr
    assert f"{NAME}: new v2 " in more.stderr and "re-scored" in more.stderr
    decision = "promoted" if "-> promoted" in more.stderr else "kept"
    assert f"-> {decision}" in more.stderr
    champion = "2" if decision == "promoted" else "1"
    assert more.stdout.strip() == f"models:/{NAME}/{champion}"
    assert _versions(tmp_path) == ["1", "2"]

    # Back to 70% of it: more users lost than retrain.max_shrink allows. One line, exit 2,
    # nothing registered, the champion kept.
    base.to_csv(csv, index=False)
    shrunk = _retrain(tmp_path, csv)
    assert shrunk.returncode == 2, shrunk.stderr
    lines = shrunk.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfstudy: error: retrain gate: ")
    assert "nothing registered" in lines[0]
    assert shrunk.stdout == ""
    assert _versions(tmp_path) == ["1", "2"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion
