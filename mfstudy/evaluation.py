"""Scoring a trained model on a prepared split: what every trial logs after its epochs."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mfstudy.config import EvaluationConfig
from mfstudy.metrics import evaluate
from mfstudy.models import Recommender

__all__ = ["EXPLICIT_FAMILIES", "evaluate_model", "rmse"]

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
