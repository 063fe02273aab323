"""Numba kernels of the explicit-rating models: one epoch (or half-epoch) per call.

Every kernel works in place on flat arrays: float64 biases, C-contiguous float32 factor
matrices, and either COO `users`/`items`/`ratings` or CSR `indptr`/`indices`/`data`. SGD kernels
visit the COO ratings in array order; the driver shuffles its private copy in place with
`shuffle_ratings` before each epoch (~2x faster than indirect `order[n]` lookups inside the
loop, whose random loads sit on the critical path). Epoch bookkeeping (seeds, loss,
divergence, callbacks) lives in the Python driver (`_models.py`); a slow NumPy twin of every
kernel lives in `_reference.py` and the tests hold the two to 1e-5.

The SGD update rules are those of the `matrix-factorization` package's KernelMF (and, for the
linear kernel, Surprise's SVD): the prediction error is computed once per rating and user and
item parameters are updated simultaneously from their pre-update values. Sigmoid and RBF
gradients omit the output scale `c = max_rating - min_rating`, exactly as that package does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = [
    "KERNEL_CODES",
    "als_half_step",
    "baseline_als_epoch",
    "baseline_sgd_epoch",
    "predict_pairs",
    "sgd_epoch_linear",
    "sgd_epoch_rbf",
    "sgd_epoch_sigmoid",
    "shuffle_ratings",
]

#: Integer codes of the prediction kernels, as passed to `predict_pairs`.
KERNEL_CODES = {"linear": 0, "sigmoid": 1, "rbf": 2}

# Reassociation lets LLVM vectorize the dot-product reductions (2-3x faster SGD epochs); NaN and
# inf semantics are kept (no "nnan"/"ninf"), so divergence still shows up as non-finite values.
_FAST = {"reassoc", "contract"}


@njit(nogil=True, cache=True, fastmath=_FAST)
def _sigmoid(x: float) -> float:
    # Branching keeps exp() from overflowing for large |x|; same value as 1 / (1 + exp(-x)).
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# --------------------------------------------------------------------------- SGD


@njit(nogil=True, cache=True)
def shuffle_ratings(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, seed: int) -> None:
    """Fisher-Yates shuffle of the COO triples in place, from numba's generator seeded by `seed`.

    Numba keeps one generator state per thread, and it is seeded here inside the jitted code,
    so the permutation depends on `seed` (and the input order) only.
    """
    # Numba has no np.random.Generator in nopython mode; its legacy API is seeded right here.
    np.random.seed(seed)  # noqa: NPY002
    for k in range(ratings.shape[0] - 1, 0, -1):
        j = np.random.randint(0, k + 1)  # noqa: NPY002
        users[k], users[j] = users[j], users[k]
        items[k], items[j] = items[j], items[k]
        ratings[k], ratings[j] = ratings[j], ratings[k]


@njit(nogil=True, cache=True, fastmath=_FAST)
def sgd_epoch_linear(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    mu: float,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    lr: float,
    reg_bias: float,
    reg_factors: float,
    update_items: bool,
) -> float:
    """One SGD pass over the ratings, in array order, for r ~ mu + b_u + b_i + x_u.y_i.

    Returns the sum of squared errors seen during the pass (each before its own update).
    `update_items=False` freezes item parameters (fold-in of new users).
    """
    n_f = user_factors.shape[1]
    # Factor arithmetic stays in the factors' dtype (float32 in the models) so it vectorizes.
    dtype = user_factors.dtype.type
    zero = dtype(0.0)
    lr_f = dtype(lr)
    rf = dtype(reg_factors)
    sse = 0.0
    for k in range(ratings.shape[0]):
        u = users[k]
        i = items[k]
        pu = user_factors[u]
        qi = item_factors[i]
        dot = zero
        for f in range(n_f):
            dot += pu[f] * qi[f]
        err = mu + user_bias[u] + item_bias[i] + dot - ratings[k]
        sse += err * err
        user_bias[u] -= lr * (err + reg_bias * user_bias[u])
        e = dtype(err)
        if update_items:
            item_bias[i] -= lr * (err + reg_bias * item_bias[i])
            for f in range(n_f):
                puf = pu[f]
                qif = qi[f]
                pu[f] = puf - lr_f * (e * qif + rf * puf)
                qi[f] = qif - lr_f * (e * puf + rf * qif)
        else:
            for f in range(n_f):
                pu[f] -= lr_f * (e * qi[f] + rf * pu[f])
    return sse


@njit(nogil=True, cache=True, fastmath=_FAST)
def sgd_epoch_sigmoid(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    mu: float,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    lr: float,
    reg_bias: float,
    reg_factors: float,
    a: float,
    c: float,
    update_items: bool,
) -> float:
    """One SGD pass for r ~ a + c * sigmoid(mu + b_u + b_i + x_u.y_i) (KernelMF "sigmoid").

    The gradient factor is sigmoid' = s(1 - s) (the package writes s^2 exp(-x), equal but
    overflowing for very negative x), without the scale `c`, as in the package.
    """
    n_f = user_factors.shape[1]
    # Factor arithmetic stays in the factors' dtype (float32 in the models) so it vectorizes.
    dtype = user_factors.dtype.type
    zero = dtype(0.0)
    lr_f = dtype(lr)
    rf = dtype(reg_factors)
    sse = 0.0
    for k in range(ratings.shape[0]):
        u = users[k]
        i = items[k]
        pu = user_factors[u]
        qi = item_factors[i]
        dot = zero
        for f in range(n_f):
            dot += pu[f] * qi[f]
        s = _sigmoid(mu + user_bias[u] + item_bias[i] + dot)
        err = a + c * s - ratings[k]
        sse += err * err
        g = err * s * (1.0 - s)
        user_bias[u] -= lr * (g + reg_bias * user_bias[u])
        e = dtype(g)
        if update_items:
            item_bias[i] -= lr * (g + reg_bias * item_bias[i])
            for f in range(n_f):
                puf = pu[f]
                qif = qi[f]
                pu[f] = puf - lr_f * (e * qif + rf * puf)
                qi[f] = qif - lr_f * (e * puf + rf * qif)
        else:
            for f in range(n_f):
                pu[f] -= lr_f * (e * qi[f] + rf * pu[f])
    return sse


@njit(nogil=True, cache=True, fastmath=_FAST)
def sgd_epoch_rbf(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    lr: float,
    reg_factors: float,
    gamma: float,
    a: float,
    c: float,
    update_items: bool,
) -> float:
    """One SGD pass for r ~ a + c * exp(-gamma |x_u - y_i|^2) (KernelMF "rbf"; no biases).

    Gradient factor 2 gamma exp(.) without the scale `c`, as in the package.
    """
    n_f = user_factors.shape[1]
    # Factor arithmetic stays in the factors' dtype (float32 in the models) so it vectorizes.
    dtype = user_factors.dtype.type
    zero = dtype(0.0)
    lr_f = dtype(lr)
    rf = dtype(reg_factors)
    sse = 0.0
    for k in range(ratings.shape[0]):
        u = users[k]
        i = items[k]
        pu = user_factors[u]
        qi = item_factors[i]
        dist2 = zero
        for f in range(n_f):
            d = pu[f] - qi[f]
            dist2 += d * d
        kern = math.exp(-gamma * dist2)
        err = a + c * kern - ratings[k]
        sse += err * err
        e = dtype(err * 2.0 * gamma * kern)
        if update_items:
            for f in range(n_f):
                puf = pu[f]
                qif = qi[f]
                pu[f] = puf - lr_f * (e * (qif - puf) + rf * puf)
                qi[f] = qif - lr_f * (e * (puf - qif) + rf * qif)
        else:
            for f in range(n_f):
                pu[f] -= lr_f * (e * (qi[f] - pu[f]) + rf * pu[f])
    return sse


# --------------------------------------------------------------------------- ALS


@njit(nogil=True, cache=True, fastmath=_FAST)
def _cholesky_solve(a: np.ndarray, b: np.ndarray) -> None:
    """Solve a x = b in place (x in b) for symmetric positive definite `a` (overwritten).

    Hand-written so the solve runs inside `prange` without LAPACK calls or allocations.
    """
    k = a.shape[0]
    for j in range(k):
        s = a[j, j]
        for p in range(j):
            s -= a[j, p] * a[j, p]
        # A ridge term keeps `s` positive; the floor only guards against round-off.
        d = math.sqrt(s if s > 1e-300 else 1e-300)
        a[j, j] = d
        for r in range(j + 1, k):
            t = a[r, j]
            for p in range(j):
                t -= a[r, p] * a[j, p]
            a[r, j] = t / d
    for j in range(k):  # forward: L y = b
        t = b[j]
        for p in range(j):
            t -= a[j, p] * b[p]
        b[j] = t / a[j, j]
    for j in range(k - 1, -1, -1):  # backward: L^T x = y
        t = b[j]
        for p in range(j + 1, k):
            t -= a[p, j] * b[p]
        b[j] = t / a[j, j]


@njit(nogil=True, cache=True, parallel=True, fastmath=_FAST)
def als_half_step(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    mu: float,
    other_bias: np.ndarray,
    other_factors: np.ndarray,
    reg_bias: float,
    reg_factors: float,
    bias: np.ndarray,
    factors: np.ndarray,
) -> None:
    """Closed-form ridge solve of [b_r, x_r] for every row r of a CSR, the other side fixed.

    Row r minimizes sum_j (data_rj - mu - b'_j - b_r - x_r.y_j)^2 + n_r (reg_bias b_r^2 +
    reg_factors |x_r|^2) over its n_r entries: the objective whose stationary point per-rating
    SGD with the same regularization reaches (the ALS-WR weighting). Rows without entries keep
    their values. Called with the user x item CSR it updates users; with the item x user CSR
    (transpose), items.
    """
    n_rows = indptr.shape[0] - 1
    n_f = other_factors.shape[1]
    k = n_f + 1
    for r in prange(n_rows):
        start = indptr[r]
        stop = indptr[r + 1]
        m = stop - start
        if m == 0:
            continue
        # z_j = [1, y_j]; a = sum z z^T + m diag(reg), b = sum z t (lower triangle only).
        a = np.zeros((k, k))
        b = np.zeros(k)
        z = np.empty(k)
        z[0] = 1.0
        for p in range(start, stop):
            j = indices[p]
            t = data[p] - mu - other_bias[j]
            yj = other_factors[j]
            for f in range(n_f):
                z[f + 1] = yj[f]
            for s in range(k):
                zs = z[s]
                b[s] += zs * t
                row = a[s]
                for q in range(s + 1):
                    row[q] += zs * z[q]
        a[0, 0] += m * reg_bias
        for f in range(1, k):
            a[f, f] += m * reg_factors
        _cholesky_solve(a, b)
        bias[r] = b[0]
        xr = factors[r]
        for f in range(n_f):
            xr[f] = b[f + 1]


# --------------------------------------------------------------------------- baseline


@njit(nogil=True, cache=True)
def baseline_sgd_epoch(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    mu: float,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    lr: float,
    reg: float,
) -> float:
    """One SGD pass for r ~ mu + b_u + b_i, the update of the package's BaselineModel."""
    sse = 0.0
    for k in range(ratings.shape[0]):
        u = users[k]
        i = items[k]
        err = ratings[k] - (mu + user_bias[u] + item_bias[i])
        sse += err * err
        user_bias[u] += lr * (err - reg * user_bias[u])
        item_bias[i] += lr * (err - reg * item_bias[i])
    return sse


@njit(nogil=True, cache=True)
def baseline_als_epoch(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    mu: float,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    reg: float,
) -> None:
    """User biases then item biases in closed form, b_u = sum(r - mu - b_i) / (reg + n_u).

    The package's BaselineModel ALS (regularization added to the count, not scaled by it).
    Users or items without ratings get bias 0.
    """
    n_users = user_bias.shape[0]
    n_items = item_bias.shape[0]
    num_u = np.zeros(n_users)
    cnt_u = np.zeros(n_users)
    for k in range(ratings.shape[0]):
        u = users[k]
        num_u[u] += ratings[k] - mu - item_bias[items[k]]
        cnt_u[u] += 1.0
    for u in range(n_users):
        user_bias[u] = num_u[u] / (reg + cnt_u[u]) if cnt_u[u] > 0 else 0.0
    num_i = np.zeros(n_items)
    cnt_i = np.zeros(n_items)
    for k in range(ratings.shape[0]):
        i = items[k]
        num_i[i] += ratings[k] - mu - user_bias[users[k]]
        cnt_i[i] += 1.0
    for i in range(n_items):
        item_bias[i] = num_i[i] / (reg + cnt_i[i]) if cnt_i[i] > 0 else 0.0


# --------------------------------------------------------------------------- prediction


# Serial: at these sizes (one pass over the ratings) thread start-up costs more than it saves.
@njit(nogil=True, cache=True, fastmath=_FAST)
def predict_pairs(
    users: np.ndarray,
    items: np.ndarray,
    kernel: int,
    mu: float,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    gamma: float,
    a: float,
    c: float,
    out: np.ndarray,
) -> None:
    """Unclipped predictions for the pairs (users[n], items[n]) into `out`.

    A user or item index outside its table (e.g. -1) is unknown: the pair gets mu plus the
    known side's bias, whatever the kernel (a rating-scale fallback, never an index error).
    """
    n_users = user_bias.shape[0]
    n_items = item_bias.shape[0]
    n_f = user_factors.shape[1]
    for n in range(users.shape[0]):
        u = users[n]
        i = items[n]
        u_ok = 0 <= u < n_users
        i_ok = 0 <= i < n_items
        if not (u_ok and i_ok):
            v = mu
            if u_ok:
                v += user_bias[u]
            if i_ok:
                v += item_bias[i]
            out[n] = v
            continue
        pu = user_factors[u]
        qi = item_factors[i]
        if kernel == 2:
            dist2 = 0.0
            for f in range(n_f):
                d = pu[f] - qi[f]
                dist2 += d * d
            out[n] = a + c * math.exp(-gamma * dist2)
            continue
        dot = 0.0
        for f in range(n_f):
            dot += pu[f] * qi[f]
        x = mu + user_bias[u] + item_bias[i] + dot
        out[n] = x if kernel == 0 else a + c * _sigmoid(x)
