"""Evaluation from factor matrices: top-k lists, ranking metrics at k and squared errors.

Everything takes a model's `scoring_factors()` `(P, Q)`, with score(u, i) = P[u] @ Q[i], plus
sparse users x items matrices; nothing builds a dense users x items matrix. `evaluate` is what a
trial logs after every epoch.
"""

from __future__ import annotations

from mfstudy.metrics._error import mse_all_cells, rmse_observed
from mfstudy.metrics._ranking import evaluate, evaluation_keys, ranking_metrics
from mfstudy.metrics._topk import top_k

__all__ = [
    "evaluate",
    "evaluation_keys",
    "mse_all_cells",
    "ranking_metrics",
    "rmse_observed",
    "top_k",
]
