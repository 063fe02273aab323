"""Trial executors: long-lived worker processes and the in-process one, used by the flow."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from functools import partial
from pathlib import Path

import pool_targets as targets
import pytest

from mfstudy.tuning import InProcessTrials, TrialProcesses, local_trials


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
        assert all(pool.warmed(slot) >= 0.0 for slot in (0, 1))
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
        assert trials.warmed(0) >= 0.0 and trials.warmed(0) >= 0.0
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
