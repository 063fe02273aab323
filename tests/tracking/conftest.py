"""Fixtures of the tracking tests; the MLflow server fixtures are in tests/conftest.py."""

from __future__ import annotations

import pytest
from servers import free_port


@pytest.fixture
def dead_uri() -> str:
    """An HTTP URI where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
