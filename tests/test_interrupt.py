"""Ctrl-C in a terminal running `mfstudy study --workers 2`: the terminal signals the whole
process group; the trial processes leave the signal to the command, which stops them, fails
the trials they held (Optuna and MLflow), ends the parent run KILLED and exits; the same
command then resumes and finishes the budget."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from servers import stop_group

from helpers import EXE, cli_sets, journal_study, tiny_data

pytestmark = pytest.mark.slow

NAME = "ctrl-c"


def _args(workdir: Path) -> list[str]:
    return [
        "study",
        "--n-trials",
        "4",
        "--workers",
        "2",
        *cli_sets(
            [
                f"name={NAME}",
                f"workdir={workdir}",
                *tiny_data(1500, 600, 60_000, pruner="none", threads_per_worker=1),
                # Long enough trials that both workers are mid-trial when the signal comes.
                "search_space={wrmf: {factors: 32, regularization: 1.0, "
                "alpha: {type: float, low: 5, high: 20}, iterations: 40}}",
            ]
        ),
    ]


def test_ctrl_c_stops_the_workers_fails_their_trials_and_the_study_resumes(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "runs"
    journal = workdir / NAME / "optuna.journal"
    proc = subprocess.Popen(
        [EXE, *_args(workdir)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 240
        running: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists():
                trials = journal_study(journal, NAME).get_trials()
                running = [t.number for t in trials if t.state == TrialState.RUNNING]
                if len(running) == 2 and all(
                    t.intermediate_values for t in trials if t.number in running
                ):
                    break
            time.sleep(0.2)
        assert len(running) == 2, f"never saw two trials running: {proc.poll()}"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=120)
    finally:
        stop_group(proc)
    assert proc.returncode not in (0, None), err
    assert "Traceback" not in err, err

    trials = {t.number: t for t in journal_study(journal, NAME).get_trials()}
    for number in running:
        t = trials[number]
        assert t.state == TrialState.FAIL, (number, t.state)
        assert t.user_attrs["mfstudy.crashed"] is True  # re-run, not counted against the budget
        assert t.user_attrs["error"].startswith("trial workers stopped: ")
    ml = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = ml.get_experiment_by_name(NAME)
    runs = ml.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if r.data.tags.get("mfstudy.role") == "study"]
    assert [r.info.status for r in parent] == ["KILLED"]
    held = {
        int(r.data.tags["mfstudy.trial_number"]): r
        for r in runs
        if r.data.tags.get("mfstudy.role") == "trial"
    }
    for number in running:
        if number in held:  # a trial whose run was not created yet has none to end
            assert held[number].info.status == "FAILED", number

    again = subprocess.run(
        [EXE, *_args(workdir)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    after = journal_study(journal, NAME).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in after) == 4
    assert {t.number for t in after if t.state == TrialState.FAIL} >= set(running)
