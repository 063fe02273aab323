"""Real servers for tests, started on 127.0.0.1 and stopped by the tests (no mocks).

`mlflow server` runs as a subprocess in its own process group (uvicorn spawns workers), so the
whole group is stopped at the end. Artifacts are proxied by the server (`--serve-artifacts`
with `--artifacts-destination`), the way a shared team server is usually run, so artifact
uploads and model downloads go through HTTP too. `prefect server start` likewise, with its own
PREFECT_HOME and telemetry off (`QUIET`, also the settings its clients get). Both are used by
the tests and by the benchmarks in `bench/`.
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
from typing import Any

QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_CLI_COLORS": "false",
    "PREFECT_CLI_WRAP_LINES": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "mfstudy",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def prefect_exe() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else "prefect"


def stop_group(proc: subprocess.Popen[Any], term_wait: float = 20) -> None:
    """Stop the process group `proc` leads (started in its own session) and reap `proc`.

    SIGTERM first, then SIGKILL if it is still there after `term_wait` seconds; with
    `term_wait=0`, SIGKILL at once (a test's cleanup, or the fault a test injects). Whatever
    the leader forked and left behind in the group is killed too.
    """
    steps = [(signal.SIGTERM, term_wait)] if term_wait > 0 else []
    for sig, wait in [*steps, (signal.SIGKILL, 30)]:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def spawn_logged(
    cmd: list[str], log: Path, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """`cmd` with stdout and stderr appended to `log`, in its own session (process group), so
    :func:`stop_group` reaches whatever it forks."""
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def wait_healthy(
    proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float, probe: float, pause: float
) -> bool:
    """Poll `url` until it answers 200 (True) or `timeout` passes (False); raises with the
    server's log if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=probe) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(pause)
    return False


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
        # Our own session = our own process group: killpg reaches the uvicorn workers.
        # The GenAI job executor (background consumers) is not needed here and slows the boot.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = spawn_logged(cmd, self.root / "server.log", env, self.root)
        return self

    def wait_healthy(self, timeout: float = 120.0) -> MlflowServer:
        assert self.proc is not None, "launch() first"
        log = self.root / "server.log"
        if wait_healthy(self.proc, f"{self.uri}/health", log, timeout, probe=1, pause=0.2):
            return self
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, term_wait=15)
        self.proc = None
        # The port must be free again before a restart on the same port.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


class PrefectServer:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            **QUIET,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api_url,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> PrefectServer:
        env = {k: v for k, v in self.env.items() if k != "PREFECT_API_URL"}
        log = self.home / "server.log"
        cmd = [prefect_exe(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = spawn_logged(cmd, log, env, self.home)
        if wait_healthy(self.proc, f"{self.api_url}/health", log, timeout, probe=2, pause=0.3):
            return self
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {timeout}s")

    def spawn(self, *args: str, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        """A long-running `prefect ...` command (a worker) in its own process group."""
        return spawn_logged([prefect_exe(), *args], log, self.env, cwd)

    def run(
        self, *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A `prefect ...` command to completion, in its own process group (killed on timeout)."""
        proc = subprocess.Popen(
            [prefect_exe(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.env, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            out, _ = proc.communicate()
            raise AssertionError(f"prefect {' '.join(args)} timed out:\n{out}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
