"""Trial executors: long-lived worker processes and the in-process one, used by the flow."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import time
from functools import partial
from pathlib import Path

import pool_targets as targets
import pytest

from mfstudy.tuning import WorkerDied, local_trials
from mfstudy.tuning._executors import InProcessTrials, TrialProcesses

pytestmark = pytest.mark.slow  # worker processes started and warmed up: seconds each


def test_local_trials_picks_in_process_for_one_worker() -> None:
    assert isinstance(local_trials(1, 2), InProcessTrials)
    assert isinstance(local_trials(2, 1), TrialProcesses)
    with pytest.raises(ValueError, match="workers"):
        TrialProcesses(0, 1)


def test_processes_start_warm_run_in_parallel_and_are_kept(tmp_path: Path) -> None:
    warm, meet = tmp_path / "warm", tmp_path / "meet"
    warm.mkdir()
    meet.mkdir()
    with TrialProcesses(2, threads=1, warm_up=partial(targets.mark_warm, str(warm))) as pool:
        for slot in (0, 1):
            pool.warmed(slot)  # returns once that worker's warm-up has run ...
        assert len(list(warm.iterdir())) == 2  # ... so both have by now
        results: list[int] = []
        # Two calls that each wait until both are running: they can only return if the two
        # workers run at once.
        threads = [
            threading.Thread(target=lambda: results.append(pool.run(targets.meet, str(meet), 2)[0]))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(set(results)) == 2
        # The same processes serve every later call: no process per trial.
        later = {pool.run(targets.pid)[0] for _ in range(8)}
        assert later <= set(results)
    # Each process warmed up exactly once, in its initializer.
    assert sorted(p.name for p in warm.iterdir()) == sorted(f"warm-{p}" for p in results)


def test_processes_return_log_lines_and_cap_threads() -> None:
    with TrialProcesses(1, threads=1, warm_up=targets.load_thread_pools) as pool:
        value, lines = pool.run(targets.say, "hello")
        assert value == "hello"
        # INFO and above from the mfstudy loggers, nothing else, for the caller to re-emit.
        assert lines == [(logging.WARNING, "mfstudy.test", "said hello")]
        assert pool.run(targets.pid)[1] == []  # a call's lines are its own
        assert pool.run(targets.thread_caps)[0] == (1, 1)


def test_a_failing_call_raises_in_the_caller_with_what_it_logged() -> None:
    with TrialProcesses(1, threads=1) as pool:
        with pytest.raises(ValueError, match="broken trial machinery") as info:
            pool.run(targets.say_then_fail, "x")
        assert any("before failing: x" in note for note in info.value.__notes__)
        assert pool.run(targets.say, "still here")[0] == "still here"  # the worker lives on


def _held_pid(folder: Path, timeout: float = 120.0) -> int:
    """The pid of the worker that started `targets.hold` in `folder`."""
    deadline = time.monotonic() + timeout
    while not (held := list(folder.glob("held-*"))):
        assert time.monotonic() < deadline, "no worker started the call"
        time.sleep(0.05)
    return int(held[0].name.removeprefix("held-"))


def _run_in_thread(
    pool: TrialProcesses, fn: object, *args: object
) -> tuple[threading.Thread, list]:
    out: list = []

    def call() -> None:
        try:
            out.append(pool.run(fn, *args))  # type: ignore[arg-type]
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, out


def test_a_dead_worker_fails_only_its_call_and_is_replaced(tmp_path: Path) -> None:
    with TrialProcesses(2, threads=1) as pool:
        thread, out = _run_in_thread(pool, targets.hold, str(tmp_path))
        pid = _held_pid(tmp_path)
        others = {pool.run(targets.pid)[0] for _ in range(4)}  # the other worker serves on
        assert pid not in others and len(others) == 1
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=60)
        (died,) = out
        assert isinstance(died, WorkerDied) and died.stopped is None
        assert died.reason == "worker process died (signal 9)"
        assert died.token.split(":")[1] == str(pid)  # what a trial it reserved would carry
        # Two workers again: the survivor and a fresh process in the dead one's place.
        meet = tmp_path / "meet"
        meet.mkdir()
        threads = [_run_in_thread(pool, targets.meet, str(meet), 2) for _ in range(2)]
        for t, _ in threads:
            t.join(timeout=120)
        pids = {o[0][0] for _, o in threads}
        assert len(pids) == 2 and pid not in pids and others < pids


def test_stop_fails_running_and_waiting_calls(tmp_path: Path) -> None:
    with TrialProcesses(1, threads=1) as pool:
        running, out = _run_in_thread(pool, targets.hold, str(tmp_path))
        pid = _held_pid(tmp_path)
        waiting, queued = _run_in_thread(pool, targets.pid)
        pool.stop("flow run cancelled")
        running.join(timeout=60)
        waiting.join(timeout=60)
        for result in (out, queued):
            (exc,) = result
            assert isinstance(exc, WorkerDied)
            assert exc.reason == "trial workers stopped: flow run cancelled"
        assert out[0].token.split(":")[1] == str(pid)
        with pytest.raises(WorkerDied, match="stopped"):
            pool.run(targets.pid)


def test_processes_stay_with_the_caller() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(TrialProcesses(2, 1))
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        TrialProcesses(2, 1).run(targets.pid)


def test_in_process_runs_one_call_at_a_time_and_warms_once() -> None:
    warmed: list[int] = []
    trials = InProcessTrials(warm_up=lambda: warmed.append(1))
    active, overlaps = [0], [0]
    guard = threading.Lock()

    def call(n: int) -> int:
        with guard:
            active[0] += 1
            overlaps[0] = max(overlaps[0], active[0])
        time.sleep(0.01)
        with guard:
            active[0] -= 1
        return n

    with trials:
        assert trials.warmed(0) == trials.warmed(0) and warmed == [1]  # warmed once, time kept
        results: list[tuple[int, list]] = []
        threads = [
            threading.Thread(target=lambda n=n: results.append(trials.run(call, n)))
            for n in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert warmed == [1]
    assert sorted(r for r, _ in results) == list(range(6))
    assert all(lines == [] for _, lines in results)
    assert overlaps[0] == 1
    with pytest.raises(ValueError, match="no slot 1"):
        trials.warmed(1)
