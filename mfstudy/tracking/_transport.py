"""The few tracking calls a trial makes, with a short, explicit failure policy.

`MlflowClient` retries a failed HTTP request 7 times with exponential backoff (about four
minutes) and reads that policy from process-wide environment variables. A trial must not stall
for minutes because the server blinked, and changing `os.environ` would affect every other user
of MLflow in the process. So for HTTP(S) URIs the hot-path calls (create run, log batch, end
run, reachability) go through MLflow's own `http_request` with a per-call retry count and
timeout, building the same protobuf payloads as MLflow's REST store. For a local database URI
there is no network to fail and `MlflowClient` is used as is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.protos.service_pb2 import CreateRun, LogBatch, SearchExperiments, UpdateRun
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request, verify_rest_response
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from mfstudy._fs import file_lock, why_not_creatable
from mfstudy.secrets import scrub
from mfstudy.tracking._errors import TrackingError
from mfstudy.tracking._uri import is_http_uri, redact_uri

__all__ = ["FailurePolicy", "Transport", "check_reachable", "short_reason"]

_API = "/api/2.0/mlflow"


@dataclass(frozen=True)
class FailurePolicy:
    """How hard a trial tries before giving up on one request (seconds, retries)."""

    timeout: int = 5
    retries: int = 1
    backoff_factor: int = 0


#: Reachability is checked once before a study or a `recommend`: one cheap read, retried
#: once. 3 s each keeps a server that accepts connections but never answers under 10 s in all
#: (5 s each took 12 s, process start included).
CHECK_POLICY = FailurePolicy(timeout=3, retries=1, backoff_factor=0)


def short_reason(exc: BaseException) -> str:
    """The useful tail of a (possibly nested, very long) requests/urllib3 error message, with
    any credentials of a URL it quotes removed."""
    text = scrub(" ".join(str(exc).split()))
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "request timed out"
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


class Transport:
    """Create runs, log batches and end runs against one tracking URI.

    Holds only the URI and the policy, so it is cheap to rebuild in each worker process and
    safe to pickle (the client is created lazily per process).
    """

    def __init__(self, uri: str, policy: FailurePolicy | None = None) -> None:
        self.uri = uri
        self.policy = policy or FailurePolicy()
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "policy": self.policy, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ------------------------------------------------------------------ REST plumbing

    def _post(self, endpoint: str, message: Any, method: str = "POST") -> dict[str, Any]:
        body = json.loads(message_to_json(message))
        kwargs: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
        response = http_request(
            get_default_host_creds(self.uri),
            f"{_API}/{endpoint}",
            method,
            max_retries=self.policy.retries,
            backoff_factor=self.policy.backoff_factor,
            backoff_jitter=0.0,
            timeout=self.policy.timeout,
            **kwargs,
        )
        verify_rest_response(response, f"{_API}/{endpoint}")
        return json.loads(response.text or "{}")

    # ------------------------------------------------------------------ calls

    def ping(self) -> None:
        """One cheap read (search one experiment); raises whatever the backend raised."""
        if is_http_uri(self.uri):
            self._post("experiments/search", SearchExperiments(max_results=1), method="GET")
        else:
            self.client.search_experiments(max_results=1)

    def create_run(
        self, experiment_id: str, run_name: str, start_time: int, tags: dict[str, str]
    ) -> str:
        """A new run's id (tags include `mlflow.parentRunId` for nested runs)."""
        if is_http_uri(self.uri):
            msg = CreateRun(
                experiment_id=experiment_id,
                run_name=run_name,
                start_time=start_time,
                tags=[RunTag(k, v).to_proto() for k, v in tags.items()],
            )
            return str(self._post("runs/create", msg)["run"]["info"]["run_id"])
        run = self.client.create_run(
            experiment_id, start_time=start_time, tags=tags, run_name=run_name
        )
        return run.info.run_id

    def log_batch(
        self,
        run_id: str,
        metrics: list[tuple[str, float, int, int]] = (),  # type: ignore[assignment]
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Send metrics `(key, value, timestamp_ms, step)`, params and tags in one request.

        The batch must fit the server's limits; the caller splits larger records
        (`_Pending.deliver`, which also drops each part only once its request was accepted).
        """
        m = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in metrics]
        p = [Param(k, v) for k, v in (params or {}).items()]
        t = [RunTag(k, v) for k, v in (tags or {}).items()]
        if (
            len(p) > MAX_PARAMS_TAGS_PER_BATCH
            or len(t) > MAX_PARAMS_TAGS_PER_BATCH
            or len(m) > MAX_METRICS_PER_BATCH
            or len(m) + len(p) + len(t) > MAX_ENTITIES_PER_BATCH
        ):
            raise ValueError(
                f"batch of {len(m)} metrics, {len(p)} params, {len(t)} tags exceeds MLflow's "
                "limits; split it first"
            )
        if not is_http_uri(self.uri):
            self.client.log_batch(run_id, metrics=m, params=p, tags=t, synchronous=True)
            return
        msg = LogBatch(
            run_id=run_id,
            metrics=[x.to_proto() for x in m],
            params=[x.to_proto() for x in p],
            tags=[x.to_proto() for x in t],
        )
        self._post("runs/log-batch", msg)

    def end_run(self, run_id: str, status: str, end_time: int) -> None:
        """Mark the run terminated with `status` (FINISHED, KILLED or FAILED)."""
        if is_http_uri(self.uri):
            self._post(
                "runs/update",
                UpdateRun(run_id=run_id, status=RunStatus.from_string(status), end_time=end_time),
            )
        else:
            self.client.set_terminated(run_id, status=status, end_time=end_time)


def check_reachable(
    uri: str, policy: FailurePolicy = CHECK_POLICY, must_exist: bool = False
) -> None:
    """Fail fast (seconds) with a one-line :class:`TrackingError` when `uri` cannot be used.

    Call before a study starts so a wrong URI or a stopped server is reported at once instead
    of after minutes of MLflow's default retries. A SQLite store must be creatable (a folder
    that is not writable made MLflow retry for nearly two minutes); with `must_exist` (reading
    a registered model) it must exist already, and none is created.
    """
    lock = _check_sqlite_file(uri, must_exist)
    try:
        if lock is None:
            Transport(uri, policy).ping()
        else:
            # The first client of a new SQLite store creates and migrates its tables; two
            # studies starting at once on a fresh workdir both did, and both failed
            # (`table _alembic_tmp_tags already exists`), leaving a half-migrated store.
            with file_lock(lock):
                Transport(uri, policy).ping()
    except Exception as exc:
        what = "MLflow tracking server" if is_http_uri(uri) else "MLflow tracking store"
        raise TrackingError(
            f"{what} at {redact_uri(uri)} is unreachable: {short_reason(exc)}"
        ) from exc


def _check_sqlite_file(uri: str, must_exist: bool) -> Path | None:
    """For a SQLite store: one line now if it cannot be used, else the file to lock while the
    store is created (None when it must exist already, or for other stores)."""
    if not uri.lower().startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    path = Path(database)
    if must_exist and not path.is_file():
        raise TrackingError(
            f"no MLflow tracking store at {redact_uri(uri)}: run a study first, or point "
            "--tracking-uri (MLFLOW_TRACKING_URI) at the store that holds the model"
        )
    if must_exist:
        return None
    why = why_not_creatable(path) or _why_sqlite_fails(path)
    if why is not None:
        raise TrackingError(f"MLflow tracking store at {redact_uri(uri)} cannot be used: {why}")
    # An flock on the database file itself: SQLite locks with fcntl() locks, which are
    # independent of flock() on Linux, and no lock file is left beside the store.
    return path


def _why_sqlite_fails(path: Path) -> str | None:
    """Open (or create) the SQLite file and take its write lock once: permission checks miss
    what the file system refuses (a read-only mount; root passes every access() check)."""
    import sqlite3

    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow's own store would
        con = sqlite3.connect(path, timeout=30)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except (OSError, sqlite3.Error) as exc:
        return f"{path}: {exc}"
    return None
