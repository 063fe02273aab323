"""Evaluation from factor matrices: top-k lists, ranking metrics at k and squared errors.

Everything takes a model's `scoring_factors()` `(P, Q)`, with score(u, i) = P[u] @ Q[i], plus
sparse users x items matrices; nothing builds a dense users x items matrix. `evaluate` is what a
trial logs after every epoch. The `*_per_user` variants give the values those means are made
of, for the bootstrap intervals and paired comparisons over users (`paired_bootstrap`).
"""

from __future__ import annotations

from mfstudy.metrics._bootstrap import (
    Interval,
    PairedDifference,
    UserValues,
    bootstrap_interval,
    bootstrap_replicates,
    paired_bootstrap,
)
from mfstudy.metrics._error import mse_all_cells, mse_all_cells_per_user, rmse_observed
from mfstudy.metrics._ranking import (
    evaluate,
    evaluation_keys,
    ranking_metrics,
    ranking_metrics_per_user,
)
from mfstudy.metrics._topk import top_k

__all__ = [
    "Interval",
    "PairedDifference",
    "UserValues",
    "bootstrap_interval",
    "bootstrap_replicates",
    "evaluate",
    "evaluation_keys",
    "mse_all_cells",
    "mse_all_cells_per_user",
    "paired_bootstrap",
    "ranking_metrics",
    "ranking_metrics_per_user",
    "rmse_observed",
    "top_k",
]
