"""A planted secret is found nowhere a study writes or prints: not by `mfstudy study`, not by
the Prefect flow, not in the MLflow server's store, not in the Prefect server's database.

Secrets go in two ways users give them: a literal password in `tracking.uri` (redacted wherever
the location is shown or stored) and an environment variable referenced from the config's
`study.storage` (`${NAME}`, resolved only when the storage is opened). The MLflow tracking
server ignores the basic-auth header the literal password produces, so the study runs for real.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from servers import MlflowServer

from helpers import EXE
from mfstudy.config import SyntheticSource

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, server: MlflowServer, literal: str, name: str) -> Path:
    host = server.uri.removeprefix("http://")
    data = SyntheticSource(n_users=300, n_items=150, n_interactions=8000)
    doc = {
        "name": name,
        "workdir": str(tmp_path / "runs"),
        "data": data.model_dump(mode="json"),
        "search_space": {
            "wrmf": {"factors": {"type": "int", "low": 4, "high": 16}, "iterations": 3}
        },
        "study": {
            "n_trials": 2,
            "storage": f"sqlite:///{tmp_path / 'optuna.db'}?password=${{MFSTUDY_TEST_SECRET}}",
        },
        "tracking": {"uri": f"http://mfuser:{literal}@{host}"},
    }
    path = tmp_path / "in" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def _files_holding(secret: bytes, *roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and secret in path.read_bytes():
                found.append(str(path))
    return found


def test_no_planted_secret_in_anything_the_study_or_the_flow_writes(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    prefect_server,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    literal = f"LITERAL-{uuid.uuid4().hex}"
    referenced = f"REFERENCED-{uuid.uuid4().hex}"
    monkeypatch.setenv("MFSTUDY_TEST_SECRET", referenced)
    secrets = [literal.encode(), referenced.encode()]

    # The command.
    cli_config = _config(tmp_path, mlflow_server, literal, "secret-cli")
    res = subprocess.run(
        [EXE, "study", str(cli_config)],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    for s in secrets:
        assert s.decode() not in res.stdout + res.stderr

    # The flow, against the real Prefect server (its database holds the flow-run parameters,
    # logs, artifacts and the persisted results' metadata; results live under its home).
    from flows.study import study_flow

    flow_config = _config(tmp_path, mlflow_server, literal, "secret-flow")
    result = study_flow(config=str(flow_config))
    assert result.model_version == "1"
    for s in secrets:
        assert s.decode() not in repr(result)

    written = [tmp_path / "runs", tmp_path / "optuna.db", mlflow_server.root, prefect_server.home]
    for s in secrets:
        assert _files_holding(s, *[p for p in written if p.is_dir()]) == []
    assert all(s not in (tmp_path / "optuna.db").read_bytes() for s in secrets)
    # The secrets did reach where they were needed: both studies ran and were tracked.
    assert {"secret-cli", "secret-flow"} <= {
        p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()
    }
