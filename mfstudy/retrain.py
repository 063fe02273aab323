"""The nightly retraining: the champion's hyperparameters refitted on fresh data, and a gate.

Data may have grown (or broken) since the champion was trained; the question each night is
whether a model trained on today's data should replace it. What is compared, precisely:

- The fresh data is prepared with the study's own config (same thresholds, split kind and
  seed), giving a fresh evaluation part `H` (the split's test entries of its evaluated users)
  and a fresh training part.
- **Candidate score**: the champion's hyperparameters and epoch count, fitted on the fresh
  training part, scored on `H`. That is exactly how study trials are scored, so the number is
  comparable with a study on the same data.
- **Champion score**: the current champion model itself cannot be scored on `H` fairly: it was
  fitted on the *old full data*, which contains those of `H`'s interactions that already
  existed (a leak: it would be scored on interactions it was trained on; with seen items
  excluded from ranking they could not even be recommended). So the champion is *re-scored*:
  its own training interactions (stored with the registered model, mapped by raw ids into the
  fresh index; users and items it never saw have no rows) minus every cell outside the fresh
  training part, fitted with the same hyperparameters and epochs, scored on the same `H`.

Both arms then differ only in their training data (the champion's vs today's, both without
`H`), which is the thing the retraining changes. The gate: the new version becomes champion
unless its score is worse than the champion's re-score by more than `retrain.tolerance`
(relative; for minimized metrics such as RMSE "worse" means higher). The model registered is
the candidate's recipe fitted on all fresh data (train + `H`), as a study's final model is.

Either way, a run tagged `mfstudy.role=retrain` in the study's experiment holds both scores
and the decision, and the new version's tags record them. With no champion yet there is nothing
to refit: :func:`retrain_champion` returns None and the caller runs a short study instead.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfstudy.config import StudyConfig
from mfstudy.errors import StudyError
from mfstudy.evaluation import evaluate_model
from mfstudy.models import DivergedError, Recommender
from mfstudy.prepare import Prepared

__all__ = [
    "RetrainResult",
    "champion_training_data",
    "fit_and_score",
    "gate",
    "retrain_champion",
]

log = logging.getLogger("mfstudy.retrain")

Decision = Literal["promoted", "kept"]
TAG = "mfstudy.retrain."


@dataclass(frozen=True)
class RetrainResult:
    """What one nightly retraining decided, and on which numbers."""

    model_name: str
    decision: Decision
    metric: str
    direction: str
    tolerance: float
    candidate_score: float
    champion_score: float
    champion_version: str
    new_version: str
    family: str
    params: dict[str, Any]
    holdout: str
    run_id: str
    tracking_uri: str
    data: dict[str, Any]
    seconds: float

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The decision as a Markdown report (the Prefect artifact)."""
        verdict = (
            f"**promoted**: `champion` now points at version {self.new_version}"
            if self.promoted
            else f"**kept**: `champion` stays at version {self.champion_version}"
        )
        rows = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in self.params.items())
        d = self.data
        return (
            f"# Nightly retraining of `{self.model_name}`\n\n{verdict}\n\n"
            f"| | {self.metric} |\n|---|---|\n"
            f"| new version {self.new_version} (fresh data) | {self.candidate_score:.6g} |\n"
            f"| champion v{self.champion_version} re-scored | {self.champion_score:.6g} |\n\n"
            f"Direction: {self.direction}; tolerance {self.tolerance:g} (relative). Both scored "
            f"on the same fresh holdout `{self.holdout}` with the champion's hyperparameters "
            f"({self.family}); see `mfstudy/retrain.py` for why the champion is re-fitted.\n\n"
            f"Fresh data: {d.get('users', '?')} users, {d.get('items', '?')} items, "
            f"{d.get('interactions', '?')} interactions.\n\n"
            f"| parameter | value |\n|---|---|\n{rows}\n\n"
            f"MLflow run `{self.run_id}` at {self.tracking_uri}\n"
        )


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def gate(candidate: float, champion: float, maximize: bool, tolerance: float) -> bool:
    """Whether `candidate` is not worse than `champion` by more than `tolerance` (relative).

    A NaN candidate never passes; a NaN champion (nothing to defend) always loses.
    """
    if math.isnan(candidate):
        return False
    if math.isnan(champion):
        return True
    slack = tolerance * abs(champion)
    return candidate >= champion - slack if maximize else candidate <= champion + slack


def champion_training_data(
    seen: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    prepared: Prepared,
) -> sp.csr_matrix:
    """The champion's training interactions (`seen`, over its own raw ids) in the fresh index,
    without any cell outside the fresh training part (the holdout, and fold-in rows).

    Users and items unknown to the fresh data are dropped; those unknown to the champion have
    empty rows/columns, exactly what the champion knows about them.
    """
    inter = prepared.interactions
    fresh_users = pd.Index(np.asarray(inter.user_ids).astype(str))
    fresh_items = pd.Index(np.asarray(inter.item_ids).astype(str))
    coo = seen.tocoo()
    u = fresh_users.get_indexer(np.asarray(user_ids).astype(str)[coo.row])
    i = fresh_items.get_indexer(np.asarray(item_ids).astype(str)[coo.col])
    ok = (u >= 0) & (i >= 0)
    shape = prepared.full.shape
    old = sp.csr_matrix(
        (coo.data[ok].astype(np.float32), (u[ok], i[ok])), shape=shape, dtype=np.float32
    )
    old.sum_duplicates()
    # Cells the fresh split keeps out of training: full minus train (binary patterns).
    outside = (prepared.full != 0).astype(np.int8) - (prepared.train != 0).astype(np.int8)
    outside.eliminate_zeros()
    drop = old.multiply(outside > 0).tocsr()
    kept = (old - drop).tocsr()
    kept.eliminate_zeros()
    return kept


def fit_and_score(
    cfg: StudyConfig,
    family: str,
    params: dict[str, Any],
    train: sp.csr_matrix,
    prepared: Prepared,
    threads: int,
) -> float:
    """`cfg.metric` of the model `params` fitted on `train`, on the fresh evaluation part.

    Scored the way study trials are (same metric, users and seen-item exclusion), with `train`
    as the model's own training matrix. A diverging fit scores NaN (it loses the gate).
    """
    from mfstudy.tuning import build_model, limit_threads

    model = build_model(cfg, family, params, threads)
    handle = limit_threads(threads)
    try:
        model.fit(train)
    except DivergedError as exc:
        log.warning("%s fit diverged: %s", family, exc)
        return float("nan")
    finally:
        del handle
    metrics = evaluate_model(model, train, prepared.test, prepared.users, cfg.evaluation)
    return float(metrics[cfg.metric])


def _recipe(model: Recommender) -> tuple[str, dict[str, Any]]:
    params = dict(model.get_params())
    params.pop("num_threads", None)  # this machine's, not the champion's
    return model.family, params


def retrain_champion(
    cfg: StudyConfig, prepared: Prepared, threads: int | None = None
) -> RetrainResult | None:
    """Refit the champion's recipe on `prepared` (fresh data), gate it and register it.

    Returns None when the model `cfg.study.register_as or cfg.name` has no champion yet (run a
    study instead). See the module docstring for exactly what is compared.
    """
    import os

    from mfstudy import tracking
    from mfstudy.study import (
        holdout_fingerprint,
        log_model_version,
        log_similarities,
        retrain,
    )
    from mfstudy.tracking._retrain import (
        champion_version,
        log_retrain_run,
        move_champion,
        tag_version,
    )
    from mfstudy.tuning import BestTrial

    start = time.perf_counter()
    threads = threads or cfg.study.threads_per_worker or (os.cpu_count() or 1)
    uri = tracking.tracking_uri_for(cfg.tracking.uri, cfg.workdir.resolve())
    name = cfg.study.register_as or cfg.name
    champ = champion_version(uri, name)
    if champ is None:
        return None
    loaded = tracking.load_recommender(champ.uri, uri)
    family, params = _recipe(loaded.model)
    maximize = cfg.direction == "maximize"
    tol = cfg.retrain.tolerance

    old_train = champion_training_data(
        loaded.model.seen_, loaded.user_ids, loaded.item_ids, prepared
    )
    champion_score = fit_and_score(cfg, family, params, old_train, prepared, threads)
    candidate_score = fit_and_score(cfg, family, params, prepared.train, prepared, threads)
    promote = gate(candidate_score, champion_score, maximize, tol)
    decision: Decision = "promoted" if promote else "kept"
    if math.isnan(candidate_score):
        raise StudyError(
            f"retraining {name!r}: the champion's parameters diverge on the fresh data; "
            "nothing registered"
        )
    holdout = holdout_fingerprint(prepared)
    data = dict(prepared.interactions.summary())
    log.info(
        "%s: candidate %s=%.6g, champion v%s re-scored %.6g -> %s",
        name,
        cfg.metric,
        candidate_score,
        champ.version,
        champion_score,
        decision,
    )

    metrics = {
        f"candidate_{cfg.metric}": candidate_score,
        f"champion_{cfg.metric}": champion_score,
        "promoted": float(promote),
        "tolerance": tol,
        **{f"data.{k}": float(v) for k, v in data.items()},
    }
    run_id = log_retrain_run(
        uri,
        cfg.tracking.experiment or cfg.name,
        cfg.name,
        f"retrain-{time.strftime('%Y%m%d-%H%M%S')}",
        params={"family": family, **params, "champion_version": champ.version},
        metrics={k: v for k, v in metrics.items() if not math.isnan(v)},
        tags={
            f"{TAG}decision": decision,
            f"{TAG}champion_version": champ.version,
            f"{TAG}holdout": holdout,
            f"{TAG}metric": cfg.metric,
        },
    )
    try:
        epochs = int(params.get("iterations", 0))
        best = BestTrial(-1, family, params, candidate_score, epochs)
        model = retrain(best, prepared, cfg, threads)
        log_similarities(cfg, model, prepared, run_id, uri)
        version = log_model_version(model, prepared, run_id, uri, name, candidate_score, holdout)
        tag_version(
            uri,
            name,
            version,
            {
                f"{TAG}decision": decision,
                f"{TAG}candidate_score": repr(candidate_score),
                f"{TAG}champion_score": repr(champion_score),
                f"{TAG}champion_version": champ.version,
                f"{TAG}tolerance": repr(tol),
                f"{TAG}run_id": run_id,
            },
        )
        if promote:
            move_champion(uri, name, version)
        result = RetrainResult(
            model_name=name,
            decision=decision,
            metric=cfg.metric,
            direction=cfg.direction,
            tolerance=tol,
            candidate_score=candidate_score,
            champion_score=champion_score,
            champion_version=champ.version,
            new_version=version,
            family=family,
            params=params,
            holdout=holdout,
            run_id=run_id,
            tracking_uri=uri,
            data=data,
            seconds=time.perf_counter() - start,
        )
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "retrain.md"
            report.write_text(result.markdown())
            tracking.log_file(uri, run_id, report)
    except BaseException:
        tracking.finish_study(uri, run_id, "failed")
        raise
    tracking.finish_study(uri, run_id, "complete")
    return result
