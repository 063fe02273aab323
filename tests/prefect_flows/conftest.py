"""A real Prefect server (and its clients' settings) for the flow tests.

`prefect server start` runs on a free 127.0.0.1 port with its own PREFECT_HOME (SQLite
database, result storage) in a temporary folder, in its own process group, stopped with the
group at the end. Every Prefect client of the session (this process, workers, flow-run and
task subprocesses) is pointed at it through the environment; telemetry is off (no network).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import QUIET, PrefectServer


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    saved = {k: os.environ.get(k) for k in (*QUIET, "PREFECT_HOME", "PREFECT_API_URL")}
    os.environ.update({k: server.env[k] for k in saved})
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_HOME: server.home}):
            yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
