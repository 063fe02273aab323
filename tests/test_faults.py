"""Runtime faults, with real processes: `kill -9` mid-study, four studies started at once on one
folder, and the tracking server going away mid-study. (Diverging trials: tests/test_study.py.)

Every study here is the real `mfstudy study` console script in its own session (process group),
tracking to a real MLflow server on SQLite and storing trials in the real Optuna journal (or a
SQLite RDB storage); every process group a test starts is killed in a finally block.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.trial import FrozenTrial, TrialState
from servers import MlflowServer, stop_group

from helpers import EXE, cli_sets, journal_study, tiny_data

pytestmark = pytest.mark.slow

#: Tiny synthetic data and a WRMF space whose trials take a second or two each on one thread.
SMALL = [
    *tiny_data(400, 200, 12_000, pruner="none", threads_per_worker=1),
    "search_space={wrmf: {factors: {type: int, low: 8, high: 32},"
    " regularization: {type: float, low: 0.01, high: 10, log: true}, iterations: ITER}}",
]
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@dataclass
class Study:
    """One `mfstudy study` command line and where its process writes its output."""

    workdir: Path
    name: str
    uri: str
    n_trials: int
    workers: int
    iterations: int = 30
    extra: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        sets = [
            *(s.replace("ITER", str(self.iterations)) for s in SMALL),
            f"name={self.name}",
            f"workdir={self.workdir}",
            *([f"tracking.uri={self.uri}"] if self.uri else []),  # "": the default store
            *self.extra,
        ]
        counts = ["--n-trials", str(self.n_trials), "--workers", str(self.workers)]
        return [EXE, "study", *counts, *cli_sets(sets)]

    @property
    def journal(self) -> Path:
        return self.workdir / self.name / "optuna.journal"

    @property
    def spool(self) -> Path:
        return self.workdir / self.name / "mlflow-spool"


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[Study, str], Proc]]:
    """Start `mfstudy study` processes, each leading its own process group; all are killed
    (the whole group: spawned trial workers too) when the test ends."""
    started: list[Proc] = []

    def start(study: Study, label: str) -> Proc:
        out, err = tmp_path / f"{label}.out", tmp_path / f"{label}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(
                study.argv(), stdout=fo, stderr=fe, cwd=tmp_path, start_new_session=True
            )
        proc = Proc(popen, out, err)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            stop_group(proc.popen, term_wait=0)


# ----------------------------------------------------------------------------- reading back


def _optuna(study: Study, storage: str | None = None) -> optuna.Study:
    if storage is None:
        return journal_study(study.journal, study.name)
    return optuna.load_study(study_name=study.name, storage=storage)


def _trials(study: Study, storage: str | None = None) -> list[FrozenTrial]:
    if storage is None and not study.journal.exists():
        return []
    try:
        return _optuna(study, storage).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def _by_state(trials: list[FrozenTrial], state: TrialState) -> list[FrozenTrial]:
    return [t for t in trials if t.state == state]


def _wait_for(what: str, cond: Callable[[], bool], procs: list[Proc], timeout: float = 90) -> None:
    """Poll `cond` until true; fail early if a study process ended meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for p in procs:
            if p.popen.poll() is not None:
                pytest.fail(f"study exited ({p.popen.returncode}) before {what}: {p.stderr}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _mlflow_runs(client: MlflowClient, experiment: str) -> tuple[list[Run], list[Run]]:
    """(parent runs, trial runs) of an experiment."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("mfstudy.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("mfstudy.role") == "trial"]
    assert len(parents) + len(trials) == len(runs)
    return parents, trials


def _assert_optuna_and_mlflow_agree(
    trials: list[FrozenTrial], client: MlflowClient, experiment: str
) -> dict[int, Run]:
    """Exactly one parent run; for every Optuna trial exactly one nested MLflow run, in the
    matching end state, under that parent; no MLflow trial run without an Optuna trial."""
    parents, runs = _mlflow_runs(client, experiment)
    assert len(parents) == 1, [p.info.run_id for p in parents]
    numbers = [int(r.data.tags["mfstudy.trial_number"]) for r in runs]
    assert sorted(numbers) == sorted(t.number for t in trials), "runs <-> trials differ"
    by_number = dict(zip(numbers, runs, strict=True))
    for t in trials:
        run = by_number[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == MLFLOW_STATUS[t.state.name], (t.number, t.state)
        if "mlflow_run_id" in t.user_attrs:
            assert t.user_attrs["mlflow_run_id"] == run.info.run_id
    return by_number


def _assert_complete_histories(
    trials: list[FrozenTrial],
    runs: dict[int, Run],
    client: MlflowClient,
    metrics: tuple[str, ...] = ("test_precision_at_5",),
) -> None:
    """Every complete trial has each metric in MLflow exactly once per evaluated epoch, and
    the objective (`test_precision_at_5`) with the values Optuna got."""
    for t in _by_state(trials, TrialState.COMPLETE):
        for metric in metrics:
            hist = client.get_metric_history(runs[t.number].info.run_id, metric)
            assert sorted(m.step for m in hist) == sorted(t.intermediate_values), (t, metric)
            if metric == "test_precision_at_5":
                got = {m.step: m.value for m in hist}
                assert [got[s] for s in sorted(got)] == pytest.approx(
                    [t.intermediate_values[s] for s in sorted(got)]
                )


def _versions(client: MlflowClient, name: str) -> list[Any]:
    return list(client.search_model_versions(f"name='{name}'"))


def _assert_clean_stderr(proc: Proc) -> None:
    err = proc.stderr
    assert "Traceback" not in err, err
    assert "database is locked" not in err, err
    # Optuna's warning while it waits out a journal lock left behind by a killed writer.
    assert "to acquire the lock file" not in err, err


# ----------------------------------------------------------------------------- 1. kill -9


def test_kill_9_mid_study_then_resume_keeps_results_and_reruns_the_lost_trials(
    tmp_path: Path, tracking_uri: str, spawn: Callable[[Study, str], Proc]
) -> None:
    study = Study(tmp_path / "runs", "fault-crash", tracking_uri, n_trials=8, workers=2)
    client = MlflowClient(tracking_uri)
    first = spawn(study, "first")
    _wait_for(
        "2 complete trials and 1 running",
        lambda: (
            len(_by_state(ts := _trials(study), TrialState.COMPLETE)) >= 2
            and len(_by_state(ts, TrialState.RUNNING)) >= 1
        ),
        [first],
    )
    # kill -9 the whole group: the main process and its spawned trial workers, mid-trial.
    stop_group(first.popen, term_wait=0)
    assert first.popen.returncode == -signal.SIGKILL
    before = _trials(study)
    done_before = {t.number: (t.params, t.value) for t in before if t.state.is_finished()}
    running_before = [t.number for t in _by_state(before, TrialState.RUNNING)]
    assert len(done_before) >= 2 and running_before
    assert all(t.state == TrialState.COMPLETE for t in before if t.state.is_finished())
    assert _versions(client, study.name) == []  # nothing registered by the killed run

    second = spawn(study, "second")
    assert second.wait(timeout=120) == 0, second.stderr
    _assert_clean_stderr(second)
    assert "left running by a crashed worker" in second.stderr

    after = _trials(study)
    by_number = {t.number: t for t in after}
    for number, (params, value) in done_before.items():  # kept as they were
        t = by_number[number]
        assert t.state == TrialState.COMPLETE and (t.params, t.value) == (params, value)
    for number in running_before:  # failed as crashed, so not counted against the budget
        t = by_number[number]
        assert t.state == TrialState.FAIL and t.user_attrs.get("mfstudy.crashed") is True
    assert len(_by_state(after, TrialState.COMPLETE)) == study.n_trials
    assert {t.state for t in after} == {TrialState.COMPLETE, TrialState.FAIL}
    assert len(after) == study.n_trials + len(running_before)

    runs = _assert_optuna_and_mlflow_agree(after, client, study.name)
    for number in running_before:
        assert "crashed" in runs[number].data.tags.get("mfstudy.error", "")
    _assert_complete_histories(after, runs, client)
    parents, _ = _mlflow_runs(client, study.name)
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("mfstudy.resumes") == "1"

    versions = _versions(client, study.name)
    assert len(versions) == 1  # registered by the resumed run only
    best = max(_by_state(after, TrialState.COMPLETE), key=lambda t: t.value)
    champion = client.get_model_version_by_alias(study.name, "champion")
    assert champion.version == versions[0].version
    assert float(champion.tags["mfstudy.score"]) == pytest.approx(best.value)


# ----------------------------------------------------------------------------- 2. concurrency


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_four_processes_started_at_once_share_one_study(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    spawn: Callable[[Study, str], Proc],
    storage: str,
) -> None:
    """Four `mfstudy study` processes on one working folder and study: the budget is met
    exactly, each trial once, one parent run, and no storage reports a lock timeout.

    By design every process that runs out of trials closes the study with what it sees, so
    each registers a version; the champion alias only moves to a better one (under the
    model's champion lock), so it ends on the best trial of all.
    """
    name = f"fault-concurrent-{storage}"
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if storage == "sqlite" else None
    study = Study(
        tmp_path / "runs",
        name,
        mlflow_server.uri,
        n_trials=12,
        workers=1,
        iterations=10,
        extra=(f"study.storage={url}",) if url else (),
    )
    log = mlflow_server.root / "server.log"
    log_start = log.stat().st_size
    procs = [spawn(study, f"p{i}") for i in range(4)]
    for p in procs:
        assert p.wait(timeout=240) == 0, p.stderr
    for p in procs:
        _assert_clean_stderr(p)
    server_log = log.read_bytes()[log_start:].decode(errors="replace")
    assert "database is locked" not in server_log

    trials = _trials(study, url)
    assert sorted(t.number for t in trials) == list(range(study.n_trials))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert not any("mfstudy.crashed" in t.user_attrs for t in trials)  # no live trial failed
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == len(run_ids)
    client = MlflowClient(mlflow_server.uri)
    runs = _assert_optuna_and_mlflow_agree(trials, client, name)
    _assert_complete_histories(trials, runs, client)
    parents, _ = _mlflow_runs(client, name)
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["mfstudy.resumes"] == "3"  # one creator, three finders

    versions = _versions(client, name)
    assert 1 <= len(versions) <= 4
    best = max(trials, key=lambda t: t.value)
    champion = client.get_model_version_by_alias(name, "champion")
    assert float(champion.tags["mfstudy.score"]) == pytest.approx(best.value)


def test_four_first_starts_on_an_empty_workdir_create_one_default_store(
    tmp_path: Path, spawn: Callable[[Study, str], Proc]
) -> None:
    """Four `mfstudy study` processes started at once on a workdir that does not exist yet,
    with the default SQLite tracking store: each used to race to create and migrate
    `mlflow.db` (`table _alembic_tmp_tags already exists`), and the half-migrated store broke
    every later study there. Now all succeed: one study, the exact budget, one parent run."""
    name = "fault-first-start"
    study = Study(tmp_path / "runs", name, "", n_trials=8, workers=1, iterations=5)
    procs = [spawn(study, f"p{i}") for i in range(4)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr
    for p in procs:
        _assert_clean_stderr(p)
    trials = _trials(study)
    assert sorted(t.number for t in trials) == list(range(study.n_trials))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    _assert_optuna_and_mlflow_agree(trials, client, name)
    parents, _ = _mlflow_runs(client, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # One store; beside it the study's folder and `registry`, the registered model's champion
    # lock (`mfstudy.workdir.champion_lock`).
    found = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert found == ["artifacts", name, "mlflow.db", "registry"]


# ----------------------------------------------------------------------------- 3. server drop


def test_tracking_server_lost_mid_study_then_back_delivers_the_spool_and_registers(
    tmp_path: Path,
    new_mlflow_server: Callable[..., MlflowServer],
    spawn: Callable[[Study, str], Proc],
) -> None:
    """The server dies (SIGKILL to its group) after the first trial: the trials still all
    finish, their tracking is spooled, and closing fails at once with one line naming the
    spool and nothing registered. Back on the same port and database, re-running the same
    command sends the spool (every epoch of every trial, once) and registers the model."""
    # Only this test uses it: its log is this test's alone, and it may be killed.
    own_server = new_mlflow_server(tmp_path / "mlflow-server")
    study = Study(tmp_path / "runs", "fault-outage", own_server.uri, n_trials=4, workers=1)
    first = spawn(study, "first")
    _wait_for(
        "the first complete trial",
        lambda: len(_by_state(_trials(study), TrialState.COMPLETE)) >= 1,
        [first],
    )
    assert own_server.proc is not None
    stop_group(own_server.proc, term_wait=0)
    own_server.stop()  # reaps the group and waits until the port is free

    assert first.wait(timeout=120) == 2, first.stderr
    err = first.stderr
    assert "Traceback" not in err, err
    message = [line for line in err.splitlines() if line.startswith("mfstudy: error: ")]
    assert len(message) == 1, err
    assert f"MLflow tracking server at {own_server.uri} is unreachable" in message[0]
    assert "nothing was registered" in message[0] and str(study.spool) in message[0]
    trials = _trials(study)
    assert len(trials) == study.n_trials
    assert all(t.state == TrialState.COMPLETE for t in trials)  # the study did its work
    spooled = sorted(study.spool.glob("*.json"))
    assert 1 <= len(spooled) <= study.n_trials - 1, spooled  # at least the trials after

    own_server.start()  # the same port and SQLite database
    client = MlflowClient(own_server.uri)
    assert _versions(client, study.name) == []  # nothing half-registered by the failed close
    parents, _ = _mlflow_runs(client, study.name)
    assert [p.info.status for p in parents] == ["RUNNING"]  # it could not be ended

    second = spawn(study, "second")
    assert second.wait(timeout=120) == 0, second.stderr
    _assert_clean_stderr(second)
    assert list(study.spool.glob("*.json")) == []
    after = _trials(study)
    assert [(t.number, t.value) for t in after] == [(t.number, t.value) for t in trials]
    runs = _assert_optuna_and_mlflow_agree(after, client, study.name)
    _assert_complete_histories(
        after, runs, client, ("test_precision_at_5", "train_precision_at_5", "test_mse")
    )
    parents, _ = _mlflow_runs(client, study.name)
    assert parents[0].info.status == "FINISHED"
    versions = _versions(client, study.name)
    assert len(versions) == 1
    best = max(after, key=lambda t: t.value)
    assert float(versions[0].tags["mfstudy.score"]) == pytest.approx(best.value)


# ----------------------------------------------------------------------------- 4. one worker dies


def _worker_pid(trial: FrozenTrial) -> int:
    """The pid of the worker process that reserved `trial` (its token is `host:pid:start`)."""
    return int(trial.user_attrs["mfstudy.worker"].split(":")[1])


def test_a_worker_killed_mid_trial_costs_only_its_trial(
    tmp_path: Path, tracking_uri: str, spawn: Callable[[Study, str], Proc]
) -> None:
    """`kill -9` of one trial worker of `mfstudy study --workers 2` (as the OOM killer would):
    its trial is failed in Optuna and MLflow, a new worker takes over, the other worker's trial
    goes on, and the study ends normally with exactly its budget of results."""
    # Long trials (evaluated every 10 of 200 epochs), so the victim is still mid-trial when
    # the signal lands.
    study = Study(
        tmp_path / "runs",
        "fault-worker",
        tracking_uri,
        n_trials=4,
        workers=2,
        iterations=200,
        extra=("study.eval_every=10",),
    )
    client = MlflowClient(tracking_uri)
    proc = spawn(study, "study")
    running: list[FrozenTrial] = []

    def two_running_one_reported() -> bool:
        running[:] = _by_state(_trials(study), TrialState.RUNNING)
        return len(running) == 2 and any(t.intermediate_values for t in running)

    _wait_for("two running trials, one with an epoch reported", two_running_one_reported, [proc])
    victim = next(t for t in running if t.intermediate_values)
    other = next(t for t in running if t is not victim)
    pid = _worker_pid(victim)
    assert pid != proc.popen.pid and pid != _worker_pid(other)
    os.kill(pid, signal.SIGKILL)

    assert proc.wait(timeout=240) == 0, proc.stderr
    _assert_clean_stderr(proc)
    assert "worker process died (signal 9)" in proc.stderr

    after = _trials(study)
    by_number = {t.number: t for t in after}
    assert len(_by_state(after, TrialState.COMPLETE)) == study.n_trials
    failed = _by_state(after, TrialState.FAIL)
    assert [t.number for t in failed] == [victim.number]
    assert failed[0].user_attrs["mfstudy.crashed"] is True  # re-run, not counted
    assert failed[0].user_attrs["error"] == "worker process died (signal 9)"
    survivor = by_number[other.number]  # undisturbed: finished by the worker that began it
    assert survivor.state == TrialState.COMPLETE
    assert survivor.user_attrs["mfstudy.worker"] == other.user_attrs["mfstudy.worker"]
    # A new process took the dead one's place: later trials ran in a third worker.
    pids = {_worker_pid(t) for t in after}
    assert pid in pids and len(pids) == 3

    runs = _assert_optuna_and_mlflow_agree(after, client, study.name)
    assert runs[victim.number].info.status == "FAILED"
    assert runs[victim.number].data.tags["mfstudy.error"] == "worker process died (signal 9)"
    _assert_complete_histories(after, runs, client)
    parents, _ = _mlflow_runs(client, study.name)
    assert parents[0].info.status == "FINISHED"
    assert len(_versions(client, study.name)) == 1
