"""Scoring a trained model on a prepared split: what every trial logs after its epochs."""

from __future__ import annotations

import re

import numpy as np
import scipy.sparse as sp

from mfstudy.config import EvaluationConfig
from mfstudy.metrics import UserValues, evaluate, mse_all_cells_per_user, ranking_metrics_per_user
from mfstudy.models import Recommender

__all__ = ["EXPLICIT_FAMILIES", "evaluate_model", "rmse", "user_scores"]

#: Families that predict ratings; they are also scored by RMSE over observed test entries.
EXPLICIT_FAMILIES = frozenset({"sgd", "als", "baseline"})


def rmse(model: Recommender, truth: sp.csr_matrix, rows: np.ndarray | None = None) -> float:
    """Root mean squared error of `model.score` over the observed entries of `truth`.

    `rows` maps the rows of `truth` to model users (identity when omitted).
    """
    coo = truth.tocoo()
    if coo.nnz == 0:
        return float("nan")
    users = coo.row if rows is None else np.asarray(rows)[coo.row]
    err = model.score(users, coo.col) - coo.data
    return float(np.sqrt(np.mean(np.square(err, dtype=np.float64))))


def evaluate_model(
    model: Recommender,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    users: np.ndarray,
    cfg: EvaluationConfig,
) -> dict[str, float]:
    """Ranking metrics and MSE on `users` (train and test), plus RMSE for rating models.

    Keys: `train_precision_at_k`, `test_precision_at_k`, `test_recall_at_k`, `test_ndcg_at_k`,
    `test_map_at_k`, `train_mse`, `test_mse` (the blog's all-cells MSE), and for rating models
    `train_rmse` and `test_rmse` over observed entries.
    """
    p, q = model.scoring_factors()
    out = evaluate(
        p,
        q,
        train,
        test,
        users,
        k=cfg.k,
        exclude_seen=cfg.exclude_seen,
        batch_memory_mb=cfg.batch_memory_mb,
    )
    if model.family in EXPLICIT_FAMILIES:
        out["test_rmse"] = rmse(model, test)
        out["train_rmse"] = rmse(model, train)
    return {k: float(v) for k, v in out.items()}


_RANKING_KEY = re.compile(r"(?P<part>train|test)_(?P<name>precision|recall|ndcg|map)_at_(?P<k>\d+)")


def user_scores(
    model: Recommender,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    users: np.ndarray,
    cfg: EvaluationConfig,
    metric: str,
) -> tuple[np.ndarray, UserValues]:
    """`metric` (a key of :func:`evaluate_model`) as per-user terms: (users, values).

    `values.value` is what `evaluate_model` reports for `metric`; the users are those it
    averages over (ranking metrics: users with at least one truth item; MSE: every user of
    `users`; RMSE: every row of the truth matrix with a rating), in increasing order.
    """
    match = _RANKING_KEY.fullmatch(metric)
    p, q = model.scoring_factors()
    if match is not None:
        if int(match["k"]) != cfg.k:
            raise ValueError(f"{metric}: evaluation.k is {cfg.k}")
        # As `evaluate`: train precision ranks everything, test skips seen items if asked.
        if match["part"] == "train":
            truth, exclude = train, None
        else:
            truth, exclude = test, (train if cfg.exclude_seen else None)
        scored, per_user = ranking_metrics_per_user(
            p, q, truth, users, cfg.k, exclude, cfg.batch_memory_mb
        )
        order = np.argsort(scored, kind="stable")
        return scored[order], UserValues(per_user[match["name"]][order])
    part, _, kind = metric.partition("_")
    truth = {"train": train, "test": test}.get(part)
    if truth is not None and kind == "mse":
        rows = np.sort(np.asarray(users, dtype=np.int64))
        return rows, UserValues(mse_all_cells_per_user(p, q, truth, rows))
    if truth is not None and kind == "rmse" and model.family in EXPLICIT_FAMILIES:
        coo = truth.tocoo()
        err = model.score(coo.row, coo.col) - coo.data
        rows, inverse = np.unique(coo.row, return_inverse=True)
        sse = np.bincount(inverse, weights=np.square(err, dtype=np.float64), minlength=len(rows))
        count = np.bincount(inverse, minlength=len(rows)).astype(np.float64)
        return rows.astype(np.int64), UserValues(sse, count, root=True)
    raise ValueError(f"no per-user form of metric {metric!r}")
