"""A real Prefect server (and its clients' settings) for the flow tests.

`prefect server start` runs on a free 127.0.0.1 port with its own PREFECT_HOME (SQLite
database, result storage) in a temporary folder, in its own process group, stopped with the
group at the end. Every Prefect client of the session (this process, workers, flow-run and
task subprocesses) is pointed at it through the environment; telemetry is off (no network).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import free_port

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


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, the process group `proc` leads (its own session)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
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
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [prefect_exe(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.home,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.home / "server.log").read_text())
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {timeout}s")

    def spawn(self, *args: str, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        """A long-running `prefect ...` command (a worker) in its own process group."""
        fh = open(log, "ab")
        proc = subprocess.Popen(
            [prefect_exe(), *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=cwd,
            start_new_session=True,
        )
        fh.close()
        return proc

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
            stop_group(proc)  # type: ignore[arg-type]
            out, _ = proc.communicate()
            raise AssertionError(f"prefect {' '.join(args)} timed out:\n{out}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)

    @staticmethod
    def stop_group(proc: subprocess.Popen[bytes]) -> None:
        stop_group(proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None


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
