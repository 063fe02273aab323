"""The deployments end to end: a real Prefect server and process worker on 127.0.0.1,
`prefect deploy --all` from (a test copy of) the repository's prefect.yaml, runs watched to
completion, and what they leave in a real MLflow server and in Prefect."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from servers import stop_group

from helpers import REPO

N_TRIALS = 4
SPACE = {
    "wrmf": {
        "factors": {"type": "int", "low": 2, "high": 24, "log": True},
        "regularization": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
        "iterations": 5,
    }
}


def _write_config(tmp_path: Path, uri: str) -> Path:
    cfg = {
        "name": "it-deploy",
        "data": {"source": "synthetic", "n_users": 400, "n_items": 200, "n_interactions": 12000},
        "workdir": str(tmp_path / "runs"),
        "search_space": SPACE,
        "study": {"n_trials": N_TRIALS, "workers": 2, "pruner": {"kind": "none"}},
        "tracking": {"uri": uri},
    }
    path = tmp_path / "it-deploy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _test_prefect_yaml(tmp_path: Path, config: Path, pool: str) -> Path:
    """The repository's prefect.yaml with its quickstart study and nightly deployments only,
    renamed, pointed at the test config and the test's work pool; pull step and schedule as
    shipped."""
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in doc["deployments"]}
    study, nightly = by_name["quickstart"], by_name["lastfm-2k-nightly"]
    for dep, name in ((study, "it-study"), (nightly, "it-nightly")):
        dep["name"] = name
        dep["parameters"] = {**dep["parameters"], "config": str(config)}
        dep["work_pool"] = {**dep["work_pool"], "name": pool}
    doc["deployments"] = [study, nightly]
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _client():  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _task_runs(client, deployment_name: str) -> list:  # type: ignore[no-untyped-def]
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    dep = client.read_deployment_by_name(deployment_name)
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
        sort=FlowRunSort.START_TIME_DESC,
        limit=10,
    )
    # The nightly's scheduler-made runs wait for 03:00; only the run started by hand has run.
    upcoming = [r for r in runs if r.state.is_scheduled()]
    assert all(r.auto_scheduled for r in upcoming), upcoming
    runs = [r for r in runs if not r.state.is_scheduled()]
    assert len(runs) == 1 and runs[0].state.is_completed(), runs
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])),
        sort=TaskRunSort.EXPECTED_START_TIME_DESC,
        limit=200,
    )


def test_deploy_and_run_the_study_and_the_nightly_retraining(
    tmp_path: Path, tracking_uri: str, prefect_server: Any
) -> None:
    config = _write_config(tmp_path, tracking_uri)
    pool = "it-process-pool"
    prefect_file = _test_prefect_yaml(tmp_path, config, pool)
    before = set(p.name for p in REPO.iterdir())

    res = prefect_server.run("work-pool", "create", pool, "--type", "process", cwd=tmp_path)
    assert res.returncode == 0, res.stdout
    worker = prefect_server.spawn(
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--limit",
        "1",
        log=tmp_path / "worker.log",
        cwd=tmp_path,
    )
    try:
        # From the repository root, as the README says: entrypoints and the pull step's
        # `{{ $PWD }}` resolve there.
        # `--all`, as the README says. With FastAPI >= 0.151 under Prefect 3.8.8 this fails
        # after the first deployment (the CLI posts limit=null, rejected with 422): the pin
        # in pyproject.toml is what this line proves.
        res = prefect_server.run(
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(prefect_file),
            cwd=REPO,
            env={"PWD": str(REPO)},
            timeout=240,
        )
        assert res.returncode == 0, res.stdout
        assert res.stdout.count("successfully created") == 2, res.stdout
        res = prefect_server.run(
            "deployment",
            "run",
            "mf-study/it-study",
            "--param",
            f"n_trials={N_TRIALS}",
            "--watch",
            "--watch-timeout",
            "400",
            cwd=tmp_path,
            timeout=450,
        )
        log = (tmp_path / "worker.log").read_text()
        assert res.returncode == 0, res.stdout + log
        assert "Completed" in res.stdout, res.stdout + log

        res = prefect_server.run(
            "deployment",
            "run",
            "mf-retrain/it-nightly",
            "--watch",
            "--watch-timeout",
            "400",
            cwd=tmp_path,
            timeout=450,
        )
        assert res.returncode == 0, res.stdout + (tmp_path / "worker.log").read_text()
    finally:
        stop_group(worker)
    assert set(p.name for p in REPO.iterdir()) == before, "deploying wrote into the repo"

    # MLflow: the study's parent run with one nested run per trial, a registered champion,
    # and the retraining's run and version.
    ml = MlflowClient(tracking_uri)
    exp = ml.get_experiment_by_name("it-deploy")
    runs = ml.search_runs([exp.experiment_id], max_results=100)
    roles = [r.data.tags.get("mfstudy.role") for r in runs]
    parent = next(r for r in runs if r.data.tags.get("mfstudy.role") == "study")
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == N_TRIALS and parent.info.status == "FINISHED"
    assert roles.count("retrain") == 1
    champion = ml.get_model_version_by_alias("it-deploy", "champion")
    versions = ml.search_model_versions("name='it-deploy'")
    # Same data both times: the nightly sees the champion's data fingerprint and registers
    # nothing ("unchanged"); its retrain run says so.
    assert len(versions) == 1 and champion.version == "1"
    (retrain_run,) = [r for r in runs if r.data.tags.get("mfstudy.role") == "retrain"]
    assert retrain_run.data.tags["mfstudy.retrain.decision"] == "unchanged"

    with _client() as client:
        nightly = client.read_deployment_by_name("mf-retrain/it-nightly")
        (sched,) = nightly.schedules
        assert sched.schedule.cron == "0 3 * * *" and sched.schedule.timezone == "UTC"
        assert sched.active
        assert client.read_deployment_by_name("mf-study/it-study").schedules == []

        study_tasks = _task_runs(client, "mf-study/it-study")
        trials = [t for t in study_tasks if t.name.startswith("trial-")]
        assert sum(t.state.is_completed() for t in trials) >= N_TRIALS
        # The nightly run re-ingested unchanged data: its preparation came from the cache.
        nightly_tasks = _task_runs(client, "mf-retrain/it-nightly")
        cached = {t.name.rsplit("-", 1)[0] for t in nightly_tasks if t.state.name == "Cached"}
        assert {"ingest", "threshold", "split"} <= cached

    # Artifacts through the REST API, as any dashboard or script would read them.
    body = {
        "artifacts": {"key": {"any_": ["study-it-deploy", "retrain-it-deploy"]}},
        "sort": "CREATED_DESC",
        "limit": 50,
        "offset": 0,
    }
    req = urllib.request.Request(
        f"{prefect_server.api_url}/artifacts/filter",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        arts = json.loads(r.read())
    by_key = {a["key"]: a["data"] for a in arts}
    assert "## Trials" in by_key["study-it-deploy"]
    assert "Best trial" in by_key["study-it-deploy"]
    assert "**unchanged**: champion kept" in by_key["retrain-it-deploy"]
