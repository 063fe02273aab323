"""Squared-error metrics from factor matrices, computed without densifying anything.

`mse_all_cells` is the blog's learning-curve MSE: every cell of the evaluated users' rows counts,
zeros included, exactly as `mean_squared_error(R[users].toarray(), (P @ Q.T)[users])`. Expanding
the square gives, per user u with row r_u,

    sum_i (r_ui - P_u.Q_i)^2 = ||r_u||^2 - 2 sum_{i in r_u} r_ui P_u.Q_i + P_u^T (Q^T Q) P_u,

so the cost is one pass over the stored entries plus an f x f Gram matrix. The three terms are
of similar size and partly cancel, hence float64 throughout.

`rmse_observed` is the explicit-feedback metric: RMSE over the stored ratings only.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from mfstudy.metrics._topk import _as_factors, _as_users, canonical_csr

__all__ = ["mse_all_cells", "mse_all_cells_per_user", "rmse_observed"]


# ---------------------------------------------------------------------------- numerical core


@numba.njit(cache=True, nogil=True, fastmath=True)
def _stored_terms(indptr, indices, data, users, P, Q):  # pragma: no cover - compiled
    """(sum of r^2, sum of r * P_u.Q_i) over the stored entries of the rows `users`.

    The cross term is accumulated as P_u . (sum_i r_ui Q_i): one f-vector update per entry,
    one dot per user. float32 x float32 products are exact in float64, so reassociating
    (fastmath) only changes float64 rounding.
    """
    f = P.shape[1]
    sq = 0.0
    cross = 0.0
    acc = np.zeros(f)
    for u in users:
        acc[:] = 0.0
        for nz in range(indptr[u], indptr[u + 1]):
            i = indices[nz]
            r = np.float64(data[nz])
            for c in range(f):
                acc[c] += r * Q[i, c]
            sq += r * r
        for c in range(f):
            cross += acc[c] * P[u, c]
    return sq, cross


@numba.njit(cache=True, nogil=True)
def _observed_sse(indptr, indices, data, users, P, Q, lo, hi):  # pragma: no cover - compiled
    """(sum of squared errors, count) over stored entries, predictions clipped to [lo, hi]."""
    f = P.shape[1]
    sse = 0.0
    count = 0
    for u in users:
        for nz in range(indptr[u], indptr[u + 1]):
            i = indices[nz]
            pred = 0.0
            for c in range(f):
                pred += np.float64(P[u, c]) * np.float64(Q[i, c])
            pred = min(max(pred, lo), hi)
            err = np.float64(data[nz]) - pred
            sse += err * err
            count += 1
    return sse, count


# ---------------------------------------------------------------------------- building blocks


def quadratic_term(P: np.ndarray, Q: np.ndarray, users: np.ndarray) -> float:
    """sum over `users` of P_u^T (Q^T Q) P_u: the squared predictions of their whole rows."""
    q = np.asarray(Q, dtype=np.float64)
    gram = q.T @ q
    pu = np.asarray(P[users], dtype=np.float64)
    return float(np.einsum("ij,ij->", pu @ gram, pu))


def stored_terms(
    P: np.ndarray, Q: np.ndarray, truth: sp.csr_matrix, users: np.ndarray
) -> tuple[float, float]:
    """(sum r^2, sum r * prediction) over the stored entries of the rows `users` of `truth`."""
    sq, cross = _stored_terms(
        truth.indptr, truth.indices, truth.data, users, np.asarray(P), np.asarray(Q)
    )
    return float(sq), float(cross)


def mse_from_terms(sq: float, cross: float, quad: float, n_users: int, n_items: int) -> float:
    """Assemble the all-cells MSE; NaN when there are no cells."""
    cells = n_users * n_items
    if cells == 0:
        return float("nan")
    # Rounding can push an almost perfect fit a hair below zero.
    return max(sq - 2.0 * cross + quad, 0.0) / cells


# ---------------------------------------------------------------------------- public API


def mse_all_cells(
    P: np.ndarray, Q: np.ndarray, truth: sp.spmatrix | sp.sparray, users: np.ndarray
) -> float:
    """Mean of (truth[u, i] - P[u] @ Q[i])^2 over all cells of the rows `users`, zeros included.

    The blog's MSE, exact without building the dense rows (float64 accumulation). Duplicate
    entries of `truth` are summed, as scipy does; NaN when there are no cells.
    """
    P, Q = _as_factors(P, Q)
    users = _as_users(users, P.shape[0])
    t = canonical_csr(truth, (P.shape[0], Q.shape[0]), "truth")
    sq, cross = stored_terms(P, Q, t, users)
    return mse_from_terms(sq, cross, quadratic_term(P, Q, users), len(users), Q.shape[0])


def mse_all_cells_per_user(
    P: np.ndarray, Q: np.ndarray, truth: sp.spmatrix | sp.sparray, users: np.ndarray
) -> np.ndarray:
    """:func:`mse_all_cells` of each row of `users` on its own (one value per user, in order).

    Every user has the same number of cells, so the mean of these is `mse_all_cells`. The
    same expansion of the square, per row; the predictions of the stored entries are formed
    once each (memory: stored entries of these rows x factors).
    """
    P, Q = _as_factors(P, Q)
    users = _as_users(users, P.shape[0])
    t = canonical_csr(truth, (P.shape[0], Q.shape[0]), "truth")
    q = np.asarray(Q, dtype=np.float64)
    pu = np.asarray(P[users], dtype=np.float64)
    quad = np.einsum("ij,ij->i", pu @ (q.T @ q), pu)
    rows = t[users].tocoo()
    r = rows.data.astype(np.float64)
    pred = np.einsum("ij,ij->i", pu[rows.row], q[rows.col])
    sq = np.bincount(rows.row, weights=r * r, minlength=len(users))
    cross = np.bincount(rows.row, weights=r * pred, minlength=len(users))
    if Q.shape[0] == 0:
        return np.full(len(users), np.nan)
    return np.maximum(sq - 2.0 * cross + quad, 0.0) / Q.shape[0]


def rmse_observed(
    P: np.ndarray,
    Q: np.ndarray,
    truth: sp.spmatrix | sp.sparray,
    users: np.ndarray | None = None,
    clip: tuple[float, float] | None = None,
) -> float:
    """RMSE of P[u] @ Q[i] against the stored (non-zero) entries of `truth` (explicit ratings).

    Only the rows `users` count (all rows when None). Models with biases or a global mean fold
    them into extra factor columns, so P @ Q.T is the prediction; `clip=(lo, hi)` clips it to
    the rating scale first. NaN when no entry is evaluated.
    """
    P, Q = _as_factors(P, Q)
    rows = np.arange(P.shape[0], dtype=np.int64) if users is None else _as_users(users, P.shape[0])
    t = canonical_csr(truth, (P.shape[0], Q.shape[0]), "truth")
    lo, hi = (-np.inf, np.inf) if clip is None else (float(clip[0]), float(clip[1]))
    if lo > hi:
        raise ValueError(f"clip must be (low, high) with low <= high, got {clip}")
    sse, count = _observed_sse(t.indptr, t.indices, t.data, rows, P, Q, lo, hi)
    return float(np.sqrt(sse / count)) if count else float("nan")
