"""Slow NumPy references of the kernels in `_kernels.py`, written for readability only.

Each function has the same signature and in-place semantics as its kernel but is coded
differently (vector operations per rating, `np.linalg.solve`, `np.bincount`, the package's own
formulas such as s^2 exp(-x) for the sigmoid derivative), so agreement between the two is
evidence that the kernels implement the documented update rules. Never used in training.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "als_half_step",
    "baseline_als_epoch",
    "baseline_sgd_epoch",
    "predict_pairs",
    "sgd_epoch_linear",
    "sgd_epoch_rbf",
    "sgd_epoch_sigmoid",
]


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
    """KernelMF's linear `kernel_linear_sgd_update`, rating by rating in array order."""
    sse = 0.0
    for k in range(len(ratings)):
        u, i, r = users[k], items[k], ratings[k]
        x, y = user_factors[u].copy(), item_factors[i].copy()
        bu, bi = user_bias[u], item_bias[i]
        err = mu + bu + bi + x @ y - r
        sse += err**2
        user_bias[u] = bu - lr * (err + reg_bias * bu)
        user_factors[u] = x - lr * (err * y + reg_factors * x)
        if update_items:
            item_bias[i] = bi - lr * (err + reg_bias * bi)
            item_factors[i] = y - lr * (err * x + reg_factors * y)
    return float(sse)


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
    """KernelMF's `kernel_sigmoid_sgd_update` with its derivative sigmoid(x)^2 * exp(-x)."""
    sse = 0.0
    for k in range(len(ratings)):
        u, i, r = users[k], items[k], ratings[k]
        x, y = user_factors[u].copy(), item_factors[i].copy()
        bu, bi = user_bias[u], item_bias[i]
        lin = mu + bu + bi + x @ y
        s = 1.0 / (1.0 + np.exp(-lin))
        err = a + c * s - r
        sse += err**2
        deriv = s**2 * np.exp(-lin)
        user_bias[u] = bu - lr * (err * deriv + reg_bias * bu)
        user_factors[u] = x - lr * (err * deriv * y + reg_factors * x)
        if update_items:
            item_bias[i] = bi - lr * (err * deriv + reg_bias * bi)
            item_factors[i] = y - lr * (err * deriv * x + reg_factors * y)
    return float(sse)


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
    """KernelMF's `kernel_rbf_sgd_update`: derivative 2 gamma exp(-gamma |x - y|^2) (y - x)."""
    sse = 0.0
    for k in range(len(ratings)):
        u, i, r = users[k], items[k], ratings[k]
        x, y = user_factors[u].copy(), item_factors[i].copy()
        e = np.exp(-gamma * np.sum(np.square(x - y)))
        err = a + c * e - r
        sse += err**2
        base = 2.0 * e * gamma
        user_factors[u] = x - lr * (err * base * (y - x) + reg_factors * x)
        if update_items:
            item_factors[i] = y - lr * (err * base * (x - y) + reg_factors * y)
    return float(sse)


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
    """Ridge regression of each row's targets on [1, y_j] with penalty n_r * diag(reg)."""
    n_f = other_factors.shape[1]
    for r in range(len(indptr) - 1):
        cols = indices[indptr[r] : indptr[r + 1]]
        if len(cols) == 0:
            continue
        t = data[indptr[r] : indptr[r + 1]] - mu - other_bias[cols]
        z = np.hstack([np.ones((len(cols), 1)), other_factors[cols]])
        penalty = len(cols) * np.diag(np.r_[reg_bias, np.full(n_f, reg_factors)])
        w = np.linalg.solve(z.T @ z + penalty, z.T @ t)
        bias[r] = w[0]
        factors[r] = w[1:]


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
    """BaselineModel `_sgd` for one epoch."""
    sse = 0.0
    for k in range(len(ratings)):
        u, i = users[k], items[k]
        err = ratings[k] - mu - user_bias[u] - item_bias[i]
        sse += err**2
        user_bias[u] += lr * (err - reg * user_bias[u])
        item_bias[i] += lr * (err - reg * item_bias[i])
    return float(sse)


def baseline_als_epoch(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    mu: float,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    reg: float,
) -> None:
    """BaselineModel `_als` for one epoch, with np.bincount sums."""
    nu, ni = len(user_bias), len(item_bias)
    cnt_u = np.bincount(users, minlength=nu)
    num_u = np.bincount(users, weights=ratings - mu - item_bias[items], minlength=nu)
    user_bias[:] = np.where(cnt_u > 0, num_u / np.maximum(reg + cnt_u, 1e-300), 0.0)
    cnt_i = np.bincount(items, minlength=ni)
    num_i = np.bincount(items, weights=ratings - mu - user_bias[users], minlength=ni)
    item_bias[:] = np.where(cnt_i > 0, num_i / np.maximum(reg + cnt_i, 1e-300), 0.0)


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
    """Vectorized predictions; unknown users/items fall back to mu + the known bias."""
    u_ok = (users >= 0) & (users < len(user_bias))
    i_ok = (items >= 0) & (items < len(item_bias))
    uu, ii = np.where(u_ok, users, 0), np.where(i_ok, items, 0)
    x, y = user_factors[uu], item_factors[ii]
    lin = mu + user_bias[uu] + item_bias[ii] + np.sum(x * y, axis=1)
    if kernel == 0:
        pred = lin
    elif kernel == 1:
        pred = a + c / (1.0 + np.exp(-lin))
    else:
        pred = a + c * np.exp(-gamma * np.sum((x - y) ** 2, axis=1))
    fallback = mu + np.where(u_ok, user_bias[uu], 0.0) + np.where(i_ok, item_bias[ii], 0.0)
    out[:] = np.where(u_ok & i_ok, pred, fallback)
