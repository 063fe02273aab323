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


RANKED = [
    "study.n_trials=10",
    "study.workers=1",  # one after another: every trial's result is the same on each run
    "study.threads_per_worker=1",
    "study.eval_every=1",
    "study.sampler.n_startup_trials=3",
    "study.pruner.kind=median",
    "study.pruner.n_startup_trials=2",
    "study.pruner.n_warmup_steps=3",
    "search_space={wrmf: {factors: {type: int, low: 2, high: 48, log: true},"
    " regularization: {type: float, low: 0.001, high: 1000, log: true},"
    " alpha: {type: float, low: 0.5, high: 80, log: true}, iterations: 8}}",
]


def test_runs_table_sorted_by_best_metric_ranks_trials_as_the_study_does(
    tmp_path: Path, tracking_uri: str
) -> None:
    import pandas as pd

    from mfstudy.secrets import public_config
    from mfstudy.study import close_study, open_study
    from mfstudy.tracking._params import flatten
    from mfstudy.tuning import run_local

    name, key = "it-ranked", "test_precision_at_5"
    cfg = _cfg(tmp_path, tracking_uri, name, RANKED)
    # The study as open_study's callers run it, with links for its runs.
    session = open_study(cfg, run_tags={"link.flow_run": "http://prefect/runs/7"})
    run_local(session.ctx, 1)
    result = close_study(session)

    client = MlflowClient(tracking_uri)
    parent, trials = _runs(client, name)
    study = journal_study(tmp_path / name / "optuna.journal", name)
    frozen = {t.number: t for t in study.get_trials()}
    assert len(trials) == len(frozen) == 10
    by_number = {int(r.data.tags["mfstudy.trial_number"]): r for r in trials}

    # Every trial run has the value the study selected for it: its metric at its best epoch.
    selected = {}
    for n, t in frozen.items():
        run = by_number[n]
        best_epoch = t.user_attrs["best_epoch"]
        selected[n] = t.intermediate_values[best_epoch]
        assert run.data.metrics[f"best_{key}"] == selected[n], f"trial {n}"
        assert run.data.metrics["best_epoch"] == best_epoch
        assert (
            run.data.tags["mfstudy.state"]
            == {"COMPLETE": "complete", "PRUNED": "pruned"}[t.state.name]
        )
        assert run.data.tags["link.flow_run"] == "http://prefect/runs/7"
        if t.state.name == "COMPLETE":
            assert selected[n] == t.value
    # The case must exercise what it claims: a pruned trial whose last value (Optuna's value
    # for it, and the run's latest per-epoch value) is not its best.
    pruned = [n for n, t in frozen.items() if t.state.name == "PRUNED" and t.value != selected[n]]
    assert pruned, "no pruned trial ended below its best"
    for n in pruned:
        assert by_number[n].data.metrics[key] == frozen[n].value != selected[n]

    # Sorted by best_<metric>, the finished (COMPLETE) trial runs rank as the study does.
    def ranked(order_by: str) -> list[tuple[int, float]]:
        runs = client.search_runs(
            [parent.info.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                "and attributes.status = 'FINISHED'"
            ),
            order_by=[order_by],
        )
        return [(int(r.data.tags["mfstudy.trial_number"]), r.data.metrics) for r in runs]

    by_best = [(n, m[f"best_{key}"]) for n, m in ranked(f"metrics.best_{key} DESC")]
    complete = sorted(
        ((t.number, t.value) for t in frozen.values() if t.state.name == "COMPLETE"),
        key=lambda nv: -nv[1],
    )
    assert len(complete) >= 4
    # Equal values (precision@k is a count over a small test set) may come in either order.
    assert [v for _, v in by_best] == [v for _, v in complete]
    assert dict(by_best) == dict(complete)
    assert by_best[0][1] > by_best[1][1], "the case needs a single best trial"
    assert by_best[0][0] == study.best_trial.number == result.best.number
    # ... which the last epoch's values (the per-epoch metric's column) would not: the case
    # has a trial that peaked before its last epoch and changes places for it.
    by_last = [(n, m[key]) for n, m in ranked(f"metrics.{key} DESC")]
    assert [n for n, _ in by_last] != [n for n, _ in by_best]

    # The parent run: the study's best, the config once, a compact set of data metrics.
    pm, params = parent.data.metrics, parent.data.params
    assert pm[f"best_{key}"] == study.best_value
    assert pm["best_epoch"] == study.best_trial.user_attrs["best_epoch"]
    assert pm["best_trial"] == study.best_trial.number
    assert parent.data.tags["link.flow_run"] == "http://prefect/runs/7"
    assert not any(k.startswith("stats.") for k in [*params, *pm])
    assert set(params) == set(flatten(public_config(session.cfg.model_dump(mode="json"))))
    data = {k for k in pm if k.startswith("data.")}
    assert len(data) == 12 and set(pm) == data | {f"best_{key}", "best_epoch", "best_trial"}
    assert pm["data.test_users"] == len(session.prepared.users)

    # The trials table (trials.csv, and the rows the flow's report is written from) agrees.
    csv = Path(client.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path)))
    table = pd.read_csv(csv).set_index("number")
    for n in frozen:
        assert table.loc[n, "value"] == pytest.approx(selected[n], rel=1e-12), f"trial {n}"
        assert table.loc[n, "best_epoch"] == frozen[n].user_attrs["best_epoch"]
    assert {r["number"]: r["value"] for r in result.trials} == selected
