"""Per-user metric values (what the reported means are made of) against a slow NumPy loop,
and `evaluation.user_scores` against `evaluate_model` for every metric it supports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from mfstudy.config import EvaluationConfig
from mfstudy.evaluation import evaluate_model, user_scores
from mfstudy.metrics import (
    mse_all_cells,
    mse_all_cells_per_user,
    ranking_metrics,
    ranking_metrics_per_user,
)
from mfstudy.models import model_class


def _slow_per_user(P, Q, truth, users, k, exclude):
    """Written from the definitions, one user at a time over a fully sorted score row."""
    out = {}
    t = truth.tocsr()
    ex = None if exclude is None else exclude.tocsr()
    for u in users:
        relevant = set(t[u].indices.tolist())
        if not relevant:
            continue
        scores = P[u].astype(np.float64) @ Q.astype(np.float64).T
        order = sorted(range(Q.shape[0]), key=lambda i: (-scores[i], i))
        banned = set() if ex is None else set(ex[u].indices.tolist())
        ranked = [i for i in order if i not in banned][:k]
        hits = [i in relevant for i in ranked] + [False] * (k - len(ranked))
        n = sum(hits)
        dcg = sum(1.0 / math.log2(j + 2) for j, h in enumerate(hits) if h)
        idcg = sum(1.0 / math.log2(j + 2) for j in range(min(k, len(relevant))))
        ap, seen = 0.0, 0
        for j, h in enumerate(hits):
            if h:
                seen += 1
                ap += seen / (j + 1)
        out[int(u)] = (n / k, n / len(relevant), dcg / idcg, ap / min(k, len(relevant)))
    return out


@pytest.mark.parametrize("use_exclude", [False, True])
def test_ranking_per_user_matches_slow_loop_and_the_mean(use_exclude: bool) -> None:
    rng = np.random.default_rng(7)
    n_users, n_items, k = 40, 30, 5
    P = rng.standard_normal((n_users, 4)).astype(np.float32)
    Q = rng.standard_normal((n_items, 4)).astype(np.float32)
    mask = rng.random((n_users, n_items)) < 0.15
    mask[:8] = False  # users without truth items, which are left out
    truth = sp.csr_matrix(mask.astype(np.float32))
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.3).astype(np.float32))
    exclude = train if use_exclude else None
    users = rng.permutation(n_users)[:30]

    scored, per_user = ranking_metrics_per_user(P, Q, truth, users, k, exclude)
    slow = _slow_per_user(P, Q, truth, users, k, exclude)
    assert list(scored) == list(slow), "same users, in the order given, without empty rows"
    assert 0 < len(scored) < len(users), "the case needs users without truth items"
    for j, name in enumerate(("precision", "recall", "ndcg", "map")):
        expected = np.array([slow[int(u)][j] for u in scored])
        np.testing.assert_allclose(per_user[name], expected, rtol=1e-12, atol=1e-12)
        mean = ranking_metrics(P, Q, truth, users, k, exclude)[name]
        assert np.mean(per_user[name]) == pytest.approx(mean, rel=1e-12)


def test_mse_per_user_matches_dense_rows() -> None:
    rng = np.random.default_rng(3)
    P = rng.standard_normal((25, 3)).astype(np.float32)
    Q = rng.standard_normal((18, 3)).astype(np.float32)
    truth = sp.csr_matrix(
        (rng.random((25, 18)) < 0.2) * rng.integers(1, 6, (25, 18)), dtype=np.float32
    )
    users = np.array([4, 0, 17, 9, 9, 24])
    per_user = mse_all_cells_per_user(P, Q, truth, users)
    dense = truth.toarray().astype(np.float64)
    pred = P.astype(np.float64) @ Q.astype(np.float64).T
    expected = [np.mean((dense[u] - pred[u]) ** 2) for u in users]
    np.testing.assert_allclose(per_user, expected, rtol=1e-10)
    assert per_user.mean() == pytest.approx(mse_all_cells(P, Q, truth, users), rel=1e-10)


@pytest.mark.parametrize("family", ["wrmf", "als"])
def test_user_scores_agree_with_evaluate_model(family: str) -> None:
    rng = np.random.default_rng(11)
    n_users, n_items = 60, 40
    ratings = (rng.random((n_users, n_items)) < 0.25) * rng.integers(1, 6, (n_users, n_items))
    full = sp.csr_matrix(ratings, dtype=np.float32)
    coo = full.tocoo()
    held = rng.random(coo.nnz) < 0.2
    train = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), full.shape)
    test = sp.csr_matrix((coo.data[held], (coo.row[held], coo.col[held])), full.shape)
    users = np.unique(coo.row[held])[::-1].copy()  # unsorted on purpose
    params = {"factors": 4, "iterations": 3}
    model = model_class(family)(**params, seed=0).fit(train)
    cfg = EvaluationConfig(k=5)
    reported = evaluate_model(model, train, test, users, cfg)
    for metric, value in reported.items():
        scored, values = user_scores(model, train, test, users, cfg, metric)
        assert np.all(np.diff(scored) > 0), metric
        assert values.value == pytest.approx(value, rel=1e-9, abs=1e-12), metric
    with pytest.raises(ValueError, match="per-user"):
        user_scores(model, train, test, users, cfg, "test_auc")
