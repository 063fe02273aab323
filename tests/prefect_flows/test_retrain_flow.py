"""The nightly `mf-retrain` flow on a real Prefect server and a real MLflow server, with a
feed that shrinks, stays the same and grows: what each run ends as, what it registers, and
what its artifact and task runs say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from helpers import grown_feed
from mfstudy.config import load_config
from mfstudy.study import run_study

NAME = "flow-gate"
SPACE = (
    "search_space={wrmf: {factors: 16, regularization: 1.0, "
    "alpha: {type: float, low: 5, high: 20}, iterations: 8}}"
)


def _overrides(path: Path, tmp_path: Path, uri: str) -> list[str]:
    return [
        f"name={NAME}",
        f"workdir={tmp_path / 'runs'}",
        f"tracking.uri={uri}",
        f"data={{source: table, path: {path}}}",
        "threshold.min_items_per_user=5",
        "threshold.min_users_per_item=5",
        "study.n_trials=1",
        "study.threads_per_worker=2",
        "study.pruner.kind=none",
        SPACE,
    ]


def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _task_runs(client: Any, flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )


def _artifact(client: Any, flow_run_id: Any) -> str:
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    (art,) = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"retrain-{NAME}"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
        )
    )
    return str(art.data)


def test_nightly_flow_fails_on_a_shrunken_feed_skips_an_unchanged_one_gates_growth(
    tmp_path: Path, tracking_uri: str, prefect_server: Any
) -> None:
    from flows.retrain import retrain_flow

    base, grown = grown_feed(500, 250, 24_000, seed=9)
    path = tmp_path / "feed.csv"
    base.to_csv(path, index=False)
    overrides = _overrides(path, tmp_path, tracking_uri)
    assert run_study(load_config(None, overrides)).promoted
    ml = MlflowClient(tracking_uri)
    champion = ml.get_model_version_by_alias(NAME, "champion").version

    def versions() -> int:
        return len(ml.search_model_versions(f"name='{NAME}'"))

    # 1. The feed cut to its first half: Failed with the gate's one line, one attempt.
    base.iloc[: len(base) // 2].to_csv(path, index=False)
    state = retrain_flow(overrides=overrides, return_state=True)
    assert state.is_failed(), state
    line = state.message
    assert line.startswith("retrain gate: ") and "\n" not in line, line
    assert "more than retrain.max_shrink 5%" in line
    assert line.endswith(f"champion v{champion} kept, nothing registered"), line
    assert versions() == 1
    with _client() as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.state.is_failed() and run.state.message == line
        (task,) = [t for t in _task_runs(client, run.id) if t.name.startswith("retrain-champ")]
        assert task.state.is_failed() and task.run_count == 1, "a data error is not retried"
        report = _artifact(client, run.id)
    assert "**gate failed**" in report and "| users |" in report

    # 2. The champion's own data again: Completed, "unchanged", nothing registered.
    base.to_csv(path, index=False)
    state = retrain_flow(overrides=overrides, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["decision"] == "unchanged" and result["new_version"] is None
    assert versions() == 1
    with _client() as client:
        report = _artifact(client, state.state_details.flow_run_id)
    assert "**unchanged**: champion kept" in report

    # 3. Grown: retrained and gated, with intervals on the version, the run and the artifact.
    grown.to_csv(path, index=False)
    state = retrain_flow(overrides=overrides, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["decision"] in ("promoted", "kept") and versions() == 2
    version = ml.get_model_version(NAME, result["new_version"])
    tags = version.tags
    assert tags["mfstudy.retrain.decision"] == result["decision"]
    low, high = (float(tags[f"mfstudy.retrain.difference_{s}"]) for s in ("low", "high"))
    assert low <= float(tags["mfstudy.retrain.difference"]) <= high
    assert 0.0 <= float(tags["mfstudy.retrain.p_value"]) <= 1.0
    assert int(tags["mfstudy.data.users"]) > int(
        ml.get_model_version(NAME, champion).tags["mfstudy.data.users"]
    )
    run = ml.get_run(result["run_id"])
    assert run.data.metrics["compare.difference_low"] == low
    assert run.data.metrics["data.users_added"] > 0
    with _client() as client:
        report = _artifact(client, state.state_details.flow_run_id)
    assert f"**{result['decision']}**" in report
    assert "95% interval" in report and "Paired bootstrap over the same" in report
    assert "added" in report
    print(line)
    print(report)


def test_retraining_retries_only_tracking_failures_before_registering() -> None:
    import pickle

    from prefect.states import Failed

    from mfstudy.errors import RetrainGateError
    from mfstudy.retrain import REGISTERING
    from mfstudy.tracking import HoldoutMismatchError, TrackingError
    from tasks.study import _transient_failure

    def retried(exc: BaseException) -> bool:
        return _transient_failure(None, None, Failed(data=exc))

    assert retried(TrackingError("tracking server at http://x unreachable"))
    gate = RetrainGateError("retrain gate: users 10 -> 5", report="# report")
    assert not retried(gate)
    assert not retried(HoldoutMismatchError("different holdouts"))
    assert not retried(ValueError("a bug"))
    late = TrackingError("lost reply while registering")
    setattr(late, REGISTERING, True)
    assert not retried(late), "a retry could register a second version"
    again = pickle.loads(pickle.dumps(gate))
    assert str(again) == str(gate) and again.report == "# report"
