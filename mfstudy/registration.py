"""Registering a study's result: the best trial refitted on the full data, logged, registered.

:func:`register_best` is the end of a study: :func:`refit_best` fits the best trial's model on
all of the prepared data (train + test) for its best epoch count, :func:`log_similarities`
attaches its item-to-item neighbours to the run, and :func:`register_model` logs it as a pyfunc
model, registers a new version (tagged with its score, holdout and data card,
:func:`data_summary`) and moves alias `champion` to it if it beats the current one on the same
holdout. The nightly retraining (`mfstudy.retrain`) registers its versions with the same
:func:`refit_best`, :func:`log_similarities` and :func:`log_model_version`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfstudy.config import StudyConfig
from mfstudy.data import input_checksum
from mfstudy.errors import StudyError
from mfstudy.models import DivergedError, Recommender, model_class
from mfstudy.prepare import Prepared, data_fingerprint, holdout_fingerprint
from mfstudy.threads import fit_capped
from mfstudy.tuning import BestTrial, build_model, constructor_params
from mfstudy.workdir import champion_lock

__all__ = [
    "data_summary",
    "log_model_version",
    "log_similarities",
    "refit_best",
    "register_best",
    "register_model",
    "similar_items_table",
]

log = logging.getLogger("mfstudy.registration")


def refit_best(best: BestTrial, prepared: Prepared, cfg: StudyConfig, threads: int) -> Recommender:
    """The best trial's model fitted on the full data (train + test) for its best epoch count.

    Raises StudyError if training diverges: a NaN model is never registered.
    """
    params = dict(best.params)
    if "iterations" in constructor_params(model_class(best.family)):
        params["iterations"] = best.best_epoch
    model = build_model(cfg, best.family, params, threads)
    try:
        fit_capped(model, prepared.full, threads)
    except DivergedError as exc:
        raise StudyError(
            f"retraining trial {best.number} on the full data diverged: {exc}"
        ) from None
    p, q = model.scoring_factors()
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise StudyError(f"retraining trial {best.number} produced non-finite factors")
    return model


def similar_items_table(model: Recommender, prepared: Prepared, k: int) -> pd.DataFrame:
    """Top-`k` cosine neighbours of every item, with ids and names (the blog's thumbnails)."""
    inter = prepared.interactions
    n_items = inter.n_items
    k = min(k, n_items - 1)
    items, scores = model.similar_items(np.arange(n_items), k)
    names = inter.item_names if inter.item_names is not None else inter.item_ids.astype(str)
    src = np.repeat(np.arange(n_items), k)
    dst = items.ravel()
    ok = dst >= 0
    return pd.DataFrame(
        {
            "item_id": inter.item_ids[src[ok]],
            "item_name": names[src[ok]],
            "rank": np.tile(np.arange(1, k + 1), n_items)[ok],
            "similar_item_id": inter.item_ids[dst[ok]],
            "similar_item_name": names[dst[ok]],
            "cosine": scores.ravel()[ok],
        }
    )


def register_best(
    cfg: StudyConfig,
    best: BestTrial,
    prepared: Prepared,
    run_id: str,
    uri: str,
    threads: int,
) -> tuple[str, str, bool]:
    """Retrain the best trial on the full data, log it with its item similarities, register it
    and move alias `champion` to it if it beats the current one on the same holdout.

    Returns (registered name, version, whether it became champion). If retraining fails,
    nothing is registered.
    """
    model = refit_best(best, prepared, cfg, threads)
    log_similarities(cfg, model, prepared, run_id, uri)
    return register_model(cfg, best, model, prepared, run_id, uri)


def log_similarities(
    cfg: StudyConfig, model: Recommender, prepared: Prepared, run_id: str, uri: str
) -> None:
    """Attach the item-to-item similarity table (`similar_items.csv`) to run `run_id`."""
    from mfstudy import tracking

    with tempfile.TemporaryDirectory() as tmp:
        sim_path = Path(tmp) / "similar_items.csv"
        similar_items_table(model, prepared, cfg.study.similar_items_k).to_csv(
            sim_path, index=False
        )
        tracking.log_file(uri, run_id, sim_path)


def log_model_version(
    model: Recommender,
    prepared: Prepared,
    run_id: str,
    uri: str,
    name: str,
    score: float,
    holdout: str,
    *,
    cfg: StudyConfig,
    tags: dict[str, Any] | None = None,
) -> str:
    """Log `model` with the id maps of `prepared` as a pyfunc model of run `run_id`, register
    it as a new version of `name` tagged with its score, holdout, the data card of `prepared`
    (:func:`data_summary`, what the nightly retraining's data gate compares with) and `tags`;
    returns the version."""
    from mfstudy import tracking
    from mfstudy.datagate import card_tags

    inter = prepared.interactions
    version_tags = {**card_tags(data_summary(prepared, cfg)), **(tags or {})}
    with tempfile.TemporaryDirectory() as tmp:
        logged = tracking.log_recommender(
            uri,
            run_id,
            model.save(Path(tmp) / "model"),
            item_ids=inter.item_ids,
            item_names=inter.item_names,
            user_ids=inter.user_ids,
            registered_name=name,
            score=score,
            holdout=holdout,
            tags=version_tags,
        )
    return str(logged.version)


def data_summary(prepared: Prepared, cfg: StudyConfig) -> dict[str, Any]:
    """The data card of `prepared` (`mfstudy.datagate`): rows read, users, items,
    interactions, interactions per user, the schema read, and the data's, holdout's and input
    files' fingerprints."""
    from mfstudy.datagate import data_card

    inter = prepared.interactions
    return data_card(
        full=prepared.full,
        stats=prepared.stats,
        n_users=inter.n_users,
        n_items=inter.n_items,
        fingerprint=data_fingerprint(prepared),
        holdout=holdout_fingerprint(prepared),
        input_checksum=input_checksum(cfg),
    )


def register_model(
    cfg: StudyConfig,
    best: BestTrial,
    model: Recommender,
    prepared: Prepared,
    run_id: str,
    uri: str,
) -> tuple[str, str, bool]:
    """Log the retrained `model` as a pyfunc model of run `run_id`, register it and move alias
    `champion` to it if it beats the current one on the same holdout."""
    from mfstudy import tracking

    name = cfg.study.register_as or cfg.name
    holdout = holdout_fingerprint(prepared)
    version = log_model_version(model, prepared, run_id, uri, name, best.value, holdout, cfg=cfg)
    try:
        # Read-compare-move is not atomic in the registry: two processes registering to this
        # model at once (one study closing twice, or its `<name>-<fingerprint>` continuation,
        # or the nightly retraining) could both read the old champion and the worse one move
        # the alias last.
        with champion_lock(cfg):
            promoted = tracking.set_champion_if_better(
                uri, name, version, best.value, cfg.direction == "maximize", holdout=holdout
            )
    except tracking.HoldoutMismatchError as exc:
        # A champion scored on other data: only the retraining flow, which re-scores both on
        # one fresh holdout, may replace it.
        log.warning("champion unchanged: %s", exc)
        promoted = False
    return name, version, promoted
