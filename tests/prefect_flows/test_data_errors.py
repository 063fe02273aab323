"""A wrong data path in Prefect: not retried, and the flow run ends Failed with the line the
command prints (it used to be retried twice, 5 s apart, its cause among three tracebacks)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import EXE
from mfstudy.errors import DataError

pytestmark = pytest.mark.slow


def test_a_wrong_data_path_fails_the_flow_run_once_with_the_commands_line(
    tmp_path: Path, prefect_server: Any
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.study import study_flow

    config = tmp_path / "wrong-path.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "it-wrong-path",
                "workdir": str(tmp_path / "runs"),
                "data": {"source": "table", "path": str(tmp_path / "absent.csv")},
                "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            }
        )
    )
    cli = subprocess.run(
        [EXE, "study", str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 2
    line = cli.stderr.strip().removeprefix("mfstudy: error: ")
    assert line.startswith(f"{tmp_path / 'absent.csv'}: file not found")

    state = study_flow(config=str(config), return_state=True)
    assert state.is_failed()
    with pytest.raises(DataError):
        state.result()
    assert line in (state.message or ""), state.message
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    (ingest,) = [t for t in tasks if t.name.startswith("ingest")]
    assert ingest.state.is_failed() and ingest.run_count == 1, (ingest.state, ingest.run_count)
