"""The nightly schedule: validated in the study config, deployed by `python -m flows.deploy`
against a real Prefect server, the same as `prefect.yaml`'s for the shipped nightly, and fired:
the server's scheduler creates the run and a real process worker completes it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prefect.schedules import Cron
from servers import stop_group

from helpers import REPO
from mfstudy.config import StudyConfig, check_cron, load_config

VALID = ["0 3 * * *", "*/15 * * * *", "0 3 * * mon-fri", "5,35 1-5/2 1 JAN,jul 0",
         "0 0 1 */3 *", "@daily", "@hourly", "0 3 * * 7", "59 23 31 12 6"]  # fmt: skip
INVALID = ["61 3 * * *", "0 24 * * *", "0 3 * *", "0 3 * * * *", "0 3 0 * *", "0 3 * 13 *",
           "*/0 * * * *", "0 3 * * 8", "5-1 * * * *", "a b c d e", "@sometimes", "",
           "0 3 * * monday", "H 3 * * *"]  # fmt: skip


@pytest.mark.parametrize("expr", VALID)
def test_valid_cron_is_valid_for_prefect_too(expr: str) -> None:
    assert check_cron(expr) == expr
    assert Cron(expr).cron == expr  # the schedule flows/deploy.py builds; raises if invalid


@pytest.mark.parametrize("expr", INVALID)
def test_invalid_cron_is_a_one_line_config_error(expr: str) -> None:
    with pytest.raises(Exception) as err:
        load_config(None, [f"retrain.schedule.cron={expr}"])
    msg = str(err.value)
    assert "\n" not in msg and "retrain.schedule.cron" in msg


_FIELD = st.one_of(
    st.just("*"),
    st.integers(0, 70).map(str),
    st.tuples(st.integers(0, 70), st.integers(0, 70)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.tuples(st.sampled_from(["*", "1-9", "7"]), st.integers(0, 9)).map(
        lambda t: f"{t[0]}/{t[1]}"
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_FIELD, min_size=5, max_size=5).map(" ".join))
def test_whatever_passes_our_check_prefect_schedules(expr: str) -> None:
    # Ours is the stricter of the two: a config that validates never fails at deploy time.
    try:
        check_cron(expr)
    except ValueError:
        return
    Cron(expr)  # the schedule flows/deploy.py builds; raises if Prefect refuses the expression


def test_shipped_nightly_matches_its_config() -> None:
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (nightly,) = [d for d in doc["deployments"] if d["name"] == "lastfm-2k-nightly"]
    cfg = load_config(REPO / nightly["parameters"]["config"], [])
    (sched,) = nightly["schedules"]
    assert (sched["cron"], sched["timezone"], sched["active"]) == (
        cfg.retrain.schedule.cron,
        cfg.retrain.schedule.timezone,
        cfg.retrain.schedule.active,
    )
    assert StudyConfig().retrain.schedule.cron == "0 3 * * *"


def _deploy(server: Any, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.deploy", *args],
        cwd=REPO,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_flows_deploy_uses_the_config_schedule(tmp_path: Path, prefect_server: Any) -> None:
    pool = "it-schedule-pool"
    res = prefect_server.run("work-pool", "create", pool, "--type", "process", cwd=tmp_path)
    assert res.returncode == 0, res.stdout
    config = tmp_path / "berlin.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "it-berlin",
                "workdir": str(tmp_path / "runs"),
                "retrain": {"schedule": {"cron": "30 2 * * mon-fri", "timezone": "Europe/Berlin"}},
            }
        )
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"name": "it-bad", "retrain": {"schedule": {"cron": "0 25 * * *"}}})
    )
    before = {p.name for p in REPO.iterdir()}

    res = _deploy(prefect_server, str(bad), "--pool", pool, cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "retrain.schedule.cron" in lines[0] and "hour" in lines[0], (
        res.stderr
    )

    res = _deploy(prefect_server, str(config), "--pool", pool, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "deployed mf-retrain/it-berlin-nightly (cron '30 2 * * mon-fri' Europe/Berlin)" in (
        res.stdout
    )
    assert {p.name for p in REPO.iterdir()} == before, "deploying wrote into the repo"

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("mf-retrain/it-berlin-nightly")
        (sched,) = nightly.schedules
        assert sched.schedule.cron == "30 2 * * mon-fri"
        assert sched.schedule.timezone == "Europe/Berlin" and sched.active
        assert nightly.parameters == {"config": str(config.resolve())}
        assert nightly.work_pool_name == pool
        assert nightly.job_variables["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "mfstudy"
        study = client.read_deployment_by_name("mf-study/it-berlin")
        assert study.schedules == [] and study.entrypoint == "flows/study.py:study_flow"
        names = {d.name for d in client.read_deployments()}
        assert "it-bad-nightly" not in names and "it-bad" not in names


# The schedule fires: deployed the way users deploy, the server's own scheduler service creates
# the run (Prefect 3.8.8 with SQLAlchemy 2.1 shows the schedule but never creates a run) and a
# real process worker executes it, like a user's nightly.

FIRE_POOL = "it-fire-pool"
# The scheduler's loops are docket tasks: a failing loop is logged as an ERROR line naming the
# task, then the traceback (with SQLAlchemy 2.1: "Can't evaluate bulk DML statement"); a
# deployment whose runs cannot be generated is logged by the service itself.
SCHEDULER_TASKS = ("schedule_deployments", "schedule_recent_deployments", "services.scheduler")
SCHEDULER_MESSAGES = ("Can't evaluate bulk DML", "Error scheduling deployment")

T = TypeVar("T")


def _firing_config(tmp_path: Path) -> Path:
    """A tiny study whose nightly is due every minute; everything it writes is in tmp_path."""
    cfg = {
        "name": "it-fire",
        # The embedded synthetic default, shrunk as in the other flow tests.
        "data": {"source": "synthetic", "n_users": 300, "n_items": 150, "n_interactions": 8000},
        "workdir": str(tmp_path / "runs"),
        "tracking": {"uri": f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"},
        "search_space": {
            "wrmf": {
                "factors": {"type": "int", "low": 2, "high": 8},
                "regularization": 0.1,
                "iterations": 3,
            }
        },
        "study": {"workers": 1, "threads_per_worker": 1, "pruner": {"kind": "none"}},
        # No champion yet: the nightly runs a one-trial study instead (see flows/retrain.py).
        "retrain": {"fallback_trials": 1, "schedule": {"cron": "* * * * *", "timezone": "UTC"}},
    }
    path = tmp_path / "it-fire.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _is_scheduler_error(line: str) -> bool:
    if any(m in line for m in SCHEDULER_MESSAGES):
        return True
    return "ERROR" in line and any(t in line for t in SCHEDULER_TASKS)


class _Logs:
    """The server's log from this test's start on (the server is the session's) and the
    worker's: scanned for scheduler errors while polling, quoted in every failure."""

    def __init__(self, server_log: Path, worker_log: Path) -> None:
        self.server_log, self.worker_log = server_log, worker_log
        self.offset = server_log.stat().st_size if server_log.exists() else 0

    @staticmethod
    def _read(path: Path, offset: int = 0) -> str:
        if not path.exists():
            return ""
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def server(self) -> str:
        return self._read(self.server_log, self.offset)

    def scheduler_errors(self) -> list[str]:
        return [ln for ln in self.server().splitlines() if _is_scheduler_error(ln)]

    def report(self, lines: int = 60) -> str:
        server = "\n".join(self.server().splitlines()[-lines:])
        worker = "\n".join(self._read(self.worker_log).splitlines()[-lines:])
        return (
            f"\n--- server log ({self.server_log}), last {lines} lines ---\n{server}"
            f"\n--- worker log ({self.worker_log}), last {lines} lines ---\n{worker}"
        )


def _wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    logs: _Logs,
    worker: subprocess.Popen[bytes],
) -> T:
    """Poll `probe` until it returns something; fail at once, with both logs, when the
    scheduler logs an error or the worker dies, else when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        errors = logs.scheduler_errors()
        assert not errors, f"the scheduler failed, waiting for {what}: {errors[0]}" + logs.report()
        code = worker.poll()
        assert code is None, f"the worker exited ({code}), waiting for {what}" + logs.report()
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s" + logs.report()
        time.sleep(1)


def test_the_scheduler_fires_the_nightly_and_a_worker_completes_it(
    tmp_path: Path, prefect_server: Any
) -> None:
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterDeploymentId,
    )
    from prefect.client.schemas.objects import FlowRun, StateType
    from prefect.client.schemas.sorting import FlowRunSort

    config = _firing_config(tmp_path)
    cfg = load_config(config, [])
    logs = _Logs(prefect_server.home / "server.log", tmp_path / "worker.log")
    before = {p.name for p in REPO.iterdir()}
    res = prefect_server.run("work-pool", "create", FIRE_POOL, "--type", "process", cwd=tmp_path)
    assert res.returncode == 0, res.stdout
    # `--limit 1`: the worker never starts a second run of the schedule next to the first.
    worker = prefect_server.spawn(
        *("worker", "start", "--pool", FIRE_POOL, "--type", "process", "--limit", "1"),
        log=logs.worker_log,
        cwd=tmp_path,
    )
    nightly_id = None
    with get_client(sync_client=True) as client:
        try:
            res = _deploy(prefect_server, str(config), "--pool", FIRE_POOL, cwd=tmp_path)
            assert res.returncode == 0, res.stdout + res.stderr + logs.report()
            nightly = client.read_deployment_by_name("mf-retrain/it-fire-nightly")
            nightly_id = nightly.id
            # The schedule is the config's, as deployed by `python -m flows.deploy`.
            (schedule,) = nightly.schedules
            sched = cfg.retrain.schedule
            assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
                sched.cron,
                sched.timezone,
                sched.active,
            )

            def runs() -> list[FlowRun]:
                return client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        deployment_id=FlowRunFilterDeploymentId(any_=[nightly.id])
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=200,
                )

            # 1. The server's scheduler creates the runs ahead of time: seconds after the
            # deployment (its recently-updated-deployments loop runs every 5 s).
            scheduled = _wait_for("scheduled run", lambda: runs() or None, 90, logs, worker)
            for run in scheduled:
                assert run.auto_scheduled and run.state_type == StateType.SCHEDULED, run
                assert run.created_by is not None, run
                assert (run.created_by.type, run.created_by.id) == ("SCHEDULE", schedule.id)
                # What a user's nightly gets: the config's absolute path, the pool's worker.
                assert run.parameters == {"config": str(config.resolve())}, run.parameters
                assert run.work_pool_name == FIRE_POOL, run
            first = scheduled[0]
            assert first.expected_start_time is not None
            due_in = (first.expected_start_time - datetime.now(timezone.utc)).total_seconds()
            # The next minute (not some later time), give or take a slow poll.
            assert -30 < due_in <= 65, f"first run due in {due_in:.0f}s: {first}"

            # 2. The worker picks it up when it is due. Then the schedule is paused, which
            # deletes the runs still scheduled, so none piles up behind this one.
            def picked_up() -> FlowRun | None:
                run = client.read_flow_run(first.id)
                return run if run.state_type != StateType.SCHEDULED else None

            _wait_for("pick-up by the worker", picked_up, max(due_in, 0) + 90, logs, worker)
            client.pause_deployment(nightly.id)

            # 3. The worker runs it to the end: the retraining, here its fallback study.
            def finished() -> FlowRun | None:
                run = client.read_flow_run(first.id)
                return run if run.state is not None and run.state.is_final() else None

            done = _wait_for("end of the scheduled run", finished, 300, logs, worker)
            assert done.state is not None and done.state.is_completed(), (
                f"{done.state}" + logs.report()
            )
            states = [s.name for s in client.read_flow_run_states(first.id)]
            assert states[0] == "Scheduled" and "Running" in states, states

            # Exactly this run ran, and nothing is left scheduled.
            assert client.read_deployment(nightly.id).paused
            assert [r.id for r in runs()] == [first.id], runs()

            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[first.id]))
            )
            assert any(
                a.key == "retrain-it-fire" and "ran a study of 1 trials" in str(a.data)
                for a in artifacts
            ), artifacts
        finally:
            if nightly_id is not None:
                client.pause_deployment(nightly_id)  # idempotent; stops the session's scheduler
            stop_group(worker)

    # The run tracked where the config says: the fallback study registered the champion.
    champion = MlflowClient(cfg.tracking.uri).get_model_version_by_alias("it-fire", "champion")
    assert str(champion.version) == "1"
    errors = logs.scheduler_errors()
    assert not errors, "the scheduler logged errors:\n" + "\n".join(errors) + logs.report()
    assert {p.name for p in REPO.iterdir()} == before, "the scheduled run wrote into the repo"
