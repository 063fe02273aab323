"""A whole study against a real MLflow tracking server and a real Optuna journal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from helpers import journal_study, tiny_data
from mfstudy.config import StudyConfig, load_config
from mfstudy.errors import StudyError
from mfstudy.study import run_study
from mfstudy.tracking import load_recommender

SMALL = tiny_data(400, 200, 12_000)


def _cfg(tmp_path: Path, uri: str, name: str, extra: list[str]) -> StudyConfig:
    return load_config(
        None, [*SMALL, f"name={name}", f"workdir={tmp_path}", f"tracking.uri={uri}", *extra]
    )


def _runs(client: MlflowClient, experiment: str) -> tuple[object, list[object]]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    return parents[0], trials


def test_parallel_study_tracks_every_trial_and_registers_a_champion(
    tmp_path: Path, tracking_uri: str
) -> None:
    cfg = _cfg(
        tmp_path,
        tracking_uri,
        "it-wrmf",
        [
            "study.n_trials=6",
            "study.workers=2",
            "study.pruner.n_startup_trials=1",
            "study.pruner.n_warmup_steps=0",
            "study.sampler.n_startup_trials=2",
            "search_space={wrmf: {factors: {type: int, low: 2, high: 32, log: true},"
            " regularization: {type: float, low: 0.001, high: 1000, log: true}, iterations: 8}}",
        ],
    )
    result = run_study(cfg)
    client = MlflowClient(tracking_uri)
    parent, trials = _runs(client, "it-wrmf")
    study = journal_study(tmp_path / "it-wrmf" / "optuna.journal", "it-wrmf")
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert len(finished) == 6 == len(trials)
    assert result.counts["complete"] + result.counts["pruned"] == 6

    by_number = {int(r.data.tags["mfstudy.trial_number"]): r for r in trials}
    for t in finished:
        run = by_number[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        assert run.info.status == expected
        history = client.get_metric_history(run.info.run_id, "test_precision_at_5")
        assert [m.step for m in history] == sorted(t.intermediate_values)
        assert [m.value for m in history] == pytest.approx(
            [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        )
        for key in ("train_precision_at_5", "test_ndcg_at_5", "test_recall_at_5", "test_mse"):
            assert key in run.data.metrics
    assert any(t.state.name == "PRUNED" for t in finished), "median pruner never pruned"

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "similar_items.csv", "stats.json"} <= artifacts
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert any("learning_curve" in f for f in figures)
    assert any("optimization_history" in f for f in figures)

    mv = client.get_model_version_by_alias("it-wrmf", "champion")
    assert mv.version == result.model_version and result.promoted
    assert float(mv.tags["mfstudy.score"]) == pytest.approx(result.best.value)
    rec = load_recommender("models:/it-wrmf@champion", tracking_uri)
    top = rec.recommend(str(rec.user_ids[0]), k=5)
    assert len(top) == 5 and set(top["item_id"]) <= set(rec.item_ids)
    assert np.all(np.diff(top["score"].to_numpy()) <= 0)

    # Re-running resumes the study: nothing new to train, same parent run, and a second
    # version scored on the same holdout is compared (a tie does not move the alias).
    again = run_study(cfg)
    parent2, trials2 = _runs(client, "it-wrmf")
    assert parent2.info.run_id == parent.info.run_id and len(trials2) == 6
    assert again.best.number == result.best.number
    assert client.get_model_version_by_alias("it-wrmf", "champion").version == mv.version


def _journal_trials(tmp_path: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return journal_study(tmp_path / name / "optuna.journal", name).get_trials()


def test_diverging_trials_fail_and_the_study_goes_on(tmp_path: Path, tracking_uri: str) -> None:
    cfg = _cfg(
        tmp_path,
        tracking_uri,
        "it-diverge",
        [
            "study.n_trials=2",
            "study.sampler.kind=grid",
            "study.pruner.kind=none",
            "search_space={sgd: {learning_rate: {type: categorical, choices: [0.02, 1.0e+6]},"
            " factors: 4, iterations: 3}}",
        ],
    )
    result = run_study(cfg)
    assert result.counts["fail"] == 1 and result.counts["complete"] == 1
    assert result.best.params["learning_rate"] == 0.02
    # Optuna: the huge learning rate is FAIL by its own divergence (not a crashed worker).
    by_lr = {t.params["learning_rate"]: t for t in _journal_trials(tmp_path, "it-diverge")}
    diverged = by_lr[1.0e6]
    assert diverged.state == optuna.trial.TrialState.FAIL
    assert "Diverged" in diverged.user_attrs["error"]
    assert "mfstudy.crashed" not in diverged.user_attrs
    assert by_lr[0.02].state == optuna.trial.TrialState.COMPLETE
    # MLflow agrees, run by run, and the study ended normally.
    client = MlflowClient(tracking_uri)
    parent, trials = _runs(client, "it-diverge")
    assert parent.info.status == "FINISHED"
    by_number = {int(r.data.tags["mfstudy.trial_number"]): r for r in trials}
    assert by_number[diverged.number].info.status == "FAILED"
    assert "Diverged" in by_number[diverged.number].data.tags.get("mfstudy.error", "")
    good = by_number[by_lr[0.02].number]
    assert good.info.status == "FINISHED"
    assert good.data.metrics and all(np.isfinite(v) for v in good.data.metrics.values())
    # No registered version holds a NaN: its score, and the model loaded back from it.
    versions = client.search_model_versions("name='it-diverge'")
    assert [v.version for v in versions] == [result.model_version]
    for v in versions:
        assert float(v.tags["mfstudy.score"]) == pytest.approx(by_lr[0.02].value)
        rec = load_recommender(f"models:/it-diverge/{v.version}", tracking_uri)
        assert np.isfinite(rec.model.user_factors_).all()
        assert np.isfinite(rec.model.item_factors_).all()
        top, unknown = rec.recommend_many(rec.user_ids, k=5)
        assert unknown == [] and len(top) > 0 and np.isfinite(top["score"]).all()


def test_nothing_is_registered_when_every_trial_fails(tmp_path: Path, tracking_uri: str) -> None:
    cfg = _cfg(
        tmp_path,
        tracking_uri,
        "it-allfail",
        [
            "study.n_trials=1",
            "study.pruner.kind=none",
            "search_space={sgd: {learning_rate: {type: float, low: 1.0e+6, high: 1.0e+7},"
            " factors: 4, iterations: 2}}",
        ],
    )
    with pytest.raises(StudyError, match="no complete trial"):
        run_study(cfg)
    client = MlflowClient(tracking_uri)
    assert client.search_registered_models(filter_string="name='it-allfail'") == []
    parent, trials = _runs(client, "it-allfail")
    assert parent.info.status == "FAILED"
    [trial] = _journal_trials(tmp_path, "it-allfail")
    assert trial.state == optuna.trial.TrialState.FAIL and "Diverged" in trial.user_attrs["error"]
    assert [r.info.status for r in trials] == ["FAILED"]
