"""The study's parent run: one experiment per study, one parent run per study, resumable.

Re-running a study must continue its record, not start a second one, so the parent run is
found again by its `mfstudy.study` tag. MLflow params are immutable, so on resume only params
that did not exist yet are logged; changed values are listed in a tag and the new config is
written as the `config.yaml` artifact.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from mfstudy.tracking._errors import TrackingError
from mfstudy.tracking._params import clip_param_key, clip_param_value, flatten
from mfstudy.tracking._tags import check_tags
from mfstudy.tracking._transport import FailurePolicy, Transport, check_reachable, short_reason
from mfstudy.tracking._uri import local_artifact_root, redact_uri

__all__ = [
    "DATA_METRICS",
    "StudyRun",
    "data_metrics",
    "fail_run",
    "fail_trial_run",
    "find_study_run",
    "finish_study",
    "log_file",
    "start_study",
]

_log = logging.getLogger(__name__)

STUDY_TAG = "mfstudy.study"
ROLE_TAG = "mfstudy.role"
_END_STATUS = {"complete": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: The experiment tag MLflow's UI reads for what kind of work an experiment holds, and its
#: value for model training (the others: `genai_development`, `finetuning`, ...).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: The parent run's data metrics: name -> where it is in the data statistics
#: (`mfstudy.prepare` writes them; `stats.json` on the run has them all).
DATA_METRICS: dict[str, tuple[str, ...]] = {
    "data.rows_read": ("rows_read",),
    "data.duplicates_dropped": ("duplicates_dropped",),
    "data.users_before_threshold": ("before_threshold", "users"),
    "data.items_before_threshold": ("before_threshold", "items"),
    "data.interactions_before_threshold": ("before_threshold", "interactions"),
    "data.users": ("after_threshold", "users"),
    "data.items": ("after_threshold", "items"),
    "data.interactions": ("after_threshold", "interactions"),
    "data.sparsity_pct": ("after_threshold", "sparsity_pct"),
    "data.train_interactions": ("split", "train_interactions"),
    "data.test_interactions": ("split", "test_interactions"),
    "data.test_users": ("split", "evaluated_users"),
}


@dataclass(frozen=True)
class StudyRun:
    """The parent run of a study (plain ids: pass it to worker processes as is)."""

    uri: str
    experiment_id: str
    run_id: str
    resumed: bool


def _now_ms() -> int:
    return int(time.time() * 1000)


def _experiment_id(client: MlflowClient, name: str, study_name: str) -> str:
    """The id of experiment `name`, created if needed, with the experiment kind set.

    The kind (tag `mlflow.experimentKind`) is set when mfstudy creates the experiment, and on
    an existing one that has none; a kind already there (a user's choice) is left alone.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            root = local_artifact_root(client.tracking_uri)
            return client.create_experiment(
                name,
                artifact_location=root,
                tags={STUDY_TAG: study_name, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as exc:  # created concurrently
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
            assert exp is not None
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted; restore it or choose another name"
        )
    if not exp.tags.get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _find_parent(client: MlflowClient, experiment_id: str, study_name: str) -> str | None:
    if "'" in study_name:
        raise TrackingError(f"study name {study_name!r} must not contain a single quote")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STUDY_TAG}` = '{study_name}' and tags.`{ROLE_TAG}` = 'study'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0].info.run_id if runs else None


def find_study_run(uri: str, experiment_name: str, study_name: str) -> str | None:
    """The id of study `study_name`'s parent run at `uri`, or None; creates nothing."""
    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None or exp.lifecycle_stage == "deleted":
            return None
        return _find_parent(client, exp.experiment_id, study_name)
    except MlflowException as exc:
        raise TrackingError(
            f"could not look up study {study_name!r} in MLflow at {redact_uri(uri)}: "
            f"{short_reason(exc)}"
        ) from exc


def data_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """The compact set of data metrics (:data:`DATA_METRICS`) found in `stats`: sizes before
    and after thresholding, sparsity, and the split's train and test sizes. Keys missing from
    `stats` (or not numbers) are left out."""
    out: dict[str, float] = {}
    for name, path in DATA_METRICS.items():
        value: Any = stats
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                out[name] = float(value)
    return out


def start_study(
    uri: str,
    experiment_name: str,
    study_name: str,
    config: dict[str, Any],
    stats: dict[str, Any],
    stats_path: Path | None = None,
    tags: dict[str, str] | None = None,
) -> StudyRun:
    """Create (or find again) the study's parent run and log config and data statistics.

    The config goes in once, as params (dotted keys, clipped to MLflow's limits; pass it with
    secrets removed, `mfstudy.secrets.public_config`) and as `config.yaml`; the data
    statistics as a dozen metrics `data.*` (:func:`data_metrics`) and in full as `stats.json`
    (`stats_path`, or the stats dict). `tags` are set on the run, updated when it is found
    again (ValueError, before anything is sent, for one mfstudy sets itself: see
    `_tags.check_tags`). Fails fast with :class:`TrackingError` when the server is unreachable.
    """
    extra_tags = check_tags(tags)
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        exp_id = _experiment_id(client, experiment_name, study_name)
        run_id = _find_parent(client, exp_id, study_name)
        resumed = run_id is not None
        if run_id is None:
            run = client.create_run(
                exp_id, run_name=study_name, tags={STUDY_TAG: study_name, ROLE_TAG: "study"}
            )
            run_id = run.info.run_id
            existing: dict[str, str] = {}
        else:
            run = client.get_run(run_id)
            existing = dict(run.data.params)
            client.update_run(run_id, status="RUNNING")
        _log_config_and_stats(client, run_id, config, stats, stats_path, existing, extra_tags)
    except MlflowException as exc:
        raise TrackingError(
            f"could not start study {study_name!r} in MLflow at {redact_uri(uri)}: "
            f"{short_reason(exc)}"
        ) from exc
    return StudyRun(uri, exp_id, run_id, resumed)


def _log_config_and_stats(
    client: MlflowClient,
    run_id: str,
    config: dict[str, Any],
    stats: dict[str, Any],
    stats_path: Path | None,
    existing: dict[str, str],
    extra_tags: dict[str, str],
) -> None:
    params = {clip_param_key(k): clip_param_value(v) for k, v in flatten(config).items()}
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    new = {k: v for k, v in params.items() if k not in existing}
    tags = [RunTag(k, v) for k, v in extra_tags.items()]
    if existing:
        resumes = int(client.get_run(run_id).data.tags.get("mfstudy.resumes", "0")) + 1
        tags.append(RunTag("mfstudy.resumes", str(resumes)))
    if changed:
        _log.warning("study resumed with changed config keys (not re-logged): %s", changed)
        tags.append(RunTag("mfstudy.config_changed", ",".join(changed)[:MAX_TAG_VAL_LENGTH]))
    now = _now_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in data_metrics(stats).items()],
        params=[Param(k, v) for k, v in new.items()],
        tags=tags,
        synchronous=True,
    )
    client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
    # Always named stats.json, whatever the file given is called.
    text = (
        Path(stats_path).read_text()
        if stats_path is not None
        else json.dumps(stats, indent=2, default=str)
    )
    client.log_text(run_id, text, "stats.json")


def finish_study(
    uri: str,
    run_id: str,
    state: Literal["complete", "failed", "interrupted"] = "complete",
    policy: FailurePolicy | None = None,
) -> None:
    """End the parent run: FINISHED, FAILED or KILLED (interrupted; resumable later).

    Sent with the trials' short failure policy, not `MlflowClient`'s minutes of retries: this
    is also the last call of a study that failed because the server went away, and it must
    not hold the error back for minutes.
    """
    try:
        Transport(uri, policy).end_run(run_id, _END_STATUS[state], _now_ms())
    except Exception as exc:
        raise TrackingError(f"could not end study run {run_id}: {short_reason(exc)}") from exc


def fail_run(uri: str, run_id: str, reason: str) -> None:
    """End a run FAILED with `reason` as tag `mfstudy.error` (a trial whose worker crashed)."""
    client = MlflowClient(tracking_uri=uri)
    try:
        client.set_tag(run_id, "mfstudy.error", reason[:MAX_TAG_VAL_LENGTH])
        client.set_tag(run_id, "mfstudy.state", "failed")
        client.set_terminated(run_id, status="FAILED")
    except MlflowException as exc:
        raise TrackingError(f"could not mark run {run_id} failed: {short_reason(exc)}") from exc


def fail_trial_run(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    trial_number: int,
    run_id: str | None,
    reason: str,
) -> list[str]:
    """End FAILED the nested run of a trial whose worker crashed; returns the run ids.

    A worker killed after creating its run but before Optuna stored the run id leaves a run
    known only by its tags, and one killed before creating it leaves none; the first is found
    by its trial number, and for the second a FAILED run is created, so that every Optuna
    trial still has exactly one run.
    """
    client = MlflowClient(tracking_uri=uri)
    number = str(int(trial_number))
    try:
        if run_id is not None:
            ids = [run_id]
        else:
            found = client.search_runs(
                [experiment_id],
                filter_string=(
                    f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
                    f"and tags.`mfstudy.trial_number` = '{number}'"
                ),
                run_view_type=ViewType.ACTIVE_ONLY,
            )
            ids = [r.info.run_id for r in found]
        if not ids:
            run = client.create_run(
                experiment_id,
                run_name=f"trial-{int(trial_number):04d}",
                tags={
                    "mlflow.parentRunId": parent_run_id,
                    ROLE_TAG: "trial",
                    "mfstudy.trial_number": number,
                },
            )
            ids = [run.info.run_id]
    except MlflowException as exc:
        raise TrackingError(
            f"could not find the run of crashed trial {number}: {short_reason(exc)}"
        ) from exc
    for rid in ids:
        fail_run(uri, rid, reason)
    return ids


def log_file(uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Attach a local file to a run as an artifact."""
    try:
        MlflowClient(tracking_uri=uri).log_artifact(run_id, str(path), artifact_path)
    except MlflowException as exc:
        raise TrackingError(f"could not log {Path(path).name}: {short_reason(exc)}") from exc
