"""Ranking metrics at k, and the per-epoch evaluation every trial logs.

Definitions (binary relevance: the stored non-zero entries of `truth` are the relevant items;
averages are over the users that have at least one relevant item):

- precision@k = hits / k -- the blog's definition, also when a user has fewer than k relevant
  items or fewer than k candidates (padding never hits);
- recall@k = hits / |truth_u| (not min(k, |truth_u|): recall stays "share of the user's items
  found", and it is the quantity that keeps growing with k);
- ndcg@k = sum over hits at rank j (0-based) of 1 / log2(j + 2), divided by the ideal DCG of
  min(k, |truth_u|) hits;
- map@k = sum over hits at rank j of precision@(j + 1), divided by min(k, |truth_u|).

Relation to `implicit.evaluation.ranking_metrics_at_k` (implicit 0.7): its map and ndcg are the
same definitions, averaged over the users with test items. Its "precision" is micro-averaged:
total hits / sum of min(K, |test_u|), which equals our mean of hits / k only when every user
has at least k test items. It always excludes the training items, and it scores every user
with a test row, including users the model never learned factors for; here the caller picks
the users and whether to exclude (`exclude=None` reproduces the blog, which ranks test items
among all items, training items included).

Hits are found without Python sets: (row, item) pairs become int64 keys row * n_items + item,
looked up with one `searchsorted` in the sorted keys of the truth rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mfstudy.metrics._error import mse_from_terms, quadratic_term, stored_terms
from mfstudy.metrics._topk import _as_factors, _as_users, canonical_csr, rank

__all__ = ["evaluate", "evaluation_keys", "ranking_metrics", "ranking_metrics_per_user"]


# ---------------------------------------------------------------------------- numerical core


def hits_at_k(items: np.ndarray, truth_rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Which recommended items are relevant, and how many relevant items each row has.

    `items` (n x k, -1 for padding) and `truth_rows` (canonical CSR with n rows) are aligned row
    by row. Returns a boolean (n x k) hit matrix and the int64 counts |truth_u|.
    """
    n = items.shape[0]
    n_items = truth_rows.shape[1]
    counts = np.diff(truth_rows.indptr).astype(np.int64)
    # Canonical CSR: rows in order, indices sorted within a row, so the keys are sorted.
    keys = np.repeat(np.arange(n, dtype=np.int64) * n_items, counts) + truth_rows.indices
    wanted = np.arange(n, dtype=np.int64)[:, None] * n_items + items
    pos = np.searchsorted(keys, wanted)
    found = keys[np.minimum(pos, max(len(keys) - 1, 0))] == wanted if len(keys) else False
    return (items >= 0) & found, counts


def per_user_hits(hits: np.ndarray, n_truth: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, ndcg and map at k (k = hits.shape[1]) of each row with truth.

    Rows without truth items are left out (the arrays have one value per row with
    `n_truth > 0`, in row order): the means of these arrays are the reported metrics.
    """
    k = hits.shape[1]
    scored = n_truth > 0
    h = hits[scored].astype(np.float64)
    m = n_truth[scored].astype(np.float64)
    n_hits = h.sum(axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ideal = np.cumsum(discount)[np.minimum(k, m).astype(np.int64) - 1]
    precision_at_j = np.cumsum(h, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    return {
        "precision": n_hits / k,
        "recall": n_hits / m,
        "ndcg": (h @ discount) / ideal,
        "map": (h * precision_at_j).sum(axis=1) / np.minimum(k, m),
    }


def summarise_hits(hits: np.ndarray, n_truth: np.ndarray) -> dict[str, float]:
    """precision, recall, ndcg and map at k (k = hits.shape[1]) averaged over users with truth.

    `n_users` is how many users were averaged; the metrics are NaN when it is 0.
    """
    n = int(np.count_nonzero(n_truth > 0))
    if n == 0:
        nan = float("nan")
        return {"precision": nan, "recall": nan, "ndcg": nan, "map": nan, "n_users": 0.0}
    out = {name: float(np.mean(v)) for name, v in per_user_hits(hits, n_truth).items()}
    return {**out, "n_users": float(n)}


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


# ---------------------------------------------------------------------------- public API


def ranking_metrics(
    P: np.ndarray,
    Q: np.ndarray,
    truth: sp.spmatrix | sp.sparray,
    users: np.ndarray,
    k: int,
    exclude: sp.spmatrix | sp.sparray | None,
    batch_memory_mb: int = 256,
) -> dict[str, float]:
    """precision/recall/ndcg/map at `k` of the top-k lists of `users` against `truth`.

    `truth` and `exclude` have one row per row of `P`. Pass `exclude=train` to rank only unseen
    items (our default protocol) or `exclude=None` to rank everything (the blog's test
    precision; also how train metrics are computed, with `truth=train`). Users without truth
    items are skipped; `n_users` reports how many were averaged. See the module docstring for
    the exact definitions.
    """
    _, hits, n_truth = _ranked_hits(P, Q, truth, users, k, exclude, batch_memory_mb)
    return summarise_hits(hits, n_truth)


def ranking_metrics_per_user(
    P: np.ndarray,
    Q: np.ndarray,
    truth: sp.spmatrix | sp.sparray,
    users: np.ndarray,
    k: int,
    exclude: sp.spmatrix | sp.sparray | None,
    batch_memory_mb: int = 256,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The values :func:`ranking_metrics` averages, one per user: (users scored, metrics).

    Same ranking and definitions; users without truth items are left out of both, so each
    array's mean is the corresponding `ranking_metrics` value. For confidence intervals and
    paired comparisons over users (`mfstudy.metrics.paired_bootstrap`).
    """
    scored, hits, n_truth = _ranked_hits(P, Q, truth, users, k, exclude, batch_memory_mb)
    return scored, per_user_hits(hits, n_truth)


def _ranked_hits(
    P: np.ndarray,
    Q: np.ndarray,
    truth: sp.spmatrix | sp.sparray,
    users: np.ndarray,
    k: int,
    exclude: sp.spmatrix | sp.sparray | None,
    batch_memory_mb: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users with truth items, their hit matrix, their truth counts) of the top-k lists."""
    P, Q = _as_factors(P, Q)
    k = _check_k(k)
    shape = (P.shape[0], Q.shape[0])
    users = _as_users(users, P.shape[0])
    t = canonical_csr(truth, shape, "truth")
    excl = None if exclude is None else canonical_csr(exclude, shape, "exclude")
    users = users[np.diff(t.indptr)[users] > 0]  # only users that can be scored
    items = np.empty((len(users), k), dtype=np.int64)
    for part in rank(P, Q, users, k, excl, excl is None, excl is not None, batch_memory_mb):
        got = part.plain_items if excl is None else part.excl_items
        assert got is not None
        items[part.start : part.start + len(got)] = got
    hits, n_truth = hits_at_k(items, t[users])
    return users, hits, n_truth


def evaluation_keys(k: int) -> tuple[str, ...]:
    """The metric names `evaluate` returns for this `k` (MLflow keys: no '@')."""
    return (
        f"train_precision_at_{k}",
        f"test_precision_at_{k}",
        f"test_recall_at_{k}",
        f"test_ndcg_at_{k}",
        f"test_map_at_{k}",
        "train_mse",
        "test_mse",
    )


def evaluate(
    P: np.ndarray,
    Q: np.ndarray,
    train: sp.spmatrix | sp.sparray,
    test: sp.spmatrix | sp.sparray,
    users: np.ndarray,
    k: int,
    exclude_seen: bool = True,
    batch_memory_mb: int = 256,
) -> dict[str, float]:
    """Everything a trial logs per epoch, for the held-out `users`, from one scoring pass.

    Train precision ranks all items against `train` (as the blog does); test metrics rank
    against `test`, skipping each user's training items when `exclude_seen` (False reproduces
    the blog). Both rankings come from the same score blocks. MSEs are the blog's all-cells MSE
    of the users' rows of `train` and `test` (see `mse_all_cells`), sharing one Gram matrix.
    Ranking metrics average over users with at least one train (resp. test) item.
    """
    P, Q = _as_factors(P, Q)
    k = _check_k(k)
    shape = (P.shape[0], Q.shape[0])
    users = _as_users(users, P.shape[0])
    tr = canonical_csr(train, shape, "train")
    te = canonical_csr(test, shape, "test")

    plain = np.empty((len(users), k), dtype=np.int64)
    unseen = np.empty((len(users), k), dtype=np.int64) if exclude_seen else plain
    for part in rank(P, Q, users, k, tr, True, exclude_seen, batch_memory_mb):
        assert part.plain_items is not None
        stop = part.start + len(part.plain_items)
        plain[part.start : stop] = part.plain_items
        if exclude_seen:
            assert part.excl_items is not None
            unseen[part.start : stop] = part.excl_items
    train_rows, test_rows = tr[users], te[users]
    train_ranking = summarise_hits(*hits_at_k(plain, train_rows))
    test_ranking = summarise_hits(*hits_at_k(unseen, test_rows))

    quad = quadratic_term(P, Q, users)
    n_items = Q.shape[0]
    train_mse = mse_from_terms(*stored_terms(P, Q, tr, users), quad, len(users), n_items)
    test_mse = mse_from_terms(*stored_terms(P, Q, te, users), quad, len(users), n_items)

    values = (
        train_ranking["precision"],
        test_ranking["precision"],
        test_ranking["recall"],
        test_ranking["ndcg"],
        test_ranking["map"],
        train_mse,
        test_mse,
    )
    return dict(zip(evaluation_keys(k), values, strict=True))
