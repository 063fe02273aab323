"""One nested MLflow run per Optuna trial, logged cheaply and robust to a server outage.

A trial runs in a worker process and reports per-epoch metrics. Every request costs the trial a
round trip and the tracking server CPU time that, on a shared machine, training would have
used; so values are buffered with the time they were measured and sent with `log_batch` (params,
tags and metrics together) every `flush_every` epochs and/or `flush_seconds` seconds, and at
the end. With `create_now=False` even the run is created at the first flush: a trial shorter
than `flush_seconds` then costs three requests in all (create, one batch, end).

When the trial ends, the value the study selected for it (its metric at its best epoch) is
logged as metric `best_<metric>` beside `best_epoch`, so that the runs table sorted by it ranks
the trials as the study does; the per-epoch metrics' latest values are the last epoch's.

Everything not yet acknowledged by the server (the run itself if it could not be created, its
params and tags, buffered metrics, the final status) lives in one :class:`_Pending` record. A
failed send keeps the record and the next flush retries; if it still fails when the trial ends,
the record is written as JSON to a spool folder and :func:`replay_spool` sends it later. The
trial itself never fails because tracking did.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from mfstudy.tracking._params import clip_param_key, clip_param_value
from mfstudy.tracking._tags import check_tags
from mfstudy.tracking._transport import FailurePolicy, Transport, short_reason

__all__ = ["ReplayReport", "TrialEnd", "TrialRun", "TrialState", "replay_spool"]

_log = logging.getLogger(__name__)

TrialState = Literal["complete", "pruned", "failed"]
_STATUS: dict[str, str] = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
_SPOOL_VERSION = 1


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Pending:
    """What the server has not acknowledged yet for one trial run (JSON-serialisable)."""

    experiment_id: str
    run_name: str
    start_time: int
    create_tags: dict[str, str]
    run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: `[key, value, timestamp_ms, step]` rows, in measurement order.
    metrics: list[list[Any]] = field(default_factory=list)
    end_status: str | None = None
    end_time: int | None = None

    def is_empty(self) -> bool:
        return (
            self.run_id is not None
            and not self.params
            and not self.tags
            and not self.metrics
            and self.end_status is None
        )

    def deliver(self, transport: Transport, final: bool) -> None:
        """Send what is pending, dropping each part as soon as the server accepted it.

        Raises the transport's error at the first failure; whatever was not sent stays. The
        end status is only sent when `final`, after everything else.
        """
        if self.run_id is None:
            self.run_id = transport.create_run(
                self.experiment_id, self.run_name, self.start_time, self.create_tags
            )
        # As few requests as the server's batch limits allow; each part is dropped only once
        # its request was accepted, so a retry never sends a metric twice.
        while self.params or self.tags or self.metrics:
            params = dict(list(self.params.items())[:MAX_PARAMS_TAGS_PER_BATCH])
            tags = dict(list(self.tags.items())[:MAX_PARAMS_TAGS_PER_BATCH])
            room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(params) - len(tags))
            chunk = self.metrics[:room]
            transport.log_batch(
                self.run_id, metrics=[tuple(m) for m in chunk], params=params, tags=tags
            )
            for key in params:
                del self.params[key]
            for key in tags:
                del self.tags[key]
            del self.metrics[: len(chunk)]
        if final and self.end_status is not None:
            transport.end_run(self.run_id, self.end_status, self.end_time or _now_ms())
            self.end_status = None


@dataclass(frozen=True)
class TrialEnd:
    """How ending a trial run went: delivered, or spooled to `spool_file` (or lost)."""

    run_id: str | None
    delivered: bool
    spool_file: Path | None = None
    error: str | None = None


class TrialRun:
    """The nested MLflow run of one trial; create with :meth:`start` inside the worker.

    Picklable by value (URI, ids and the pending record; no client), so it may cross process
    boundaries, although the intended use is to create and end it in the same worker.
    """

    def __init__(
        self,
        transport: Transport,
        pending: _Pending,
        trial_number: int,
        parent_run_id: str,
        flush_every: int | None,
        spool_dir: Path | None,
        flush_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        metric: str | None = None,
    ) -> None:
        self._transport = transport
        self._pending = pending
        self.trial_number = trial_number
        self.parent_run_id = parent_run_id
        self.flush_every = None if flush_every is None else max(1, int(flush_every))
        self.flush_seconds = flush_seconds
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.metric = metric
        self._epochs_since_flush = 0
        # What `flush_seconds` is measured on: injectable, so that a test advances a fake clock
        # instead of sleeping (a sleep races the flush window on a loaded machine).
        self._clock = clock
        self._last_flush = clock()
        self.last_error: str | None = None
        self.result: TrialEnd | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        trial_number: int,
        params: dict[str, Any],
        *,
        spool_dir: Path | None = None,
        flush_every: int | None = 10,
        policy: FailurePolicy | None = None,
        flush_seconds: float | None = None,
        create_now: bool = True,
        clock: Callable[[], float] = time.monotonic,
        metric: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> TrialRun:
        """Open the nested run `trial-0007` under `parent_run_id` with `params`.

        Buffered metrics are sent every `flush_every` epochs and every `flush_seconds` seconds
        (None: not on that account). With `create_now` the run is created and its params logged
        at once; otherwise at the first flush. If the server cannot be reached the trial still
        starts: the run is created at the next successful flush, or by :func:`replay_spool`
        after the trial. `clock` (monotonic seconds) times `flush_seconds`; tests pass a fake
        one. `metric` is the study's objective metric (`study.metric`): :meth:`end` logs the
        trial's best value as `best_<metric>` (`best_value` when not given). `tags` are set on
        the run when it is created (ValueError for one mfstudy sets itself).
        """
        name = f"trial-{int(trial_number):04d}"
        pending = _Pending(
            experiment_id=str(experiment_id),
            run_name=name,
            start_time=_now_ms(),
            create_tags={
                **check_tags(tags),
                "mlflow.parentRunId": parent_run_id,
                "mfstudy.role": "trial",
                "mfstudy.trial_number": str(int(trial_number)),
                "mfstudy.state": "running",
            },
            params={clip_param_key(k): clip_param_value(v) for k, v in params.items()},
        )
        run = cls(
            Transport(uri, policy),
            pending,
            int(trial_number),
            parent_run_id,
            flush_every,
            spool_dir,
            flush_seconds,
            clock,
            metric,
        )
        if create_now:
            run._try_deliver(final=False)
        return run

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, or None while the server has not been reachable."""
        return self._pending.run_id

    @property
    def uri(self) -> str:
        return self._transport.uri

    @property
    def best_key(self) -> str:
        """The metric holding the trial's selected value: `best_<metric>`, or `best_value`."""
        return clip_param_key(f"best_{self.metric}") if self.metric else "best_value"

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Buffer `metrics` measured now at step `epoch`; flush when an epoch or time limit is
        reached."""
        if self.result is not None:
            raise RuntimeError(f"trial {self.trial_number} already ended")
        ts = _now_ms()
        self._pending.metrics.extend([k, float(v), ts, int(epoch)] for k, v in metrics.items())
        self._epochs_since_flush += 1
        if (self.flush_every is not None and self._epochs_since_flush >= self.flush_every) or (
            self.flush_seconds is not None
            and self._clock() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> bool:
        """Send what is buffered now (creating the run if needed); False (and the buffer kept)
        when the server failed."""
        self._epochs_since_flush = 0
        self._last_flush = self._clock()
        return self._try_deliver(final=False)

    def end(
        self,
        state: TrialState,
        best_epoch: int | None = None,
        best_value: float | None = None,
        error: str | None = None,
    ) -> TrialEnd:
        """Flush, tag the outcome and end the run as FINISHED, KILLED (pruned) or FAILED.

        `best_value` is the trial's metric at `best_epoch` (for a pruned trial too: not its last
        value); both are logged as metrics, `best_<metric>` and `best_epoch` (step 0), and as
        tags `mfstudy.best_value` and `mfstudy.best_epoch`. Never raises because of the server:
        what cannot be sent is spooled (see :func:`replay_spool`) and reported in the returned
        :class:`TrialEnd`.
        """
        if self.result is not None:
            return self.result
        if state not in _STATUS:
            raise ValueError(f"state must be one of {sorted(_STATUS)}, got {state!r}")
        tags = {"mfstudy.state": state, "mfstudy.pruned": str(state == "pruned").lower()}
        if best_epoch is not None:
            tags["mfstudy.best_epoch"] = str(int(best_epoch))
        if best_value is not None:
            tags["mfstudy.best_value"] = repr(float(best_value))
        if error:
            tags["mfstudy.error"] = " ".join(str(error).split())[:MAX_TAG_VAL_LENGTH]
        self._pending.tags.update(tags)
        now = _now_ms()
        if best_value is not None:
            self._pending.metrics.append([self.best_key, float(best_value), now, 0])
        if best_epoch is not None:
            self._pending.metrics.append(["best_epoch", float(int(best_epoch)), now, 0])
        self._pending.end_status = _STATUS[state]
        self._pending.end_time = _now_ms()

        if self._try_deliver(final=True):
            self.result = TrialEnd(self.run_id, delivered=True)
            return self.result
        spool_file = self._spool() if self.spool_dir is not None else None
        where = f"spooled to {spool_file}" if spool_file else "lost (no spool folder given)"
        _log.warning(
            "trial %d: tracking server unavailable (%s); its run data was %s",
            self.trial_number,
            self.last_error,
            where,
        )
        self.result = TrialEnd(self.run_id, False, spool_file, self.last_error)
        return self.result

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Only a run not ended explicitly is ended here; an exception marks it failed.
        if self.result is None:
            if exc is None:
                self.end("complete")
            else:
                self.end("failed", error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ internals

    def _try_deliver(self, final: bool) -> bool:
        try:
            self._pending.deliver(self._transport, final=final)
        except Exception as exc:  # any backend failure: keep the data, never fail the trial
            self.last_error = short_reason(exc)
            _log.debug("trial %d: delivery failed: %s", self.trial_number, self.last_error)
            return False
        self.last_error = None
        return True

    def _spool(self) -> Path:
        assert self.spool_dir is not None
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{self.parent_run_id[:12]}-trial-{self.trial_number:04d}"
        path = self.spool_dir / f"{stem}.json"
        n = 0
        while path.exists():
            n += 1
            path = self.spool_dir / f"{stem}-{n}.json"
        _write_spool(path, self._pending)
        return path


def _write_spool(path: Path, pending: _Pending) -> None:
    """Write atomically so a crash never leaves a half-written spool file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": _SPOOL_VERSION, **asdict(pending)}))
    os.replace(tmp, path)


@dataclass(frozen=True)
class ReplayReport:
    """Spool files delivered (and deleted) and those still failing, with the reason."""

    sent: list[Path]
    failed: dict[Path, str]


def replay_spool(uri: str, spool_dir: Path, policy: FailurePolicy | None = None) -> ReplayReport:
    """Send every spooled trial record in `spool_dir` to `uri`; delete each one delivered.

    Safe to call repeatedly (at the end of a study and on resume): a record is rewritten after
    each accepted part, so a second attempt neither creates a second run nor resends metrics
    the server already acknowledged. A missing folder is an empty spool.
    """
    sent: list[Path] = []
    failed: dict[Path, str] = {}
    folder = Path(spool_dir)
    if not folder.is_dir():
        return ReplayReport(sent, failed)
    transport = Transport(uri, policy)
    for path in sorted(folder.glob("*.json")):
        try:
            raw = json.loads(path.read_text())
            if raw.pop("version", None) != _SPOOL_VERSION:
                raise ValueError("unknown spool format")
            pending = _Pending(**raw)
        except (OSError, ValueError, TypeError) as exc:
            failed[path] = f"unreadable spool file: {exc}"
            continue
        try:
            pending.deliver(transport, final=True)
        except Exception as exc:
            _write_spool(path, pending)  # keep progress (e.g. the run id just created)
            failed[path] = short_reason(exc)
            continue
        path.unlink()
        sent.append(path)
    return ReplayReport(sent, failed)
