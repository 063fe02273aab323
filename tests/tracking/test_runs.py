"""Parent and trial runs against a real MLflow server: structure, metrics, states, outages."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from mfstudy.tracking import (
    TrackingError,
    TrialRun,
    check_reachable,
    finish_study,
    log_study_artifacts,
    replay_spool,
    start_study,
)
from mfstudy.tracking._artifacts import read_trial_histories
from mfstudy.tracking._study import StudyRun

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "demo",
    "data": {"source": "synthetic", "n_users": 50},
    "search": {"factors": [8, 16, 32], "note": "x" * 7000},
}
#: Data statistics shaped as `mfstudy.prepare` writes them (a part of them), config included.
STATS = {
    "name": "demo",
    "source": "synthetic",
    "after_threshold": {"users": 50, "items": 30, "interactions": 180, "sparsity_pct": 88.0},
    "split": {"kind": "holdout", "test_interactions": 20, "evaluated_users": 10},
    "config": CONFIG,
}


def _curve(epoch: int, trial: int) -> dict[str, float]:
    """Deterministic per-epoch metrics, distinct per trial so mix-ups are caught."""
    return {
        "train_precision_at_k": 0.1 + 0.01 * epoch + 0.001 * trial,
        "test_precision_at_k": 0.05 + 0.005 * epoch + 0.001 * trial,
        "train_mse": 1.0 / epoch,
        "test_mse": 1.2 / epoch + 0.01 * trial,
    }


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def study(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> StudyRun:
    stats_path = tmp_path_factory.mktemp("stats") / "data-stats.json"
    stats_path.write_text(json.dumps(STATS))
    return start_study(
        tracking_uri, "mfstudy-test-runs", "demo", CONFIG, STATS, stats_path,
        tags={"link.flow_run": "http://prefect/1"},
    )  # fmt: skip


def test_parent_run_logs_config_stats_and_artifacts(tracking_uri: str, study: StudyRun) -> None:
    client = MlflowClient(tracking_uri)
    run = client.get_run(study.run_id)
    assert run.info.experiment_id == study.experiment_id
    assert run.data.tags["mfstudy.study"] == "demo"
    assert run.data.params["data.source"] == "synthetic"
    assert run.data.params["search.factors"] == "[8, 16, 32]"
    assert len(run.data.params["search.note"]) == 6000  # clipped to MLflow's limit
    # The config once (not again from the statistics that embed it), the statistics as a
    # compact set of named metrics.
    assert set(run.data.params) == {"name", "data.source", "data.n_users", "search.factors",
                                    "search.note"}  # fmt: skip
    assert run.data.metrics == {
        "data.users": 50.0,
        "data.items": 30.0,
        "data.interactions": 180.0,
        "data.sparsity_pct": 88.0,
        "data.test_interactions": 20.0,
        "data.test_users": 10.0,
    }
    names = {a.path for a in client.list_artifacts(study.run_id)}
    assert {"config.yaml", "stats.json"} <= names
    local = client.download_artifacts(study.run_id, "stats.json")
    assert json.loads(Path(local).read_text()) == STATS


def test_experiment_kind_is_model_training_unless_chosen_otherwise(
    tracking_uri: str, study: StudyRun
) -> None:
    client = MlflowClient(tracking_uri)
    kind = "mlflow.experimentKind"
    # Created by mfstudy: tagged as model development (the UI's "Machine learning" kind).
    assert client.get_experiment(study.experiment_id).tags[kind] == "custom_model_development"
    # An experiment created elsewhere without a kind gets one ...
    bare = client.create_experiment("mfstudy-test-kind-bare")
    start_study(tracking_uri, "mfstudy-test-kind-bare", "bare", {}, {}, None)
    assert client.get_experiment(bare).tags[kind] == "custom_model_development"
    # ... and one whose kind a user chose keeps it.
    chosen = client.create_experiment("mfstudy-test-kind-chosen", tags={kind: "finetuning"})
    st = start_study(tracking_uri, "mfstudy-test-kind-chosen", "chosen", {}, {}, None)
    assert st.experiment_id == chosen
    assert client.get_experiment(chosen).tags[kind] == "finetuning"


def test_resume_reuses_the_parent_run(tracking_uri: str, study: StudyRun) -> None:
    client = MlflowClient(tracking_uri)
    assert client.get_run(study.run_id).data.tags["link.flow_run"] == "http://prefect/1"
    changed = {**CONFIG, "name": "demo-renamed", "extra": 1}
    # The links of the run that resumes it replace the first ones.
    again = start_study(
        tracking_uri, "mfstudy-test-runs", "demo", changed, STATS, None,
        tags={"link.flow_run": "http://prefect/2"},
    )  # fmt: skip
    assert again.resumed and not study.resumed
    assert (again.run_id, again.experiment_id) == (study.run_id, study.experiment_id)
    client = MlflowClient(tracking_uri)
    parents = client.search_runs(
        [study.experiment_id], filter_string="tags.`mfstudy.study` = 'demo'"
    )
    assert [r.info.run_id for r in parents] == [study.run_id]
    run = client.get_run(study.run_id)
    assert run.data.params["extra"] == "1"  # new key logged
    assert run.data.params["name"] == "demo"  # params are immutable: first value kept ...
    assert run.data.tags["mfstudy.config_changed"] == "name"  # ... and the change recorded
    assert run.data.tags["mfstudy.resumes"] == "1"
    assert run.data.tags["link.flow_run"] == "http://prefect/2"


def test_trials_are_nested_with_per_epoch_metrics_and_states(
    tracking_uri: str, study: StudyRun, tmp_path: Path
) -> None:
    outcomes = {0: "complete", 1: "pruned", 2: "failed"}
    epochs = {0: 7, 1: 3, 2: 2}
    ids = {}
    for n, state in outcomes.items():
        params = {"factors": 8 * (n + 1), "reg": 0.01, "nested": {"a": 1}}
        tr = TrialRun.start(
            tracking_uri,
            study.experiment_id,
            study.run_id,
            n,
            params,
            spool_dir=tmp_path,
            flush_every=3,
            # Trial 0 as a study opens it (the objective's metric named); the others without.
            metric="test_precision_at_k" if n == 0 else None,
        )
        # A trial run crosses process boundaries by value (ids and buffers, no client).
        tr = pickle.loads(pickle.dumps(tr))
        for epoch in range(1, epochs[n] + 1):
            tr.log_epoch(epoch, _curve(epoch, n))
        end = tr.end(
            state, best_epoch=epochs[n], best_value=0.5 + n, error="boom" if n == 2 else None
        )
        assert end.delivered and end.spool_file is None
        ids[n] = end.run_id
    assert list(tmp_path.iterdir()) == []

    client = MlflowClient(tracking_uri)
    status = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
    for n, state in outcomes.items():
        run = client.get_run(ids[n])
        assert run.info.run_name == f"trial-{n:04d}"
        assert run.data.tags["mlflow.parentRunId"] == study.run_id
        assert run.data.tags["mfstudy.trial_number"] == str(n)
        assert run.data.tags["mfstudy.state"] == state
        assert run.data.tags["mfstudy.pruned"] == str(state == "pruned").lower()
        assert run.data.tags["mfstudy.best_epoch"] == str(epochs[n])
        assert run.info.status == status[state]
        assert run.data.params["factors"] == str(8 * (n + 1))
        assert run.data.params["nested"] == '{"a": 1}'
        # The selected value and epoch as metrics (sortable), for pruned and failed runs too.
        best_key = "best_test_precision_at_k" if n == 0 else "best_value"
        assert run.data.metrics[best_key] == 0.5 + n
        assert run.data.metrics["best_epoch"] == epochs[n]
        other = ({"best_value", "best_test_precision_at_k"} - {best_key}).pop()
        assert other not in run.data.metrics
        for key in _curve(1, n):
            got = _history(client, ids[n], key)
            want = [(e, _curve(e, n)[key]) for e in range(1, epochs[n] + 1)]
            assert [s for s, _ in got] == [s for s, _ in want]
            assert [v for _, v in got] == pytest.approx([v for _, v in want])
    assert client.get_run(ids[2]).data.tags["mfstudy.error"] == "boom"

    # Summary artifacts on the parent: figures drawn from the histories read back.
    hist = read_trial_histories(tracking_uri, study.run_id, ["test_precision_at_k"])
    assert sorted(hist) == [0, 1, 2]
    assert [s for s, _ in hist[0]["test_precision_at_k"]] == list(range(1, 8))
    from matplotlib.figure import Figure

    extra = Figure()
    extra.subplots().plot([0, 1], [1, 0])
    trials = [
        {"number": n, "state": s, "value": 0.5 + n, "params": {"factors": 8 * (n + 1)}}
        for n, s in outcomes.items()
    ]
    logged = log_study_artifacts(
        tracking_uri,
        study.run_id,
        trials,
        {"optuna_history": extra},
        {
            "number": 0,
            "value": 0.5,
            "best_epoch": 7,
            "metric": "test_precision_at_k",
            "params": {"factors": 8},
        },
    )
    assert set(logged) == {
        "trials.csv",
        "best.json",
        "figures/learning_curve_best.png",
        "figures/trials_test_precision_at_k.png",
        "figures/optuna_history.png",
    }
    listed = {a.path for a in client.list_artifacts(study.run_id, "figures")}
    assert listed == {p for p in logged if p.startswith("figures/")}
    png = Path(client.download_artifacts(study.run_id, "figures/learning_curve_best.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = Path(client.download_artifacts(study.run_id, "trials.csv")).read_text().splitlines()
    assert csv[0].split(",") == ["number", "state", "value", "params.factors"]
    assert len(csv) == 4
    parent = client.get_run(study.run_id)
    assert parent.data.tags["mfstudy.best_trial"] == "0"
    # The study's best as the parent's metrics, named as on the trial runs.
    best = {k: v for k, v in parent.data.metrics.items() if k.startswith("best_")}
    assert best == {"best_trial": 0.0, "best_test_precision_at_k": 0.5, "best_epoch": 7.0}
    finish_study(tracking_uri, study.run_id, "complete")
    assert client.get_run(study.run_id).info.status == "FINISHED"


def test_unreachable_server_fails_fast_with_one_line(dead_uri: str) -> None:
    uri = dead_uri
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as info:
        check_reachable(uri)
    assert time.monotonic() - t0 < 20  # upper bound only, so a regression cannot hang
    msg = str(info.value)
    assert msg.startswith(f"MLflow tracking server at {uri} is unreachable: ")
    assert "\n" not in msg and "refused" in msg.lower()
    with pytest.raises(TrackingError, match="unreachable"):
        start_study(uri, "x", "x", {}, {}, None)


def test_outage_spools_and_replay_delivers(
    mlflow_server: Any,
    new_mlflow_server: Callable[..., Any],
    tracking_uri: str,
    tmp_path: Path,
) -> None:
    # A second, short-lived server on the same SQLite store plays the server that goes away;
    # the session server (same data) is where the spool is replayed.
    aux = new_mlflow_server(mlflow_server.root)
    spool = tmp_path / "spool"
    st = start_study(aux.uri, "mfstudy-test-outage", "outage", {"a": 1}, {}, None)

    tr = TrialRun.start(
        aux.uri, st.experiment_id, st.run_id, 0, {"p": 1}, spool_dir=spool, flush_every=2,
        metric="test_mse",
    )  # fmt: skip
    for epoch in (1, 2):  # flushed at epoch 2
        tr.log_epoch(epoch, _curve(epoch, 0))
    aux.stop()
    for epoch in (3, 4):  # the flush at epoch 4 fails: buffer kept, trial goes on
        tr.log_epoch(epoch, _curve(epoch, 0))
    assert tr.last_error is not None
    assert not tr.flush()
    aux.start()  # back (same store, same port): the next flush sends what was kept
    tr.log_epoch(5, _curve(5, 0))
    assert tr.flush() and tr.last_error is None
    aux.stop()  # and gone again for the rest of the trial
    tr.log_epoch(6, _curve(6, 0))

    # A trial that starts while the server is down still runs; its run is created later.
    late = TrialRun.start(
        aux.uri, st.experiment_id, st.run_id, 1, {"p": 2}, spool_dir=spool, metric="test_mse"
    )
    assert late.run_id is None
    for epoch in (1, 2, 3):
        late.log_epoch(epoch, _curve(epoch, 1))

    first = tr.end("pruned", best_epoch=3, best_value=0.2)
    second = late.end("complete", best_epoch=3, best_value=0.3)
    assert not first.delivered and not second.delivered
    assert first.spool_file is not None and second.spool_file is not None
    assert sorted(spool.iterdir()) == sorted([first.spool_file, second.spool_file])

    report = replay_spool(tracking_uri, spool)
    assert report.failed == {}
    assert sorted(report.sent) == sorted([first.spool_file, second.spool_file])
    assert list(spool.iterdir()) == []
    assert replay_spool(tracking_uri, spool).sent == []  # idempotent: nothing left

    client = MlflowClient(tracking_uri)
    run0 = client.get_run(first.run_id)
    assert run0.info.status == "KILLED" and run0.data.tags["mfstudy.pruned"] == "true"
    got0 = _history(client, first.run_id, "test_precision_at_k")
    # Sent before the outage, after the restart, and from the spool: each epoch exactly once.
    assert [s for s, _ in got0] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in got0] == pytest.approx(
        [_curve(e, 0)["test_precision_at_k"] for e in range(1, 7)]
    )
    # The selected value came from the spool too, exactly once.
    assert _history(client, first.run_id, "best_test_mse") == [(0, 0.2)]
    assert run0.data.metrics["best_epoch"] == 3
    children = client.search_runs(
        [st.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{st.run_id}'"
    )
    by_number = {r.data.tags["mfstudy.trial_number"]: r for r in children}
    assert sorted(by_number) == ["0", "1"]
    run1 = by_number["1"]
    assert run1.info.status == "FINISHED" and run1.info.run_name == "trial-0001"
    assert run1.data.params["p"] == "2"
    assert (run1.data.metrics["best_test_mse"], run1.data.metrics["best_epoch"]) == (0.3, 3)
    got1 = _history(client, run1.info.run_id, "test_mse")
    assert [s for s, _ in got1] == [1, 2, 3]
    assert [v for _, v in got1] == pytest.approx([_curve(e, 1)["test_mse"] for e in (1, 2, 3)])


def test_replay_keeps_spool_while_server_is_down(dead_uri: str, tmp_path: Path) -> None:
    uri = dead_uri
    tr = TrialRun.start(uri, "0", "parent", 3, {}, spool_dir=tmp_path)
    tr.log_epoch(1, {"m": 1.0})
    end = tr.end("failed", error="diverged")
    assert end.spool_file is not None and end.spool_file.exists()
    report = replay_spool(uri, tmp_path)
    assert report.sent == [] and list(report.failed) == [end.spool_file]
    assert end.spool_file.exists()
    record = json.loads(end.spool_file.read_text())
    assert record["end_status"] == "FAILED" and record["metrics"][0][:2] == ["m", 1.0]


@pytest.fixture
def posts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The REST endpoints the trial's transport calls, in order (each call still goes out)."""
    from mfstudy.tracking._transport import Transport

    seen: list[str] = []
    real = Transport._post

    def spy(self: Transport, endpoint: str, message: Any, method: str = "POST") -> Any:
        seen.append(endpoint)
        return real(self, endpoint, message, method)

    monkeypatch.setattr(Transport, "_post", spy)
    return seen


def test_short_trial_costs_three_requests(
    tracking_uri: str, study: StudyRun, posts: list[str], tmp_path: Path
) -> None:
    from mfstudy.tracking import MlflowTrialLogs

    # Opened as a study opens trial runs: created at the first flush (time-based) or the end.
    logs = MlflowTrialLogs(
        tracking_uri, study.experiment_id, study.run_id, tmp_path, 600.0, metric="test_mse",
        tags=(("link.task_run", "http://prefect/t/40"),),
    )  # fmt: skip
    logs = pickle.loads(pickle.dumps(logs))  # as it reaches the worker processes
    tr = logs(40, {"factors": 8, "reg": 0.1})
    for epoch in range(1, 20):
        tr.log_epoch(epoch, _curve(epoch, 40))
    assert tr.run_id is None and posts == []  # nothing sent while the trial trains
    end = tr.end("complete", best_epoch=19, best_value=0.5)
    assert end.delivered
    assert posts == ["runs/create", "runs/log-batch", "runs/update"]

    run = MlflowClient(tracking_uri).get_run(end.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-0040"
    assert run.data.params == {"factors": "8", "reg": "0.1"}
    assert run.data.tags["mfstudy.best_epoch"] == "19"
    assert (run.data.metrics["best_test_mse"], run.data.metrics["best_epoch"]) == (0.5, 19)
    assert run.data.tags["link.task_run"] == "http://prefect/t/40"  # in the same 3 requests
    assert run.data.tags["mlflow.parentRunId"] == study.run_id
    got = _history(MlflowClient(tracking_uri), end.run_id, "test_precision_at_k")
    assert [s for s, _ in got] == list(range(1, 20))


def test_long_trial_is_created_and_flushed_by_time(
    tracking_uri: str, study: StudyRun, posts: list[str]
) -> None:
    now = [0.0]  # a fake monotonic clock, set by hand: no sleep racing the 0.2 s window
    tr = TrialRun.start(
        tracking_uri,
        study.experiment_id,
        study.run_id,
        41,
        {"factors": 8},
        flush_every=None,
        flush_seconds=0.2,
        create_now=False,
        clock=lambda: now[0],
    )
    tr.log_epoch(1, _curve(1, 41))
    now[0] = 0.1
    tr.log_epoch(2, _curve(2, 41))  # still within flush_seconds: buffered
    assert tr.run_id is None and posts == []
    now[0] = 0.2
    tr.log_epoch(3, _curve(3, 41))  # flush_seconds reached: the run appears with epochs 1-3
    assert tr.run_id is not None
    assert posts == ["runs/create", "runs/log-batch"]
    client = MlflowClient(tracking_uri)
    assert client.get_run(tr.run_id).info.status == "RUNNING"
    assert [s for s, _ in _history(client, tr.run_id, "test_precision_at_k")] == [1, 2, 3]
    now[0] = 0.35
    tr.log_epoch(4, _curve(4, 41))  # within flush_seconds of the last flush: buffered
    assert len(posts) == 2
    assert tr.end("pruned", best_epoch=3, best_value=0.1).delivered
    assert posts[2:] == ["runs/log-batch", "runs/update"]
    assert [s for s, _ in _history(client, tr.run_id, "test_precision_at_k")] == [1, 2, 3, 4]


def test_large_trial_record_is_split_at_the_server_limits_and_sent_once(
    tracking_uri: str, study: StudyRun, posts: list[str]
) -> None:
    # 150 params and 1500 metric values: more than one batch may carry (100 params, 1000
    # entities); every value must still arrive exactly once.
    params = {f"p{i:03d}": i for i in range(150)}
    tr = TrialRun.start(
        tracking_uri, study.experiment_id, study.run_id, 42, params, flush_every=None,
        create_now=False,
    )  # fmt: skip
    for epoch in range(1, 1501):
        tr.log_epoch(epoch, {"test_precision_at_k": epoch / 1500})
    assert tr.end("complete", best_epoch=1500, best_value=1.0).delivered
    assert posts == ["runs/create", "runs/log-batch", "runs/log-batch", "runs/update"]
    client = MlflowClient(tracking_uri)
    run = client.get_run(tr.run_id)
    assert run.data.params == {k: str(v) for k, v in params.items()}
    got = _history(client, tr.run_id, "test_precision_at_k")
    assert [s for s, _ in got] == list(range(1, 1501))
