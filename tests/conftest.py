"""Shared fixtures: where the real datasets live, a guard against the network, real MLflow
servers (one for the session, others a test starts for itself), and the rule that marks tests
`slow`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import MlflowServer

from helpers import shared_data_dir
from mfstudy.data import CACHE_DIR_ENV, DOWNLOAD_BASE_ENV

#: Fixtures that start real servers (Prefect, MLflow) or read the real shared datasets: every
#: test that uses one, directly or through another fixture, is marked `slow` (see
#: `pytest_collection_modifyitems`; tests/test_tiers.py checks that the rule holds). Tests that
#: are slow for other reasons (running the `mfstudy` command, spawning worker processes,
#: training for seconds) are marked in their module: `pytestmark = pytest.mark.slow`.
SLOW_FIXTURES = frozenset(
    {"prefect_server", "mlflow_server", "tracking_uri", "new_mlflow_server", "data_dir"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private download cache per test, and downloads pointed at a closed local port.

    Should a test fall through to a download by mistake, it fails fast on 127.0.0.1 instead of
    fetching the official archive (this machine has no internet; CI must not depend on it).
    The real datasets, when present, are exported as MFSTUDY_DATA_DIR so that subprocesses
    (the CLI, worker processes) find them too.
    """
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    monkeypatch.setenv(DOWNLOAD_BASE_ENV, "http://127.0.0.1:9/nowhere")
    data = shared_data_dir()
    if data is not None:
        monkeypatch.setenv("MFSTUDY_DATA_DIR", str(data))
    return cache


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        # CI always has the datasets; a silent skip there would hide a broken data path.
        if os.environ.get("CI"):
            pytest.fail("real datasets not found: set MFSTUDY_DATA_DIR")
        pytest.skip("real datasets not available (set MFSTUDY_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tracking_uri(mlflow_server: MlflowServer) -> str:
    return mlflow_server.uri


@pytest.fixture
def new_mlflow_server() -> Iterator[Callable[..., MlflowServer]]:
    """Start MLflow servers only this test uses (one it may kill, or a short-lived one on the
    session server's store): `new_mlflow_server(root)`, all stopped after the test. With
    `wait=False` the server is only launched (`.wait_healthy()` later), so it boots while the
    test does something else."""
    started: list[MlflowServer] = []

    def start(root: Path, *, wait: bool = True) -> MlflowServer:
        server = MlflowServer(root)
        started.append(server)
        return server.start() if wait else server.launch()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_default_store_in_cwd() -> Iterator[None]:
    """Fail if anything fell back to MLflow's *default* store (./mlflow.db, ./mlruns).

    That happens when code resolves a URI through MLflow's global state instead of the URI it
    was given, the bug this package is written to avoid.
    """
    paths = [Path.cwd() / "mlflow.db", Path.cwd() / "mlruns"]
    before = {p for p in paths if p.exists()}
    yield
    created = [str(p) for p in paths if p.exists() and p not in before]
    assert not created, f"MLflow default store created: {created}"
