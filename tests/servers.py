"""Real servers for tests, started on 127.0.0.1 and stopped by the tests (no mocks).

`mlflow server` runs as a subprocess in its own process group (uvicorn spawns workers), so the
whole group is stopped at the end. Artifacts are proxied by the server (`--serve-artifacts`
with `--artifacts-destination`), the way a shared team server is usually run, so artifact
uploads and model downloads go through HTTP too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """Start/stop `mlflow server` on a SQLite store; restartable on the same db and port."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 120.0) -> MlflowServer:
        return self.launch().wait_healthy(timeout)

    def launch(self) -> MlflowServer:
        """Spawn the server without waiting (several servers can boot in parallel)."""
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(exe) if exe.exists() else "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{(self.root / 'mlflow.db').as_posix()}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = open(self.root / "server.log", "ab")
        # Our own session = our own process group: killpg reaches the uvicorn workers.
        # The GenAI job executor (background consumers) is not needed here and slows the boot.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_healthy(self, timeout: float = 120.0) -> MlflowServer:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.root / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # leader of its own session
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers may outlive the leader briefly; make sure the group is gone.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None
        # The port must be free again before a restart on the same port.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)
