"""Trial workers of the `mf-study` flow dying or being stopped, with a real Prefect server,
real worker processes, the real Optuna journal and a real MLflow server."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from helpers import journal_study, tiny_data

NAME = "it-worker-dies"


def _overrides(workdir: Path, uri: str, name: str) -> list[str]:
    # Long trials (evaluated every 10 of 200 epochs), so a worker is still mid-trial when it
    # is killed or stopped.
    return [
        f"tracking.uri={uri}",
        f"name={name}",
        *tiny_data(400, 200, 12_000, pruner="none", threads_per_worker=1),
        f"workdir={workdir}",
        "study.eval_every=10",
        "search_space={wrmf: {factors: {type: int, low: 8, high: 32}, "
        "regularization: {type: float, low: 0.01, high: 10, log: true}, iterations: 200}}",
    ]


def _trials(journal: Path, name: str) -> list[FrozenTrial]:
    if not journal.exists():
        return []
    try:
        return journal_study(journal, name).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def _poll(what: str, cond: Callable[[], bool], alive: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if not alive():
            raise AssertionError(f"the flow ended before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _two_running_one_reported(journal: Path, name: str, out: list[FrozenTrial]) -> bool:
    out[:] = [t for t in _trials(journal, name) if t.state == TrialState.RUNNING]
    return len(out) == 2 and any(t.intermediate_values for t in out)


def _pid(trial: FrozenTrial) -> int:
    return int(trial.user_attrs["mfstudy.worker"].split(":")[1])


def _trial_runs(uri: str, experiment: str) -> dict[int, Any]:
    ml = MlflowClient(uri)
    exp = ml.get_experiment_by_name(experiment)
    runs = ml.search_runs([exp.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("mfstudy.role") == "trial"]
    numbers = [int(r.data.tags["mfstudy.trial_number"]) for r in trials]
    assert len(set(numbers)) == len(numbers), "a trial with two runs"
    return dict(zip(numbers, trials, strict=True))


def _task_runs(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )


def test_flow_trial_worker_killed_mid_trial_costs_only_its_trial(
    tmp_path: Path, prefect_server: Any, tracking_uri: str
) -> None:
    from flows.study import study_flow

    workdir = tmp_path / "runs"
    journal = workdir / NAME / "optuna.journal"
    running: list[FrozenTrial] = []
    killed: dict[str, Any] = {}
    flow_done = threading.Event()

    def killer() -> None:
        try:
            _poll(
                "two running trials, one with an epoch reported",
                lambda: _two_running_one_reported(journal, NAME, running),
                lambda: not flow_done.is_set(),
                timeout=300,
            )
            victim = next(t for t in running if t.intermediate_values)
            killed["victim"] = victim
            killed["other"] = next(t for t in running if t is not victim)
            os.kill(_pid(victim), signal.SIGKILL)
        except BaseException as exc:  # reported by the test thread
            killed["error"] = exc

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        state = study_flow(
            n_trials=4,
            workers=2,
            overrides=_overrides(workdir, tracking_uri, NAME),
            return_state=True,
        )
    finally:
        flow_done.set()
        thread.join(timeout=60)
    assert "error" not in killed, killed.get("error")
    assert state.is_completed(), state
    victim, other = killed["victim"], killed["other"]
    assert _pid(victim) != os.getpid()

    after = _trials(journal, NAME)
    by_number = {t.number: t for t in after}
    assert len([t for t in after if t.state == TrialState.COMPLETE]) == 4
    failed = [t for t in after if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [victim.number]
    assert failed[0].user_attrs["mfstudy.crashed"] is True
    assert failed[0].user_attrs["error"] == "worker process died (signal 9)"
    assert by_number[other.number].state == TrialState.COMPLETE
    assert len({_pid(t) for t in after}) == 3  # a new process replaced the dead one

    runs = _trial_runs(tracking_uri, NAME)
    assert sorted(runs) == sorted(by_number)
    assert runs[victim.number].info.status == "FAILED"
    assert runs[victim.number].data.tags["mfstudy.error"] == "worker process died (signal 9)"
    assert all(runs[n].info.status == "FINISHED" for n in by_number if n != victim.number)

    # One task run per trial, named by its number: the dead worker's ended Failed with the
    # trial's one line (no traceback), every other one Completed.
    tasks = _task_runs(state.state_details.flow_run_id)
    trial_tasks = {t.name: t for t in tasks if t.name.startswith("trial-")}
    assert sorted(trial_tasks) == sorted(f"trial-{n}" for n in by_number)
    dead = trial_tasks.pop(f"trial-{victim.number}").state
    assert dead.is_failed(), dead
    assert dead.message == f"trial {victim.number} failed: worker process died (signal 9)"
    assert all(t.state.is_completed() for t in trial_tasks.values()), [
        (t.name, t.state.name) for t in trial_tasks.values()
    ]


def test_cancelled_flow_run_fails_its_running_trials_and_ends_cancelled(
    tmp_path: Path, prefect_server: Any, tracking_uri: str
) -> None:
    """A deployment run on a real process worker, cancelled (as from the UI) while two trials
    run: Prefect's worker signals the flow run's process group; the flow run ends Cancelled,
    both trials are failed in Optuna and MLflow, and no task run failed."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling
    from servers import stop_group

    from helpers import REPO

    name = "it-cancel"
    workdir = tmp_path / "runs"
    journal = workdir / name / "optuna.journal"
    pool = "it-cancel-pool"
    res = prefect_server.run("work-pool", "create", pool, "--type", "process", cwd=tmp_path)
    assert res.returncode == 0, res.stdout
    worker = prefect_server.spawn(
        "worker", "start", "--pool", pool, "--type", "process", "--limit", "1",
        log=tmp_path / "worker.log", cwd=tmp_path,
    )  # fmt: skip
    try:
        remote = flow.from_source(source=str(REPO), entrypoint="flows/study.py:study_flow")
        deployment_id = remote.deploy(name=name, work_pool_name=pool, print_next_steps=False)
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(
                deployment_id,
                parameters={
                    "n_trials": 20,
                    "workers": 2,
                    "overrides": _overrides(workdir, tracking_uri, name),
                },
            )

            def state() -> Any:
                return client.read_flow_run(run.id).state

            running: list[FrozenTrial] = []
            _poll(
                "two running trials, one with an epoch reported",
                lambda: _two_running_one_reported(journal, name, running),
                lambda: not state().is_final(),
                timeout=400,
            )
            client.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"))
            _poll("the flow run's end", lambda: state().is_final(), lambda: True, timeout=180)
            final = state()
    finally:
        stop_group(worker)
    log = (tmp_path / "worker.log").read_text()
    assert final.is_cancelled(), (final, log)

    after = {t.number: t for t in _trials(journal, name)}
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    runs = _trial_runs(tracking_uri, name)
    for t in running:  # the two trials running at the cancellation
        stopped = after[t.number]
        assert stopped.state == TrialState.FAIL and stopped.user_attrs["mfstudy.crashed"]
        assert stopped.user_attrs["error"].startswith("trial workers stopped: flow run cancel")
        assert runs[t.number].info.status == "FAILED"
        assert runs[t.number].data.tags["mfstudy.error"] == stopped.user_attrs["error"]
    assert len(after) < 20  # it did stop

    tasks = _task_runs(run.id)
    assert not [t for t in tasks if t.state.is_failed() or t.state.is_crashed()], [
        (t.name, t.state.name, t.state.message) for t in tasks
    ]
    assert sum(1 for t in tasks if t.name.startswith("trial-") and t.state.is_cancelled()) >= 2
    assert "Traceback" not in log, log
