"""Ranking metrics and `evaluate` against per-user loops and against implicit's evaluation."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from mfstudy.metrics import _topk, evaluate, evaluation_keys, mse_all_cells, ranking_metrics


def factors(rng: np.random.Generator, n_users: int, n_items: int, f: int):
    P = rng.standard_normal((n_users, f)) * rng.lognormal(0.0, 1.0, (n_users, 1))
    Q = rng.standard_normal((n_items, f)) * rng.lognormal(0.0, 1.5, (n_items, 1))
    return P.astype(np.float32), Q.astype(np.float32)


def random_csr(rng: np.random.Generator, shape: tuple[int, int], density: float) -> sp.csr_matrix:
    return sp.csr_matrix((rng.random(shape) < density).astype(np.float32))


def reference_metrics(P, Q, truth, users, k, exclude):
    """Per-user loops over a fully sorted score row, written from the definitions."""
    scores = P.astype(np.float64) @ Q.astype(np.float64).T
    t = truth.toarray() != 0
    ex = None if exclude is None else exclude.toarray() != 0
    per_user = []
    for u in users:
        relevant = set(np.flatnonzero(t[u]).tolist())
        if not relevant:
            continue
        order = sorted(range(Q.shape[0]), key=lambda i: (-scores[u, i], i))
        ranked = [i for i in order if ex is None or not ex[u, i]][:k]
        hits = [i in relevant for i in ranked] + [False] * (k - len(ranked))
        n_hits = sum(hits)
        dcg = sum(1.0 / math.log2(j + 2) for j, h in enumerate(hits) if h)
        idcg = sum(1.0 / math.log2(j + 2) for j in range(min(k, len(relevant))))
        ap, seen = 0.0, 0
        for j, h in enumerate(hits):
            if h:
                seen += 1
                ap += seen / (j + 1)
        per_user.append(
            (n_hits / k, n_hits / len(relevant), dcg / idcg, ap / min(k, len(relevant)))
        )
    if not per_user:
        return None
    arr = np.array(per_user)
    return {
        "precision": arr[:, 0].mean(),
        "recall": arr[:, 1].mean(),
        "ndcg": arr[:, 2].mean(),
        "map": arr[:, 3].mean(),
        "n_users": float(len(per_user)),
    }


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_users=st.integers(1, 20),
    n_items=st.integers(1, 60),
    k=st.integers(1, 10),
    truth_density=st.sampled_from([0.0, 0.05, 0.3, 0.9]),
    excl_density=st.sampled_from([0.0, 0.2, 0.8]),
    use_exclude=st.booleans(),
    schedule=st.sampled_from([(1, 2), (4, 16), (512, 1024)]),
)
def test_ranking_metrics_match_per_user_loops(
    seed, n_users, n_items, k, truth_density, excl_density, use_exclude, schedule
):
    rng = np.random.default_rng(seed)
    P, Q = factors(rng, n_users, n_items, 5)
    truth = random_csr(rng, (n_users, n_items), truth_density)
    exclude = random_csr(rng, (n_users, n_items), excl_density) if use_exclude else None
    users = rng.integers(0, n_users, size=rng.integers(0, 2 * n_users + 1))
    with mock.patch.multiple(_topk, _FIRST_BLOCK=schedule[0], _MAX_BLOCK=schedule[1]):
        got = ranking_metrics(P, Q, truth, users, k, exclude=exclude)
    want = reference_metrics(P, Q, truth, users, k, exclude)
    if want is None:
        assert got["n_users"] == 0
        assert all(math.isnan(got[m]) for m in ("precision", "recall", "ndcg", "map"))
    else:
        assert got.keys() == want.keys()
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_padding_never_hits_and_precision_divides_by_k():
    # One user, 3 items, two excluded: the list is [2, -1, -1, -1]; truth holds item 2 and 0.
    P = np.array([[1.0]], dtype=np.float32)
    Q = np.array([[3.0], [2.0], [1.0]], dtype=np.float32)
    exclude = sp.csr_matrix(np.array([[1, 1, 0]], dtype=np.float32))
    truth = sp.csr_matrix(np.array([[1, 0, 1]], dtype=np.float32))
    got = ranking_metrics(P, Q, truth, np.array([0]), 4, exclude=exclude)
    assert got["precision"] == pytest.approx(1 / 4)
    assert got["recall"] == pytest.approx(1 / 2)
    assert got["ndcg"] == pytest.approx(1.0 / (1.0 + 1.0 / math.log2(3)))
    assert got["map"] == pytest.approx(1.0 / 2)
    # The blog's protocol (nothing excluded): ranks [0, 1, 2] -> hits at 1 and 3.
    blog = ranking_metrics(P, Q, truth, np.array([0]), 3, exclude=None)
    assert blog["precision"] == pytest.approx(2 / 3)
    assert blog["map"] == pytest.approx((1 + 2 / 3) / 2)


def test_against_implicit_ranking_metrics_at_k():
    """implicit 0.7's map and ndcg; its micro-averaged precision equals ours when every test
    user has at least k test items (implicit divides by min(K, |test_u|))."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.evaluation import ranking_metrics_at_k

    rng = np.random.default_rng(2024)
    n_users, n_items, f, k = 120, 300, 8, 5
    P, Q = factors(rng, n_users, n_items, f)
    train = random_csr(rng, (n_users, n_items), 0.08)
    test_dense = np.zeros((n_users, n_items), dtype=np.float32)
    test_users = rng.choice(n_users, 70, replace=False)
    for u in test_users:
        unseen = np.setdiff1d(np.arange(n_items), train[u].indices)
        test_dense[u, rng.choice(unseen, k + rng.integers(0, 10), replace=False)] = 1.0
    test = sp.csr_matrix(test_dense)

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=f)
        model.user_factors, model.item_factors = P, Q
        theirs = ranking_metrics_at_k(model, train, test, K=k, show_progress=False)
    ours = ranking_metrics(P, Q, test, np.arange(n_users), k, exclude=train)
    assert ours["n_users"] == len(test_users)
    assert ours["precision"] > 0.01  # the comparison is not vacuous
    for name in ("precision", "map", "ndcg"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-9), name


# ---------------------------------------------------------------------------- evaluate


def blog_precision(P, Q, truth, users, k):
    """The blog's loop: argsort of the dense row, set intersection, / k."""
    preds = P.astype(np.float64) @ Q.astype(np.float64).T
    out = []
    for u in users:
        top = np.argsort(-preds[u])[:k]
        out.append(len(set(top.tolist()) & set(truth[u].indices.tolist())) / k)
    return float(np.mean(out))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 8), exclude_seen=st.booleans())
def test_evaluate_agrees_with_separate_metrics(seed, k, exclude_seen):
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 80
    P, Q = factors(rng, n_users, n_items, 6)
    full = random_csr(rng, (n_users, n_items), 0.25)
    held_out = np.sort(rng.choice(n_users, 10, replace=False))
    moved = full.multiply(sp.csr_matrix(rng.random((n_users, n_items)) < 0.3)).tocsr()
    moved = moved.multiply(np.isin(np.arange(n_users), held_out)[:, None]).tocsr()
    train = (full - moved).tocsr()
    train.eliminate_zeros()
    test = moved

    got = evaluate(P, Q, train, test, held_out, k, exclude_seen=exclude_seen)
    assert tuple(got) == evaluation_keys(k)
    train_rank = ranking_metrics(P, Q, train, held_out, k, exclude=None)
    test_rank = ranking_metrics(P, Q, test, held_out, k, exclude=train if exclude_seen else None)
    assert got[f"train_precision_at_{k}"] == train_rank["precision"]
    assert got[f"test_precision_at_{k}"] == test_rank["precision"]
    assert got[f"test_recall_at_{k}"] == test_rank["recall"]
    assert got[f"test_ndcg_at_{k}"] == test_rank["ndcg"]
    assert got[f"test_map_at_{k}"] == test_rank["map"]
    assert got["train_mse"] == pytest.approx(mse_all_cells(P, Q, train, held_out), rel=1e-12)
    assert got["test_mse"] == pytest.approx(mse_all_cells(P, Q, test, held_out), rel=1e-12)
    # Dense references for the blog's protocol.
    assert got[f"train_precision_at_{k}"] == pytest.approx(blog_precision(P, Q, train, held_out, k))
    if not exclude_seen and test[held_out].nnz and np.all(np.diff(test.indptr)[held_out]):
        assert got[f"test_precision_at_{k}"] == pytest.approx(
            blog_precision(P, Q, test, held_out, k)
        )
    dense = (P.astype(np.float64) @ Q.astype(np.float64).T)[held_out]
    assert got["test_mse"] == pytest.approx(
        np.mean((test.toarray()[held_out] - dense) ** 2), rel=1e-9
    )


def test_evaluate_exclusion_changes_only_test_ranking():
    """A user whose training items score highest: the blog's ranking returns them (no test
    hit), ours skips them and finds the test item."""
    P = np.array([[1.0, 0.0]], dtype=np.float32)
    Q = np.array([[5.0, 0], [4.0, 0], [3.0, 0], [1.0, 0]], dtype=np.float32)
    train = sp.csr_matrix(np.array([[1, 1, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1, 0]], dtype=np.float32))
    ours = evaluate(P, Q, train, test, np.array([0]), 2, exclude_seen=True)
    blog = evaluate(P, Q, train, test, np.array([0]), 2, exclude_seen=False)
    assert ours["train_precision_at_2"] == blog["train_precision_at_2"] == 1.0
    assert blog["test_precision_at_2"] == 0.0
    assert ours["test_precision_at_2"] == 0.5
    assert ours["test_recall_at_2"] == 1.0
    assert ours["test_mse"] == blog["test_mse"]
