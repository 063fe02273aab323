"""Exact top-k recommendation from factor matrices, pruned by norm bounds.

Why not `argsort(P[users] @ Q.T)`: that costs a dense users x items product per evaluation, and
the evaluation runs after every epoch of every trial. Recommender factors are very skewed --
item norms follow item popularity -- so most items can be proven out of a user's top k without
scoring them: score(u, i) = P_u . Q_i <= ||P_u|| ||Q_i||. Items are visited in decreasing norm,
in blocks of doubling width; a user leaves the scan as soon as the bound of every remaining item
is below the k-th best score found so far. On WRMF factors this scores a few percent of the
cells and gives exactly the result of a full scan.

Exactness in floating point: scores are float32 BLAS products, whose rounding error is at most
gamma_f * ||P_u|| ||Q_i|| (gamma_f ~ f * 2**-24 for f factors, whatever the summation order), so
the bound is inflated by `_SLACK_PER_FACTOR * f` before comparing, and pruning needs the bound
to be strictly below the threshold (an equal score could still win a tie on item id).

Ordering: best score first, equal scores by lower item id, so results do not depend on the
batch size, the block schedule or the BLAS used. Items scoring -inf or NaN are never returned;
rows with fewer than k candidates are padded with item -1 and score -inf.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

__all__ = ["top_k"]

#: Relative rounding margin per factor for the Cauchy-Schwarz bound (2 * unit roundoff of float32).
_SLACK_PER_FACTOR = 2.0**-23
#: Width of the first item block (items of largest norm) every user is scored against.
_FIRST_BLOCK = 512
#: Widest later block: wider blocks mean fewer BLAS calls but more cells scored past the bound.
_MAX_BLOCK = 1024
_NEG_INF = np.float32(-np.inf)


# ---------------------------------------------------------------------------- numerical core


@numba.njit(cache=True, nogil=True)
def _insert(best_s, best_i, row, s, item):  # pragma: no cover - compiled
    """Insert (s, item) into the row's buffer, kept sorted by (-score, item); drops the last."""
    j = best_s.shape[1] - 1
    while j > 0:
        ps = best_s[row, j - 1]
        pi = best_i[row, j - 1]
        if ps < s or (ps == s and pi > item):
            best_s[row, j] = ps
            best_i[row, j] = pi
            j -= 1
        else:
            break
    best_s[row, j] = s
    best_i[row, j] = item


@numba.njit(cache=True, nogil=True)
def _contains(sorted_values, lo, hi, value):  # pragma: no cover - compiled
    """Binary search of `value` in sorted_values[lo:hi]."""
    while lo < hi:
        mid = (lo + hi) // 2
        v = sorted_values[mid]
        if v == value:
            return True
        if v < value:
            lo = mid + 1
        else:
            hi = mid
    return False


@numba.njit(cache=True, nogil=True)
def _scan_block(
    scores, rows, pos0, order, excl_indptr, excl_indices, plain_s, plain_i, excl_s, excl_i
):  # pragma: no cover - compiled
    """Merge one block of scores into the running top-k buffers.

    `scores[r, j]` is the score of batch row `rows[r]` for item `order[pos0 + j]`. Two rankings
    can be kept from the same scores: `plain_*` (nothing excluded) and `excl_*` (items listed in
    the row's sorted `excl_indices[excl_indptr[row]:excl_indptr[row + 1]]` skipped); a ranking
    with zero buffer rows is switched off. A score enters a buffer when it beats the buffer's
    worst entry by (score, lower item id); most scores fail the first comparison.
    """
    k = max(plain_s.shape[1], excl_s.shape[1])
    use_plain = plain_s.shape[0] > 0
    use_excl = excl_s.shape[0] > 0
    n_rows, width = scores.shape
    for r in range(n_rows):
        row = rows[r]
        ta = np.inf
        ia = -1
        if use_plain:
            ta = plain_s[row, k - 1]
            ia = plain_i[row, k - 1]
        tb = np.inf
        ib = -1
        if use_excl:
            tb = excl_s[row, k - 1]
            ib = excl_i[row, k - 1]
        lo = min(ta, tb)
        e0 = excl_indptr[row]
        e1 = excl_indptr[row + 1]
        for j in range(width):
            s = scores[r, j]
            # Fails for NaN and -inf too: such items are never candidates.
            if not (s >= lo and s > -np.inf):
                continue
            item = order[pos0 + j]
            if use_plain and (s > ta or (s == ta and item < ia)):
                _insert(plain_s, plain_i, row, s, item)
                ta = plain_s[row, k - 1]
                ia = plain_i[row, k - 1]
            if use_excl and (s > tb or (s == tb and item < ib)):
                if not _contains(excl_indices, e0, e1, item):
                    _insert(excl_s, excl_i, row, s, item)
                    tb = excl_s[row, k - 1]
                    ib = excl_i[row, k - 1]
            lo = min(ta, tb)


# ---------------------------------------------------------------------------- orchestration


@dataclass
class Rankings:
    """Top-k of one block of users: `plain` ignores exclusions, `excluded` applies them.

    Either pair is None when it was not asked for. Items are int64, scores float32.
    """

    start: int
    plain_items: np.ndarray | None
    plain_scores: np.ndarray | None
    excl_items: np.ndarray | None
    excl_scores: np.ndarray | None


def _as_factors(P: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    P = np.asarray(P)
    Q = np.asarray(Q)
    if P.ndim != 2 or Q.ndim != 2 or P.shape[1] != Q.shape[1]:
        raise ValueError(
            f"factor matrices must be 2-D with equal column counts, got {P.shape} and {Q.shape}"
        )
    return P, Q


def _as_users(users: np.ndarray, n_rows: int) -> np.ndarray:
    u = np.asarray(users)
    if u.ndim != 1 or (u.size and not np.issubdtype(u.dtype, np.integer)):
        raise ValueError("users must be a 1-D array of integer row numbers")
    u = u.astype(np.int64, copy=False)
    if u.size and (u.min() < 0 or u.max() >= n_rows):
        raise ValueError(f"users must lie in [0, {n_rows}), got [{u.min()}, {u.max()}]")
    return u


def canonical_csr(m: sp.spmatrix | sp.sparray, shape: tuple[int, int], name: str) -> sp.csr_matrix:
    """`m` as CSR with sorted, distinct, non-zero entries (copied only when needed).

    Metrics treat the stored non-zero entries of a matrix as its items; explicit zeros (left by
    some split code) and duplicate entries would otherwise distort hit tests and counts.
    """
    if not sp.issparse(m):
        raise ValueError(f"{name} must be a scipy sparse matrix")
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape}, expected {shape}")
    out = sp.csr_matrix(m)
    if not out.has_canonical_format:
        out = out.copy()
        out.sum_duplicates()
    if out.nnz and not np.all(out.data):
        out = out.copy()
        out.eliminate_zeros()
    return out


def rows_per_batch(n_items: int, batch_memory_mb: int) -> int:
    """Users per batch so one batch of float32 scores stays within `batch_memory_mb`."""
    if batch_memory_mb <= 0:
        raise ValueError(f"batch_memory_mb must be positive, got {batch_memory_mb}")
    return max(1, (int(batch_memory_mb) << 20) // (4 * max(n_items, 1)))


def rank(
    P: np.ndarray,
    Q: np.ndarray,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None,
    plain: bool,
    excluded: bool,
    batch_memory_mb: int,
) -> Iterator[Rankings]:
    """Top-`k` of each user in `users`, batch by batch, from one scoring pass.

    With `plain`, rankings over all items; with `excluded`, rankings skipping each user's row of
    `exclude` (a canonical CSR, see `canonical_csr`). Both come from the same score blocks, so
    asking for both costs little more than one.
    """
    n_items, f = Q.shape
    q32 = np.asarray(Q, dtype=np.float32)  # the bounds must hold for the values BLAS multiplies
    qn = np.sqrt(np.einsum("ij,ij->i", q32, q32, dtype=np.float64))
    # Decreasing norm (stable: equal norms by item id, so the schedule is deterministic).
    order = np.argsort(-qn, kind="stable").astype(np.int64)
    qn_sorted = np.append(qn[order], 0.0)  # qn_sorted[n_items]: bound past the last block
    qs = q32[order]  # rows in norm order; blocks are multiplied as qs[pos:end].T
    slack = 1.0 + _SLACK_PER_FACTOR * (f + 2)
    # A batch holds one block of scores (at most _MAX_BLOCK items wide), never a whole row:
    # sizing it by n_items made 200k-item catalogues run thousands of tiny matmuls.
    step = rows_per_batch(min(n_items, _MAX_BLOCK), batch_memory_mb)
    empty_ptr = np.zeros(1, dtype=np.int64)
    no_idx = np.zeros(0, dtype=np.int64)
    off_s = np.empty((0, k), dtype=np.float32)
    off_i = np.empty((0, k), dtype=np.int64)

    for start in range(0, len(users), step):
        batch = users[start : start + step]
        b = len(batch)
        pb = np.ascontiguousarray(P[batch], dtype=np.float32)
        pn = np.sqrt(np.einsum("ij,ij->i", pb, pb, dtype=np.float64)) * slack
        plain_s = np.full((b, k), _NEG_INF, dtype=np.float32) if plain else off_s
        plain_i = np.full((b, k), -1, dtype=np.int64) if plain else off_i
        excl_s = np.full((b, k), _NEG_INF, dtype=np.float32) if excluded else off_s
        excl_i = np.full((b, k), -1, dtype=np.int64) if excluded else off_i
        if excluded and exclude is not None:
            sub = exclude[batch]
            e_ptr = sub.indptr.astype(np.int64)
            e_idx = sub.indices.astype(np.int64)
        else:
            e_ptr = np.zeros(b + 1, dtype=np.int64) if b else empty_ptr
            e_idx = no_idx
        thresholds = [a for a, on in ((plain_s, plain), (excl_s, excluded)) if on]

        active = np.arange(b, dtype=np.int64)
        pos, width = 0, _FIRST_BLOCK
        buf = np.empty(b * min(n_items, width), dtype=np.float32)
        while pos < n_items and active.size:
            end = min(n_items, pos + width)
            need = active.size * (end - pos)
            if buf.size < need:
                buf = np.empty(need, dtype=np.float32)
            scores = buf[:need].reshape(active.size, end - pos)
            np.matmul(pb[active] if active.size < b else pb, qs[pos:end].T, out=scores)
            _scan_block(scores, active, pos, order, e_ptr, e_idx, plain_s, plain_i, excl_s, excl_i)
            if end == n_items:
                break
            thr = thresholds[0][active, k - 1]
            for t in thresholds[1:]:
                thr = np.minimum(thr, t[active, k - 1])
            # Keep users some remaining item may still enter (NaN bounds keep users too).
            active = active[~(pn[active] * qn_sorted[end] < thr)]
            pos, width = end, min(2 * width, _MAX_BLOCK)

        yield Rankings(
            start=start,
            plain_items=plain_i if plain else None,
            plain_scores=plain_s if plain else None,
            excl_items=excl_i if excluded else None,
            excl_scores=excl_s if excluded else None,
        )


def top_k(
    P: np.ndarray,
    Q: np.ndarray,
    users: np.ndarray,
    k: int,
    exclude: sp.spmatrix | sp.sparray | None = None,
    batch_memory_mb: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best items of each user in `users` by score P[u] @ Q[i], best first.

    `exclude` has one row per row of `P` (e.g. a model's training matrix); the items stored in
    row `u` are never returned for user `u`. Returns `(items, scores)`, int64 and float32 of
    shape (len(users), k); equal scores rank the lower item id first; rows with fewer than `k`
    candidates are padded with item -1 and score -inf. Users are processed in batches whose
    float32 scores stay within `batch_memory_mb`; results do not depend on it.
    """
    P, Q = _as_factors(P, Q)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    users = _as_users(users, P.shape[0])
    excl = None
    if exclude is not None:
        excl = canonical_csr(exclude, (P.shape[0], Q.shape[0]), "exclude")
    items = np.empty((len(users), k), dtype=np.int64)
    scores = np.empty((len(users), k), dtype=np.float32)
    for part in rank(P, Q, users, k, excl, excl is None, excl is not None, batch_memory_mb):
        got_i = part.plain_items if excl is None else part.excl_items
        got_s = part.plain_scores if excl is None else part.excl_scores
        assert got_i is not None and got_s is not None
        items[part.start : part.start + len(got_i)] = got_i
        scores[part.start : part.start + len(got_s)] = got_s
    return items, scores
