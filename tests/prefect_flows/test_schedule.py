"""The nightly schedule: validated in the study config, deployed by `python -m flows.deploy`
against a real Prefect server, and the same as `prefect.yaml`'s for the shipped nightly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prefect._internal.schemas.validators import validate_cron_string

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
    validate_cron_string(expr)


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
    validate_cron_string(expr)


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
