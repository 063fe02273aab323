"""Resuming a study never mixes data or tracking locations (real journal, real MLflow).

A study records the fingerprint of the data its trials are scored on and where they are
tracked. Re-run on the same data it resumes; on grown data its trials go to a new study
`<name>-<fingerprint[:8]>` (or, with `study.on_data_change=error`, nothing runs); re-pointed
at a tracking location without its runs, it refuses instead of creating an empty parent run.
The CLI cases run the installed `mfstudy` console script, like tests/test_bad_input.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from servers import MlflowServer

from helpers import EXE, cli_sets, journal_study, tiny_data
from mfstudy.config import StudyConfig, SyntheticSource, load_config
from mfstudy.data import generate_synthetic
from mfstudy.errors import StudyError
from mfstudy.prepare import data_fingerprint, holdout_fingerprint, prepare
from mfstudy.study import run_study
from mfstudy.tuning._factories import make_storage

# Whole studies, through the command or `run_study`.
pytestmark = pytest.mark.slow

#: Small planted-preference data, k-core thresholded, and a one-parameter WRMF space whose
#: trials take about a second.
SETS = [
    "threshold.min_items_per_user=5",
    "threshold.min_users_per_item=5",
    "study.pruner.kind=none",
    "study.threads_per_worker=1",
    "search_space={wrmf: {factors: 8, regularization: 1.0,"
    " alpha: {type: float, low: 1, high: 30, log: true}, iterations: 4}}",
]


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(base, grown): the grown table is the base plus 40% more interactions."""
    raw = generate_synthetic(
        SyntheticSource(n_users=300, n_items=150, n_interactions=9_000, affinity=3.0), 5
    )
    frame = raw.frame[["user", "item", "weight"]].drop_duplicates(["user", "item"])
    keep = np.sort(np.random.default_rng(5).permutation(len(frame))[: int(0.6 * len(frame))])
    return frame.iloc[keep], frame


def _sets(csv: Path, workdir: Path, name: str, uri: str, *extra: str) -> list[str]:
    return [
        f"name={name}",
        f"workdir={workdir}",
        f"tracking.uri={uri}",
        f"data={{source: table, path: {csv}}}",
        *SETS,
        *extra,
    ]


def _cfg(sets: list[str]) -> StudyConfig:
    return load_config(None, sets)


def _cli(sets: list[str], n_trials: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    args = [EXE, "study", "--n-trials", str(n_trials), *cli_sets(sets)]
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=600)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _study_names(journal: Path) -> set[str]:
    return set(optuna.get_all_study_names(make_storage(str(journal))))


def _snapshot(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[Any, ...]]:
    return [(t.number, t.state, t.value, t.params, t.datetime_complete) for t in trials]


def _parents(client: MlflowClient, experiment: str) -> dict[str, Any]:
    """Parent runs of an experiment by their study tag."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`mfstudy.role` = 'study'")
    return {r.data.tags["mfstudy.study"]: r for r in runs}


def _children(client: MlflowClient, parent: Any) -> list[Any]:
    return client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=1000,
    )


def _versions(client: MlflowClient, name: str) -> list[Any]:
    return client.search_model_versions(f"name='{name}'")


def test_grown_data_goes_to_a_new_study_and_same_data_resumes(
    tmp_path: Path, tracking_uri: str
) -> None:
    base, grown = _frames()
    csv, work, name = tmp_path / "likes.csv", tmp_path / "runs", "resume-grow"
    base.to_csv(csv, index=False)
    sets = _sets(csv, work, name, tracking_uri)
    journal = work / name / "optuna.journal"
    client = MlflowClient(tracking_uri)

    # Data A: two trials, then the same data with a budget of three resumes to exactly three.
    _ok(_cli(sets, 2, tmp_path))
    fp_a = data_fingerprint(prepare(_cfg(sets)))
    study_a = journal_study(journal, name)
    assert study_a.user_attrs["mfstudy.data_fingerprint"] == fp_a
    assert study_a.user_attrs["mfstudy.tracking"] == tracking_uri
    _ok(_cli(sets, 3, tmp_path))
    trials_a = journal_study(journal, name).get_trials()
    assert [t.state.name for t in trials_a] == ["COMPLETE"] * 3
    assert _study_names(journal) == {name}
    assert list(_parents(client, name)) == [name]
    versions_before = len(_versions(client, name))

    # The table grows: a different fingerprint, so a different study.
    grown.to_csv(csv, index=False)
    prepared_b = prepare(_cfg(sets))
    fp_b = data_fingerprint(prepared_b)
    assert fp_b != fp_a
    new = f"{name}-{fp_b[:8]}"
    stats = (work / name / "data" / "stats.json").read_bytes()
    journal_bytes = journal.read_bytes()

    # study.on_data_change=error: one line, exit 2, nothing written, run or registered.
    refused = _cli([*sets, "study.on_data_change=error"], 3, tmp_path)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith(f"mfstudy: error: data changed since study '{name}' was run")
    assert f"(fingerprint {fp_a[:8]} -> {fp_b[:8]})" in lines[0] and new in lines[0]
    assert journal.read_bytes() == journal_bytes
    assert (work / name / "data" / "stats.json").read_bytes() == stats
    assert not (work / new).exists()
    assert list(_parents(client, name)) == [name]
    assert len(_versions(client, name)) == versions_before

    # Default (new_study): the trials go to `<name>-<fp_b[:8]>`, which the output names.
    out = _ok(_cli(sets, 3, tmp_path))
    assert (
        f"data changed since study '{name}' was run (fingerprint {fp_a[:8]} -> {fp_b[:8]}): "
        f"trials go to new study '{new}'"
    ) in out
    assert f"from study {new}: " in out
    assert _study_names(journal) == {name, new}
    assert _snapshot(journal_study(journal, name).get_trials()) == _snapshot(trials_a)
    study_b = journal_study(journal, new)
    trials_b = study_b.get_trials()
    assert [t.state.name for t in trials_b] == ["COMPLETE"] * 3
    assert study_b.user_attrs["mfstudy.data_fingerprint"] == fp_b
    assert (work / new / "data" / "stats.json").is_file()

    # MLflow: one experiment, a parent run per study, each holding only its own trials.
    parents = _parents(client, name)
    assert set(parents) == {name, new}
    for study_name, trials in ((name, trials_a), (new, trials_b)):
        runs = _children(client, parents[study_name])
        assert sorted(r.info.run_id for r in runs) == sorted(
            t.user_attrs["mlflow_run_id"] for t in trials
        )
    # The new study's best and trials table come from its own trials only.
    run_b = parents[new].info.run_id
    table = pd.read_csv(client.download_artifacts(run_b, "trials.csv", str(tmp_path)))
    table = table.sort_values("number")
    assert table["number"].tolist() == [t.number for t in trials_b]
    assert table["value"].tolist() == pytest.approx([t.value for t in trials_b])
    best = json.loads(
        Path(client.download_artifacts(run_b, "best.json", str(tmp_path))).read_text()
    )
    assert best["value"] == pytest.approx(study_b.best_value)
    # Same registered model line; the new version is scored on the new data's holdout.
    [version] = [v for v in _versions(client, name) if v.run_id == run_b]
    assert float(version.tags["mfstudy.score"]) == pytest.approx(study_b.best_value)
    assert version.tags["mfstudy.holdout"] == holdout_fingerprint(prepared_b)

    # The same command on the same (grown) data finds the new study again and resumes it:
    # no third study, no new trial, no new parent run.
    out = _ok(_cli(sets, 3, tmp_path))
    assert f"trials go to study '{new}' (resumed)" in out
    assert _study_names(journal) == {name, new}
    assert _snapshot(journal_study(journal, new).get_trials()) == _snapshot(trials_b)
    assert _parents(client, name)[new].info.run_id == run_b


def test_a_study_repointed_at_another_server_refuses_and_names_both(
    tmp_path: Path, tracking_uri: str, new_mlflow_server: Callable[..., MlflowServer]
) -> None:
    other = new_mlflow_server(tmp_path / "other", wait=False)  # boots while the study runs
    base, _ = _frames()
    csv, work, name = tmp_path / "likes.csv", tmp_path / "runs", "resume-repoint"
    base.to_csv(csv, index=False)
    # Credentials in the URI (the server ignores them) must never be stored or printed.
    port = tracking_uri.rsplit(":", 1)[1]
    secret_uri = f"http://alice:s3cret@127.0.0.1:{port}"
    _ok(_cli(_sets(csv, work, name, secret_uri), 2, tmp_path))
    journal = work / name / "optuna.journal"
    assert journal_study(journal, name).user_attrs["mfstudy.tracking"] == tracking_uri
    assert b"s3cret" not in journal.read_bytes()
    client = MlflowClient(tracking_uri)
    assert _parents(client, name)[name].data.params["tracking.uri"] == tracking_uri
    versions = len(_versions(client, name))

    other.wait_healthy()
    other_uri = f"http://bob:hunter2@127.0.0.1:{other.port}"
    journal_bytes = journal.read_bytes()
    refused = _cli(_sets(csv, work, name, other_uri), 2, tmp_path)
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"mfstudy: error: study '{name}' logged its 2 trial(s) to ")
    assert tracking_uri in line and other.uri in line
    assert "set tracking.uri back to" in line and "--set name=" in line
    assert "s3cret" not in line and "hunter2" not in line
    assert journal.read_bytes() == journal_bytes
    # No empty parent run and no model on the new server; nothing new on the old one.
    fresh = MlflowClient(other.uri)
    assert fresh.get_experiment_by_name(name) is None
    assert fresh.search_registered_models() == []
    assert list(_parents(client, name)) == [name]
    assert len(_versions(client, name)) == versions


def test_a_moved_store_that_holds_the_runs_is_adopted(tmp_path: Path) -> None:
    """Re-pointing is refused only where the study's runs are missing: a copied MLflow store
    holds them, so the study resumes there (nothing re-run) and records its new location."""
    base, _ = _frames()
    csv, work, name = tmp_path / "likes.csv", tmp_path / "runs", "resume-moved"
    base.to_csv(csv, index=False)
    (tmp_path / "a").mkdir()
    uri_a = f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    first = run_study(_cfg(_sets(csv, work, name, uri_a, "study.n_trials=1")))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mlflow.db").write_bytes((tmp_path / "a" / "mlflow.db").read_bytes())
    uri_b = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    again = run_study(_cfg(_sets(csv, work, name, uri_b, "study.n_trials=1")))
    assert again.parent_run_id == first.parent_run_id and again.study_name == name
    study = journal_study(work / name / "optuna.journal", name)
    assert len(study.get_trials()) == 1
    assert study.user_attrs["mfstudy.tracking"] == uri_b


def test_a_study_from_before_fingerprints_adopts_the_data_where_its_runs_are(
    tmp_path: Path, tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A study created before this change: its trials, no recorded fingerprint or location."""
    base, _ = _frames()
    csv, name = tmp_path / "likes.csv", "resume-legacy"
    base.to_csv(csv, index=False)
    old = tmp_path / "old"
    run_study(_cfg(_sets(csv, old, name, tracking_uri, "study.n_trials=2")))
    # The same trials in a study without the attributes, in another working folder.
    work = tmp_path / "runs"
    legacy = optuna.create_study(
        study_name=name,
        storage=make_storage(str(work / name / "optuna.journal")),
        direction="maximize",
    )
    legacy.add_trials(journal_study(old / name / "optuna.journal", name).get_trials())
    assert legacy.user_attrs == {}

    # At a tracking location without its parent run: refused, nothing created there.
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with pytest.raises(StudyError, match=f"study '{name}' has 2 trial.s. but no parent run"):
        run_study(_cfg(_sets(csv, work, name, elsewhere, "study.n_trials=2")))
    assert MlflowClient(elsewhere).get_experiment_by_name(name) is None
    assert "from before data fingerprints were recorded" in caplog.text
    fp = data_fingerprint(prepare(_cfg(_sets(csv, work, name, tracking_uri))))
    assert journal_study(work / name / "optuna.journal", name).user_attrs == {
        "mfstudy.data_fingerprint": fp
    }

    # Where its parent run is: resumed (budget full, nothing re-run) and the location recorded.
    result = run_study(_cfg(_sets(csv, work, name, tracking_uri, "study.n_trials=2")))
    assert result.study_name == name and result.counts["complete"] == 2
    study = journal_study(work / name / "optuna.journal", name)
    assert len(study.get_trials()) == 2
    assert study.user_attrs["mfstudy.tracking"] == tracking_uri
    assert list(_parents(MlflowClient(tracking_uri), name)) == [name]


def test_enqueued_trials_do_not_count_as_trials_run(tmp_path: Path) -> None:
    """Trials enqueued before the first run (`study.enqueue_trial`, as the benchmarks do to
    give two runs the same trials) are WAITING: no score, no MLflow run. A fresh tracking
    location has nothing to miss then, and the study runs them (it was refused: "has 30
    trial(s) but no parent run")."""
    from mfstudy.tuning import create_study

    cfg = load_config(
        None,
        [
            f"workdir={tmp_path / 'runs'}",
            *tiny_data(pruner="none"),
            "study.n_trials=1",
            "search_space={wrmf: {factors: {type: int, low: 4, high: 16}, iterations: 3}}",
        ],
    )
    study, _ = create_study(cfg)
    study.enqueue_trial({"factors": 7})
    result = run_study(cfg)
    assert result.best.params["factors"] == 7
