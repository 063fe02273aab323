"""The recommender as an MLflow pyfunc model, the registry and the `champion` alias.

The logged model's artifacts are a saved `Recommender` folder (JSON + NumPy, no pickled code)
and the raw-id maps as CSV, with their sha256 recorded at registration. mfstudy's own loading
path (:func:`load_recommender`) reads only those files, verified; the pyfunc wrapper (code,
models-from-code) is for MLflow's serving, which imports it from the artifact store.

MLflow 3: models are logged with `name=` (a LoggedModel linked to the run), and the registry
uses aliases, not stages. A version's holdout score is stored in its tags (`mfstudy.score`,
`mfstudy.holdout`) so the next retrain can compare itself with the champion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from mfstudy.models import Recommender
from mfstudy.tracking._errors import HoldoutMismatchError, TrackingError, UnknownIdError
from mfstudy.tracking._recommender import (
    ITEMS_CSV,
    RECOMMENDATION_COLUMNS,
    USERS_CSV,
    LoadedRecommender,
    write_id_maps,
)
from mfstudy.tracking._transport import short_reason

__all__ = [
    "CHAMPION",
    "LoggedRecommender",
    "RecommenderPyfunc",
    "load_recommender",
    "log_recommender",
    "set_champion_if_better",
]

_log = logging.getLogger(__name__)

CHAMPION = "champion"
SCORE_TAG = "mfstudy.score"
#: sha256 of every data file mfstudy reads back (JSON {path in the model: digest}), recorded
#: on the version and the logged model at registration and checked before anything is read.
CHECKSUMS_TAG = "mfstudy.checksums"
#: The data files of a logged recommender, relative to the model's root: MLflow puts pyfunc
#: artifacts under `artifacts/`; the model folder holds `model.json` and NumPy archives.
_DATA_ROOT = "artifacts"
HOLDOUT_TAG = "mfstudy.holdout"
DEFAULT_K = 10


class RecommenderPyfunc(PythonModel):
    """pyfunc wrapper: DataFrame with `user_id` (and optional per-row `k`) -> top-k rows.

    Output columns: user_id, rank (1 = best), item_id, item_name, score. Params: `k` (default
    10) and `exclude_seen` (default True). Unknown user ids get no rows and a logged warning
    naming them, so one stranger does not fail a whole batch; `params={"strict": True}` makes
    them an :class:`UnknownIdError` instead.
    """

    def __init__(self) -> None:
        self._rec: LoadedRecommender | None = None

    def load_context(self, context: PythonModelContext) -> None:
        art = context.artifacts
        self._rec = LoadedRecommender.from_folder(
            Path(art["model"]), Path(art["users"]), Path(art["items"]), source="the logged model"
        )

    @property
    def recommender(self) -> LoadedRecommender:
        if self._rec is None:
            raise RuntimeError("model context not loaded")
        return self._rec

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        params = params or {}
        frame = pd.DataFrame(model_input)
        if "user_id" not in frame.columns:
            raise UnknownIdError("model input needs a 'user_id' column")
        k_default = int(params.get("k", DEFAULT_K))
        k = frame["k"].fillna(k_default).astype(int) if "k" in frame.columns else k_default
        out, unknown = self.recommender.recommend_many(
            frame["user_id"].to_numpy(), k, exclude_seen=bool(params.get("exclude_seen", True))
        )
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            msg = f"{len(unknown)} unknown user id(s) got no recommendations: {shown}{more}"
            if params.get("strict", False):
                raise UnknownIdError(msg)
            _log.warning(msg)
        return out[RECOMMENDATION_COLUMNS]


@dataclass(frozen=True)
class LoggedRecommender:
    """Where the model went: its model URI, and the registry version if registered."""

    model_uri: str
    model_id: str | None
    registered_name: str | None = None
    version: str | None = None

    @property
    def registry_uri(self) -> str | None:
        """`models:/<name>/<version>`, or None when not registered."""
        if self.registered_name is None or self.version is None:
            return None
        return f"models:/{self.registered_name}/{self.version}"


@contextmanager
def _scoped_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for one call, then restore the previous state.

    `Model.log` has no tracking-URI argument; this is the one place the package touches the
    global URI. MLflow's own helper unsets `MLFLOW_TRACKING_URI` on exit even when the user
    had set it, so that variable is restored here as well. Not thread-safe: model logging
    happens once per study, in the study's main process.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _requirements() -> list[str]:
    """Pinned requirements, so MLflow does not infer them by loading the model in a subprocess."""
    pins = []
    for dist in ("mlflow", "numpy", "scipy", "pandas", "mfstudy"):
        try:
            pins.append(f"{dist}=={dist_version(dist)}")
        except PackageNotFoundError:
            pins.append(dist)
    return pins


def _signature() -> ModelSignature:
    """Input `user_id` (string) plus optional per-row `k`; params k, exclude_seen, strict.

    Written out rather than inferred from the example: an inferred schema would make `k`
    required or, left out, drop the column before `predict` sees it.
    """
    inputs = Schema([ColSpec("string", "user_id"), ColSpec("long", "k", required=False)])
    params = ParamSchema(
        [
            ParamSpec("k", "long", DEFAULT_K),
            ParamSpec("exclude_seen", "boolean", True),
            ParamSpec("strict", "boolean", False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "user_id"),
            ColSpec("long", "rank"),
            ColSpec("string", "item_id"),
            ColSpec("string", "item_name"),
            ColSpec("double", "score"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def log_recommender(
    uri: str,
    run_id: str,
    model_dir: Path,
    item_ids: Sequence[object] | np.ndarray,
    item_names: Sequence[object] | np.ndarray | None,
    user_ids: Sequence[object] | np.ndarray,
    registered_name: str | None = None,
    *,
    score: float | None = None,
    holdout: str | None = None,
    tags: Mapping[str, Any] | None = None,
    name: str = "recommender",
) -> LoggedRecommender:
    """Log the saved model in `model_dir` as a pyfunc model of run `run_id`; maybe register it.

    The model is loaded and checked against the id maps first, then logged (with an input
    example and signature), and only then registered, so a failure leaves no registry entry.
    `score`/`holdout` are stored as tags of the new version for :func:`set_champion_if_better`,
    with `tags` (e.g. the data card of the training data), all set as the version is created.
    """
    model_dir = Path(model_dir)
    rec = LoadedRecommender(Recommender.load(model_dir), user_ids, item_ids, item_names)
    example = pd.DataFrame({"user_id": rec.user_ids[:2].astype(str)})
    signature = _signature()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        with tempfile.TemporaryDirectory(prefix="mfstudy-model-") as tmp:
            users_csv, items_csv = write_id_maps(
                Path(tmp), rec.user_ids, rec.item_ids, rec.item_names
            )
            checksums = json.dumps(_data_checksums(model_dir, users_csv, items_csv))
            # MLflow files a new LoggedModel under the *active* experiment (the Default one,
            # with its artifacts in ./mlruns) rather than the run's, so create it here.
            logged = client.create_logged_model(
                experiment_id=client.get_run(run_id).info.experiment_id,
                name=name,
                source_run_id=run_id,
                tags={"mfstudy.family": rec.model.family, CHECKSUMS_TAG: checksums},
                model_type="recommender",
            )
            with _scoped_tracking_uri(uri):
                info = Model.log(
                    artifact_path=None,  # MLflow 3: `name` replaces it, but it is positional
                    name=name,
                    flavor=mlflow.pyfunc,
                    flavor_name="pyfunc",
                    python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                    artifacts={
                        "model": str(model_dir),
                        "users": str(users_csv),
                        "items": str(items_csv),
                    },
                    signature=signature,
                    input_example=example,
                    pip_requirements=_requirements(),
                    run_id=run_id,
                    model_id=logged.model_id,
                )
        if registered_name is None:
            return LoggedRecommender(info.model_uri, info.model_id)
        version_tags = {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in (tags or {}).items()}
        version_tags[CHECKSUMS_TAG] = checksums
        if score is not None:
            version_tags[SCORE_TAG] = repr(float(score))
        if holdout is not None:
            version_tags[HOLDOUT_TAG] = str(holdout)
        _ensure_registered_model(client, registered_name)
        # The registry resolves a `models:/m-...` source through the *global* tracking URI
        # (a stray ./mlflow.db otherwise), so the scope covers registration too.
        with _scoped_tracking_uri(uri):
            mv = client.create_model_version(
                registered_name,
                source=info.model_uri,
                run_id=run_id,
                tags=version_tags,
                model_id=info.model_id,
            )
    except MlflowException as exc:
        reason = short_reason(exc)
        raise TrackingError(f"could not log the model of run {run_id}: {reason}") from exc
    return LoggedRecommender(info.model_uri, info.model_id, registered_name, str(mv.version))


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name)
        except MlflowException as again:  # created concurrently by another process
            if again.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


#: What the registry answers when a model has no champion (no such model, no such alias).
_NO_CHAMPION = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _read_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version alias `champion` of registered model `name` points at, None when there is no
    such model or alias; any other registry error is a one-line :class:`TrackingError`. The one
    place the champion is read (:func:`set_champion_if_better`, `champion_version`)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in _NO_CHAMPION:
            return None
        raise TrackingError(
            f"could not read the champion of model {name!r}: {short_reason(exc)}"
        ) from exc


def set_champion_if_better(
    uri: str,
    name: str,
    version: str | int,
    score: float,
    higher_is_better: bool = True,
    holdout: str | None = None,
) -> bool:
    """Point alias `champion` at `version` if there is no champion or `score` beats its score.

    The candidate's score (and holdout) are written to its version tags first, so it can be
    compared with later. Scores measured on different holdouts are not comparable: if both the
    champion and the candidate name a holdout and they differ, a :class:`TrackingError` asks
    for the champion to be re-scored rather than guessing. A champion without a score tag
    loses (it cannot be shown to be better). Returns whether the alias moved. Read, compare and
    move are separate registry calls: callers serialise them (`mfstudy.workdir.champion_lock`).
    """
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = str(version)
    try:
        client.set_model_version_tag(name, version, SCORE_TAG, repr(float(score)))
        if holdout is not None:
            client.set_model_version_tag(name, version, HOLDOUT_TAG, str(holdout))
        champ = _read_champion(client, name)
        if champ is not None and str(champ.version) == version:
            return True
        if champ is not None:
            champ_holdout = champ.tags.get(HOLDOUT_TAG)
            if holdout is not None and champ_holdout is not None and champ_holdout != holdout:
                raise HoldoutMismatchError(
                    f"champion of {name!r} (version {champ.version}) was scored on holdout "
                    f"{champ_holdout!r}, version {version} on {holdout!r}: scores are not "
                    "comparable; re-score the champion on the same holdout"
                )
            raw = champ.tags.get(SCORE_TAG)
            if raw is not None:
                champ_score = float(raw)
                better = score > champ_score if higher_is_better else score < champ_score
                if not better:
                    return False
        client.set_registered_model_alias(name, CHAMPION, version)
    except MlflowException as exc:
        raise TrackingError(
            f"could not update the champion of model {name!r}: {short_reason(exc)}"
        ) from exc
    return True


_REGISTRY_URI = re.compile(
    r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))(?P<rest>/.*)?"
)
_LOGGED_MODEL_URI = re.compile(r"models:/(?P<id>m-[0-9a-f]+)(?P<rest>/.*)?")


def load_recommender(model_uri: str, uri: str | None = None) -> LoadedRecommender:
    """Load a logged recommender (`models:/name@champion`, `models:/name/3`, `models:/<id>`).

    Reads data only: the model's JSON and NumPy files and the id-map CSVs, each checked
    against the sha256 recorded at registration before it is read. The pyfunc wrapper stored
    beside them (Python code, for MLflow serving) is neither downloaded nor imported, so
    whoever can write to the artifact store cannot run code on the machines that load the
    champion. A file that does not match its checksum is a one-line :class:`TrackingError`.
    `uri` is the tracking/registry URI to resolve `model_uri` against.
    """
    try:
        location, recorded = _resolve_model(model_uri, uri)
        with tempfile.TemporaryDirectory(prefix="mfstudy-load-") as tmp:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{location.rstrip('/')}/{_DATA_ROOT}",
                    dst_path=tmp,
                    tracking_uri=uri,
                    registry_uri=uri,
                )
            )
            _verify(model_uri, local, recorded)
            # The saved Recommender folder (`Recommender.save` writes its model.json).
            (model_dir,) = {p.parent for p in local.glob("*/model.json")}
            rec = LoadedRecommender.from_folder(
                model_dir, local / USERS_CSV, local / ITEMS_CSV, source=model_uri
            )
    except MlflowException as exc:
        raise TrackingError(f"could not load model {model_uri}: {short_reason(exc)}") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise TrackingError(f"{model_uri} is not a readable mfstudy recommender ({exc})") from exc
    return rec


def _resolve_model(model_uri: str, uri: str | None) -> tuple[str, dict[str, str] | None]:
    """The artifact location of `model_uri` and the checksums recorded for it (None for a
    model registered before they were)."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags: dict[str, str] = {}
    match = _REGISTRY_URI.fullmatch(model_uri)
    if match is not None:
        if match["alias"] is not None:
            mv = client.get_model_version_by_alias(match["name"], match["alias"])
        else:
            mv = client.get_model_version(match["name"], match["version"])
        tags = dict(mv.tags)
        model_uri = str(mv.source) + (match["rest"] or "")
    logged = _LOGGED_MODEL_URI.fullmatch(model_uri)
    if logged is None:
        raise TrackingError(
            f"{model_uri}: give a registered model (models:/<name>@<alias>, models:/<name>/<v>) "
            "or a logged model (models:/m-...)"
        )
    model = client.get_logged_model(logged["id"])
    # The version's own tag first: the registry is where the champion is read from.
    raw = tags.get(CHECKSUMS_TAG) or model.tags.get(CHECKSUMS_TAG)
    return model.artifact_location, (json.loads(raw) if raw else None)


def _data_checksums(model_dir: Path, users_csv: Path, items_csv: Path) -> dict[str, str]:
    # MLflow stores the folder under its own name (`artifacts/<name>/...`).
    model_dir = Path(model_dir)
    files = {f"{model_dir.name}/{p.name}": p for p in sorted(model_dir.iterdir()) if p.is_file()}
    files[USERS_CSV] = users_csv
    files[ITEMS_CSV] = items_csv
    return {name: _sha256(path) for name, path in files.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _verify(model_uri: str, local: Path, recorded: dict[str, str] | None) -> None:
    """Every file read back must be one recorded at registration, with the same digest."""
    found = {str(p.relative_to(local)): p for p in sorted(local.rglob("*")) if p.is_file()}
    if recorded is None:
        _log.warning(
            "%s was registered before mfstudy recorded checksums: its data files are read "
            "(no code is run) but cannot be verified; register it again to protect it",
            model_uri,
        )
        return
    for name in sorted(set(found) | set(recorded)):
        if name not in recorded:
            raise TrackingError(
                f"{model_uri}: {_DATA_ROOT}/{name} was not there at registration; refusing "
                "to load a tampered model"
            )
        if name not in found:
            raise TrackingError(f"{model_uri}: {_DATA_ROOT}/{name} is missing from the model")
        if _sha256(found[name]) != recorded[name]:
            raise TrackingError(
                f"{model_uri}: {_DATA_ROOT}/{name} does not match the checksum recorded at "
                "registration; refusing to load a tampered model"
            )
