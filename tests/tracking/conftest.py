"""Fixtures of the tracking tests; the session MLflow server is in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import MlflowServer, free_port


@pytest.fixture
def start_server() -> Iterator[Callable[[Path], MlflowServer]]:
    """Start extra servers (e.g. a short-lived one on the session server's store); all are
    stopped after the test."""
    started: list[MlflowServer] = []

    def start(root: Path) -> MlflowServer:
        server = MlflowServer(root)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def dead_uri() -> str:
    """An HTTP URI where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
