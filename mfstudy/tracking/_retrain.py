"""Registry and run operations of the nightly retraining (`mfstudy.retrain`).

The retraining compares a new version with the champion on a fresh holdout, so it needs what
the study path does not: the champion's version and tags, a run of its own (tag
`mfstudy.role=retrain`) holding both scores, tags on versions, and moving the alias by an
explicit decision rather than by :func:`set_champion_if_better`'s strict comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from mfstudy.tracking._errors import TrackingError
from mfstudy.tracking._model import CHAMPION, _read_champion
from mfstudy.tracking._params import clip_param_key, clip_param_value
from mfstudy.tracking._study import ROLE_TAG, STUDY_TAG, _experiment_id
from mfstudy.tracking._transport import check_reachable, short_reason

__all__ = [
    "ChampionVersion",
    "champion_version",
    "latest_version_tagged",
    "log_retrain_run",
    "move_champion",
    "tag_version",
]


@dataclass(frozen=True)
class ChampionVersion:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        """A model URI pinned to this version (the alias may move meanwhile)."""
        return f"models:/{self.name}/{self.version}"


def champion_version(uri: str, name: str) -> ChampionVersion | None:
    """The version alias `champion` of registered model `name` points at, or None."""
    check_reachable(uri)
    mv = _read_champion(MlflowClient(tracking_uri=uri, registry_uri=uri), name)
    if mv is None:
        return None
    return ChampionVersion(name, str(mv.version), mv.run_id, dict(mv.tags))


def latest_version_tagged(uri: str, name: str, key: str, value: str) -> ChampionVersion | None:
    """The newest version of model `name` whose tag `key` is `value`, or None."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    quoted = value.replace("'", "")  # fingerprints are hex: nothing to escape, nothing lost
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{key}` = '{quoted}'")
    except MlflowException as exc:
        raise TrackingError(
            f"could not search the versions of model {name!r}: {short_reason(exc)}"
        ) from exc
    if not found:
        return None
    mv = max(found, key=lambda v: int(v.version))
    return ChampionVersion(name, str(mv.version), mv.run_id, dict(mv.tags))


def tag_version(uri: str, name: str, version: str, tags: dict[str, Any]) -> None:
    """Set tags on a model version (values stringified)."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, str(v)[:MAX_TAG_VAL_LENGTH])
    except MlflowException as exc:
        raise TrackingError(
            f"could not tag version {version} of model {name!r}: {short_reason(exc)}"
        ) from exc


def move_champion(uri: str, name: str, version: str) -> None:
    """Point alias `champion` at `version` (the caller has decided, holding
    `mfstudy.workdir.champion_lock` since it read the champion)."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.set_registered_model_alias(name, CHAMPION, version)
    except MlflowException as exc:
        raise TrackingError(
            f"could not move the champion of model {name!r}: {short_reason(exc)}"
        ) from exc


def log_retrain_run(
    uri: str,
    experiment_name: str,
    study_name: str,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, Any],
) -> str:
    """Create a finished-later run tagged `mfstudy.role=retrain` in the study's experiment and
    log params, metrics and tags in one batch; returns its id (end it with `finish_study`)."""
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        exp_id = _experiment_id(client, experiment_name, study_name)
        run = client.create_run(
            exp_id, run_name=run_name, tags={STUDY_TAG: study_name, ROLE_TAG: "retrain"}
        )
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(clip_param_key(k), clip_param_value(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()],
            synchronous=True,
        )
    except MlflowException as exc:
        raise TrackingError(
            f"could not log the retraining of {study_name!r} in MLflow at {uri}: "
            f"{short_reason(exc)}"
        ) from exc
    return str(run.info.run_id)
