"""Explicit-rating models r_ui ~ mu + b_u + b_i + x_u . y_i: SGD, ALS and a bias-only baseline.

The numerical work is in `_kernels.py` (numba, one epoch per call); this module is the
bookkeeping around it: validating input, drawing every random number from one
`np.random.Generator` seeded by `seed`, running epochs, tracking the training RMSE, detecting
divergence, calling the callback and publishing the learned state.

Random draws of `fit`, in order: user factors, item factors (both N(0, init_std), float32), then
per SGD epoch one seed `Generator.integers(2**31)` for `_kernels.shuffle_ratings`, which shuffles
the ratings in place (each epoch starting from the previous epoch's order; the first from the
stored entries of the training CSR in row-major order). A stored zero is no rating, as
everywhere in the model contract (`update_users` drops them too); shift a rating scale that
includes 0.

Published state, after every epoch when there is a callback (copies, so it sees exactly that
epoch), else after the last:
`global_mean_`, `user_biases_`, `item_biases_` (float64), `user_factors_`, `item_factors_`
(float32), `min_rating_`, `max_rating_`, `train_rmse_`, `n_epochs_`, `seen_`. `train_rmse_` holds
one unclipped training RMSE per epoch: for SGD solvers the running RMSE of the pass (each
rating's error just before its own update, free to compute, as most SGD libraries report); for
ALS solvers the exact RMSE after the epoch.

An epoch that yields a non-finite parameter or loss raises :class:`DivergedError` right away
and leaves the model unfitted, so a model never holds NaNs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from mfstudy.errors import ConfigError, DataError
from mfstudy.models._base import Callback, DivergedError, Recommender
from mfstudy.models.explicit import _kernels as K

__all__ = ["ALSMF", "SGDMF", "Baseline"]

_LOG = logging.getLogger(__name__)

# Smallest factor regularization used by closed-form fold-in, so that a user with fewer ratings
# than factors still has a unique solution when the model was trained with reg_factors=0.
_RIDGE_FLOOR = 1e-6

_FITTED = (
    "global_mean_",
    "min_rating_",
    "max_rating_",
    "user_biases_",
    "item_biases_",
    "user_factors_",
    "item_factors_",
    "train_rmse_",
    "n_epochs_",
    "seen_",
)


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class _Ratings:
    """The training ratings as CSR (users), CSC-as-CSR (items) and COO arrays for the kernels."""

    csr: sp.csr_matrix
    users: np.ndarray  # int32, row-major order of the CSR
    items: np.ndarray  # int32
    ratings: np.ndarray  # float64

    def shuffled(self) -> _Ratings:
        """A copy whose COO arrays the SGD driver may shuffle in place every epoch."""
        return _Ratings(self.csr, self.users.copy(), self.items.copy(), self.ratings.copy())

    def shuffle(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shuffle the COO arrays in place (seed from `rng`) and return them for a kernel."""
        K.shuffle_ratings(self.users, self.items, self.ratings, int(rng.integers(2**31)))
        return self.users, self.items, self.ratings

    @property
    def nnz(self) -> int:
        return int(self.ratings.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return self.csr.shape  # type: ignore[return-value]

    def item_major(self) -> sp.csr_matrix:
        """Items x users CSR of the same ratings (for the item half of ALS)."""
        t = self.csr.T.tocsr()
        t.sort_indices()
        return t


def _ratings(matrix: Any, what: str, allow_empty: bool = False) -> _Ratings:
    """Validate a users x items sparse matrix of ratings and unpack it for the kernels."""
    if not sp.issparse(matrix) or len(matrix.shape) != 2:
        raise DataError(
            f"{what}: expected a users x items scipy sparse matrix of ratings, "
            f"got {type(matrix).__name__}"
        )
    csr = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()  # a stored zero is no interaction (the contract's convention)
    csr.sort_indices()
    if csr.nnz == 0 and not allow_empty:
        raise DataError(f"{what}: no ratings (the matrix has no stored entries)")
    bad = np.flatnonzero(~np.isfinite(csr.data))
    if bad.size:
        pos = int(bad[0])
        row = int(np.searchsorted(csr.indptr, pos, side="right") - 1)
        raise DataError(
            f"{what}: rating at row {row}, column {int(csr.indices[pos])} is "
            f"{csr.data[pos]}; ratings must be finite"
        )
    if max(csr.shape) >= 2**31 - 1:
        raise DataError(f"{what}: {csr.shape} is too large (at most 2**31 - 2 users and items)")
    users = np.repeat(np.arange(csr.shape[0], dtype=np.int32), np.diff(csr.indptr))
    return _Ratings(csr, users, csr.indices.astype(np.int32), csr.data)


# --------------------------------------------------------------------------- hyperparameters


def _int_param(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float_param(
    owner: str, name: str, value: Any, minimum: float = 0.0, strict: bool = False
) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not ok or not math.isfinite(v) or v < minimum or (strict and v == minimum):
        op = ">" if strict else ">="
        raise ConfigError(f"{owner}: {name} must be a finite number {op} {minimum}, got {value!r}")
    return v


def _choice_param(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{owner}: {name} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


# --------------------------------------------------------------------------- shared driver


@dataclass
class _Params:
    """Working parameters mutated in place by the kernels during `fit`."""

    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray

    def non_finite(self) -> str | None:
        for name in ("user_bias", "item_bias", "user_factors", "item_factors"):
            if not np.isfinite(getattr(self, name)).all():
                return name.replace("_", " ")
        return None


class _ExplicitMF(Recommender):
    """Shared driver, inference and persistence of the explicit models (not registered)."""

    #: Kernel code for `_kernels.predict_pairs`; SGDMF overrides per its `kernel`.
    _kernel: ClassVar[str] = "linear"

    iterations: int
    seed: int
    global_mean_: float
    min_rating_: float
    max_rating_: float
    user_biases_: np.ndarray
    item_biases_: np.ndarray
    train_rmse_: list[float]

    # ---------------------------------------------------------------- subclass hooks

    def check_params(self) -> None:
        """Raise ConfigError for hyperparameters that cannot be trained with."""
        raise NotImplementedError

    def _n_factors(self) -> int:
        raise NotImplementedError

    def _init_std(self) -> float:
        raise NotImplementedError

    def _rating_bounds(self, data: _Ratings) -> tuple[float, float]:
        return float(data.ratings.min()), float(data.ratings.max())

    def _prepare(self, data: _Ratings) -> dict[str, Any]:
        """Per-fit precomputation handed to every `_epoch` call (e.g. the item-major CSR)."""
        return {}

    def _epoch(
        self, p: _Params, data: _Ratings, mu: float, rng: np.random.Generator, aux: dict[str, Any]
    ) -> float | None:
        """Run one epoch in place; return the running sum of squared errors if the solver has
        one (SGD), else None (the driver then computes the exact training RMSE)."""
        raise NotImplementedError

    def _kernel_name(self) -> str:
        return self._kernel

    def _gamma(self) -> float:
        return 0.0

    # ---------------------------------------------------------------- training

    def fit(self, train: sp.csr_matrix, callback: Callback | None = None) -> _ExplicitMF:
        """Learn from the users x items matrix of ratings `train`; see the module docstring."""
        name = type(self).__name__
        self.check_params()
        data = _ratings(train, f"{name}.fit: train")
        lo, hi = self._rating_bounds(data)
        for attr in _FITTED:
            self.__dict__.pop(attr, None)

        rng = np.random.default_rng(self.seed)
        n_users, n_items = data.shape
        f, std = self._n_factors(), self._init_std()
        p = _Params(
            user_bias=np.zeros(n_users),
            item_bias=np.zeros(n_items),
            user_factors=rng.normal(0.0, std, (n_users, f)).astype(np.float32),
            item_factors=rng.normal(0.0, std, (n_items, f)).astype(np.float32),
        )
        mu = float(data.ratings.mean())
        aux = self._prepare(data)
        history: list[float] = []
        pred = np.empty(data.nnz)
        seen = data.csr.astype(np.float32)
        for epoch in range(1, self.iterations + 1):
            sse = self._epoch(p, data, mu, rng, aux)
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is checked below
                if sse is None:
                    self._predict_into(p, mu, lo, hi, data.users, data.items, pred)
                    sse = float(np.sum((pred - data.ratings) ** 2))
                rmse = math.sqrt(sse / data.nnz) if math.isfinite(sse) else math.inf
            bad = p.non_finite() or (None if math.isfinite(rmse) else "training loss")
            if bad is not None:
                for attr in _FITTED:
                    self.__dict__.pop(attr, None)
                raise DivergedError(
                    f"{name}: training diverged in epoch {epoch} (non-finite {bad}); "
                    f"lower the learning rate or raise the regularization"
                )
            history.append(rmse)
            _LOG.debug("%s epoch %d/%d: train RMSE %.5f", name, epoch, self.iterations, rmse)
            if callback is not None:
                self._publish(p, mu, lo, hi, history, epoch, seen)
                if callback(epoch, self):
                    _LOG.debug("%s: stopped by callback after epoch %d", name, epoch)
                    return self
        # `p` is not used after this, so the final state is handed over without copies.
        self._publish(p, mu, lo, hi, history, len(history), seen, copy=False)
        return self

    def _publish(
        self,
        p: _Params,
        mu: float,
        lo: float,
        hi: float,
        history: list[float],
        epoch: int,
        seen: sp.csr_matrix,
        copy: bool = True,
    ) -> None:
        self.global_mean_ = mu
        self.min_rating_, self.max_rating_ = lo, hi
        self.user_biases_ = p.user_bias.copy() if copy else p.user_bias
        self.item_biases_ = p.item_bias.copy() if copy else p.item_bias
        self.user_factors_ = p.user_factors.copy() if copy else p.user_factors
        self.item_factors_ = p.item_factors.copy() if copy else p.item_factors
        self.train_rmse_ = list(history)
        self.n_epochs_ = epoch
        self.seen_ = seen

    # ---------------------------------------------------------------- inference

    def _predict_into(
        self,
        p: _Params,
        mu: float,
        lo: float,
        hi: float,
        users: np.ndarray,
        items: np.ndarray,
        out: np.ndarray,
    ) -> None:
        K.predict_pairs(
            users,
            items,
            K.KERNEL_CODES[self._kernel_name()],
            mu,
            p.user_bias,
            p.item_bias,
            p.user_factors,
            p.item_factors,
            self._gamma(),
            lo,
            hi - lo,
            out,
        )

    def _fitted_params(self) -> _Params:
        self._check_fitted()
        return _Params(self.user_biases_, self.item_biases_, self.user_factors_, self.item_factors_)

    def score(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Predicted ratings, clipped to [min_rating_, max_rating_].

        A user or item index outside the model (-1 or >= its count) is unknown: the pair gets
        `global_mean_` plus the known side's bias, never an error.
        """
        p = self._fitted_params()
        u = np.asarray(user_ids, dtype=np.int64).ravel()
        i = np.asarray(item_ids, dtype=np.int64).ravel()
        if u.shape != i.shape:
            raise ValueError(f"score: {u.size} user ids but {i.size} item ids")
        # Out-of-range ids all mean "unknown"; clipping to [-1, n] keeps them so in int32.
        u = np.clip(u, -1, p.user_bias.shape[0]).astype(np.int32)
        i = np.clip(i, -1, p.item_bias.shape[0]).astype(np.int32)
        out = np.empty(u.shape[0])
        self._predict_into(p, self.global_mean_, self.min_rating_, self.max_rating_, u, i, out)
        return np.clip(out, self.min_rating_, self.max_rating_)

    def scoring_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """`(P, Q)` = ([x_u, mu + b_u, 1], [y_i, 1, b_i]): P @ Q is the linear pre-link score.

        For the linear kernel the predicted rating is clip(P @ Q); for sigmoid it is
        a + c * sigmoid(P @ Q), which ranks identically.
        """
        self._check_fitted()
        nu, ni = self.user_factors_.shape[0], self.item_factors_.shape[0]
        p = np.hstack(
            [
                self.user_factors_,
                (self.global_mean_ + self.user_biases_)[:, None],
                np.ones((nu, 1)),
            ]
        ).astype(np.float32)
        q = np.hstack([self.item_factors_, np.ones((ni, 1)), self.item_biases_[:, None]]).astype(
            np.float32
        )
        return p, q

    # ---------------------------------------------------------------- fold-in

    def _new_user_params(self, n_new: int) -> _Params:
        """Starting state of `n_new` appended users: bias 0, factors N(0, init_std).

        Seeded by (seed, number of users before), so folding in the same rows into the same
        model is reproducible.
        """
        rng = np.random.default_rng([int(self.seed), int(self.user_factors_.shape[0])])
        f = self.user_factors_.shape[1]
        return _Params(
            user_bias=np.zeros(n_new),
            item_bias=self.item_biases_,
            user_factors=rng.normal(0.0, self._init_std(), (n_new, f)).astype(np.float32),
            item_factors=self.item_factors_,
        )

    def _append_users(self, p: _Params) -> None:
        bad = p.non_finite()
        if bad is not None:
            raise DivergedError(f"{type(self).__name__}: fold-in diverged (non-finite {bad})")
        self.user_biases_ = np.concatenate([self.user_biases_, p.user_bias])
        self.user_factors_ = np.vstack([self.user_factors_, p.user_factors])

    def _fold_in_ridge(self, rows: _Ratings, reg_bias: float, reg_factors: float) -> None:
        """New users' [b_u, x_u] as the exact ridge solution with items fixed (ALS user step)."""
        p = self._new_user_params(rows.shape[0])
        K.als_half_step(
            rows.csr.indptr,
            rows.csr.indices,
            rows.csr.data,
            self.global_mean_,
            self.item_biases_,
            self.item_factors_,
            reg_bias,
            max(reg_factors, _RIDGE_FLOOR),
            p.user_bias,
            p.user_factors,
        )
        self._append_users(p)

    # ---------------------------------------------------------------- persistence

    def _state(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {
            "global_mean": np.asarray(self.global_mean_, dtype=np.float64),
            "rating_range": np.asarray([self.min_rating_, self.max_rating_], dtype=np.float64),
            "user_biases": self.user_biases_,
            "item_biases": self.item_biases_,
            "user_factors": self.user_factors_,
            "item_factors": self.item_factors_,
            "train_rmse": np.asarray(self.train_rmse_, dtype=np.float64),
        }

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.global_mean_ = float(state["global_mean"])
        self.min_rating_, self.max_rating_ = (float(v) for v in state["rating_range"])
        self.user_biases_ = np.asarray(state["user_biases"], dtype=np.float64)
        self.item_biases_ = np.asarray(state["item_biases"], dtype=np.float64)
        self.user_factors_ = np.ascontiguousarray(state["user_factors"], dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(state["item_factors"], dtype=np.float32)
        self.train_rmse_ = [float(v) for v in state["train_rmse"]]


# --------------------------------------------------------------------------- SGD


class SGDMF(_ExplicitMF):
    """Biased matrix factorization trained by per-rating SGD (Funk SVD / KernelMF / Surprise SVD).

    Each epoch visits every rating once in a fresh random order and applies the update rules of
    the `matrix-factorization` package's KernelMF for the chosen `kernel`:

    - `linear`: r = mu + b_u + b_i + x_u . y_i (identical to Surprise's SVD update);
    - `sigmoid`: r = a + c * sigmoid(mu + b_u + b_i + x_u . y_i);
    - `rbf`: r = a + c * exp(-gamma |x_u - y_i|^2) (biases are not used and stay 0),

    with a = min_rating and c = max_rating - min_rating (default: the training ratings' min and
    max), biases regularized by `reg_bias` and factors by `reg_factors`. Predictions are clipped
    to [min_rating, max_rating].

    `scoring_factors()` gives the pre-link score: for `rbf`, P = [2 x_u, -|x_u|^2, 1] and
    Q = [y_i, 1, -|y_i|^2], so P @ Q = -|x_u - y_i|^2 and the rating is a + c exp(gamma P @ Q),
    which ranks identically.

    Fold-in (`update_users`): for the linear kernel, the exact minimizer of the same regularized
    squared loss with items fixed (a ridge solve, the point SGD converges to); for sigmoid and
    rbf, `iterations` SGD passes over the new users' ratings (the package's `update_users`).
    """

    family: ClassVar[str] = "sgd"

    def __init__(
        self,
        factors: int = 100,
        iterations: int = 20,
        learning_rate: float = 0.01,
        reg_factors: float = 0.005,
        reg_bias: float = 0.005,
        init_std: float = 0.1,
        kernel: str = "linear",
        gamma: float = 0.01,
        min_rating: float | None = None,
        max_rating: float | None = None,
        seed: int = 0,
    ) -> None:
        self.factors = factors
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.reg_factors = reg_factors
        self.reg_bias = reg_bias
        self.init_std = init_std
        self.kernel = kernel
        self.gamma = gamma
        self.min_rating = min_rating
        self.max_rating = max_rating
        self.seed = seed

    def check_params(self) -> None:
        n = type(self).__name__
        _int_param(n, "factors", self.factors, 1)
        _int_param(n, "iterations", self.iterations, 1)
        _int_param(n, "seed", self.seed, 0)
        _float_param(n, "learning_rate", self.learning_rate, strict=True)
        _float_param(n, "reg_factors", self.reg_factors)
        _float_param(n, "reg_bias", self.reg_bias)
        _float_param(n, "init_std", self.init_std)
        _choice_param(n, "kernel", self.kernel, tuple(K.KERNEL_CODES))
        _float_param(n, "gamma", self.gamma, strict=True)
        for attr in ("min_rating", "max_rating"):
            if getattr(self, attr) is not None:
                _float_param(n, attr, getattr(self, attr), minimum=-math.inf)

    def _n_factors(self) -> int:
        return int(self.factors)

    def _init_std(self) -> float:
        return float(self.init_std)

    def _kernel_name(self) -> str:
        return str(self.kernel)

    def _gamma(self) -> float:
        return float(self.gamma)

    def _rating_bounds(self, data: _Ratings) -> tuple[float, float]:
        lo_d, hi_d = super()._rating_bounds(data)
        lo = lo_d if self.min_rating is None else float(self.min_rating)
        hi = hi_d if self.max_rating is None else float(self.max_rating)
        if lo > hi:
            raise ConfigError(f"SGDMF: min_rating {lo} is above max_rating {hi}")
        return lo, hi

    def _sgd_pass(
        self,
        p: _Params,
        data: _Ratings,
        mu: float,
        rng: np.random.Generator,
        lo: float,
        hi: float,
        update_items: bool,
    ) -> float:
        lr, rb, rf = float(self.learning_rate), float(self.reg_bias), float(self.reg_factors)
        cols = data.shuffle(rng)
        if self.kernel == "linear":
            return K.sgd_epoch_linear(
                *cols, mu, p.user_bias, p.item_bias, p.user_factors, p.item_factors,
                lr, rb, rf, update_items,
            )  # fmt: skip
        if self.kernel == "sigmoid":
            return K.sgd_epoch_sigmoid(
                *cols, mu, p.user_bias, p.item_bias, p.user_factors, p.item_factors,
                lr, rb, rf, lo, hi - lo, update_items,
            )  # fmt: skip
        return K.sgd_epoch_rbf(
            *cols, p.user_factors, p.item_factors, lr, rf, float(self.gamma), lo, hi - lo,
            update_items,
        )  # fmt: skip

    def _prepare(self, data: _Ratings) -> dict[str, Any]:
        lo, hi = self._rating_bounds(data)
        return {"lo": lo, "hi": hi, "coo": data.shuffled()}

    def _epoch(
        self, p: _Params, data: _Ratings, mu: float, rng: np.random.Generator, aux: dict[str, Any]
    ) -> float:
        return self._sgd_pass(p, aux["coo"], mu, rng, aux["lo"], aux["hi"], update_items=True)

    def scoring_factors(self) -> tuple[np.ndarray, np.ndarray]:
        if self.kernel != "rbf":
            return super().scoring_factors()
        self._check_fitted()
        x, y = self.user_factors_.astype(np.float64), self.item_factors_.astype(np.float64)
        p = np.hstack([2.0 * x, -np.sum(x * x, axis=1)[:, None], np.ones((len(x), 1))])
        q = np.hstack([y, np.ones((len(y), 1)), -np.sum(y * y, axis=1)[:, None]])
        return p.astype(np.float32), q.astype(np.float32)

    def _fold_in(self, rows: sp.csr_matrix) -> None:
        self.check_params()
        data = _ratings(rows, "SGDMF.update_users: rows", allow_empty=True)
        if self.kernel == "linear":
            self._fold_in_ridge(data, float(self.reg_bias), float(self.reg_factors))
            return
        p = self._new_user_params(data.shape[0])
        rng = np.random.default_rng([int(self.seed), int(self.user_factors_.shape[0]), 1])
        data = data.shuffled()
        for _ in range(int(self.iterations)):
            self._sgd_pass(
                p, data, self.global_mean_, rng, self.min_rating_, self.max_rating_, False
            )
        self._append_users(p)


# --------------------------------------------------------------------------- ALS


class ALSMF(_ExplicitMF):
    """Biased matrix factorization trained by alternating least squares.

    Each epoch solves, for every user in parallel, the ridge regression of r_ui - mu - b_i on
    [1, y_i] for [b_u, x_u] jointly, then the same for every item with users fixed. The
    penalty of a row with n ratings is n * (reg_bias b^2 + reg_factors |x|^2) (weighted-lambda
    ALS-WR): exactly the objective per-rating SGD minimizes, so `reg_*` mean the same as in
    SGDMF. `mu` is the training mean; users or items without ratings keep bias 0 and their
    initial factors. `reg_factors` must be positive (a row with fewer ratings than factors
    has no unique solution otherwise).

    Fold-in solves the user step for the new users (exact with items fixed).
    """

    family: ClassVar[str] = "als"

    def __init__(
        self,
        factors: int = 100,
        iterations: int = 20,
        reg_factors: float = 0.1,
        reg_bias: float = 0.1,
        init_std: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.factors = factors
        self.iterations = iterations
        self.reg_factors = reg_factors
        self.reg_bias = reg_bias
        self.init_std = init_std
        self.seed = seed

    def check_params(self) -> None:
        n = type(self).__name__
        _int_param(n, "factors", self.factors, 1)
        _int_param(n, "iterations", self.iterations, 1)
        _int_param(n, "seed", self.seed, 0)
        _float_param(n, "reg_factors", self.reg_factors, strict=True)
        _float_param(n, "reg_bias", self.reg_bias)
        _float_param(n, "init_std", self.init_std)

    def _n_factors(self) -> int:
        return int(self.factors)

    def _init_std(self) -> float:
        return float(self.init_std)

    def _prepare(self, data: _Ratings) -> dict[str, Any]:
        return {"items": data.item_major()}

    def _epoch(
        self, p: _Params, data: _Ratings, mu: float, rng: np.random.Generator, aux: dict[str, Any]
    ) -> None:
        rb, rf = float(self.reg_bias), float(self.reg_factors)
        u, it = data.csr, aux["items"]
        K.als_half_step(
            u.indptr, u.indices, u.data, mu, p.item_bias, p.item_factors, rb, rf,
            p.user_bias, p.user_factors,
        )  # fmt: skip
        K.als_half_step(
            it.indptr, it.indices, it.data, mu, p.user_bias, p.user_factors, rb, rf,
            p.item_bias, p.item_factors,
        )  # fmt: skip

    def _fold_in(self, rows: sp.csr_matrix) -> None:
        self.check_params()
        data = _ratings(rows, "ALSMF.update_users: rows", allow_empty=True)
        self._fold_in_ridge(data, float(self.reg_bias), float(self.reg_factors))


# --------------------------------------------------------------------------- baseline


class Baseline(_ExplicitMF):
    """r_ui ~ mu + b_u + b_i, the `matrix-factorization` package's BaselineModel.

    `solver="sgd"`: per-rating SGD in a fresh random order each epoch,
    b += learning_rate * (err - reg * b). `solver="als"`: user biases then item biases in
    closed form, b_u = sum(r - mu - b_i) / (reg + n_u) (the package's use of `reg`: added to the
    count, not scaled by it); `learning_rate` is unused.

    The model has no factors: `user_factors_`/`item_factors_` have zero columns and
    `scoring_factors()` is ([mu + b_u, 1], [1, b_i]). Fold-in sets each new user's bias to the
    fixed point of the solver with items fixed: sum(r - mu - b_i) / (reg + n_u) for ALS and
    sum(r - mu - b_i) / (n_u (1 + reg)) for SGD.
    """

    family: ClassVar[str] = "baseline"

    def __init__(
        self,
        solver: str = "sgd",
        iterations: int = 20,
        learning_rate: float = 0.01,
        reg: float = 0.005,
        seed: int = 0,
    ) -> None:
        self.solver = solver
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.reg = reg
        self.seed = seed

    def check_params(self) -> None:
        n = type(self).__name__
        _choice_param(n, "solver", self.solver, ("sgd", "als"))
        _int_param(n, "iterations", self.iterations, 1)
        _int_param(n, "seed", self.seed, 0)
        _float_param(n, "learning_rate", self.learning_rate, strict=True)
        _float_param(n, "reg", self.reg)

    def _n_factors(self) -> int:
        return 0

    def _init_std(self) -> float:
        return 0.0

    def _prepare(self, data: _Ratings) -> dict[str, Any]:
        return {"coo": data.shuffled()} if self.solver == "sgd" else {}

    def _epoch(
        self, p: _Params, data: _Ratings, mu: float, rng: np.random.Generator, aux: dict[str, Any]
    ) -> float | None:
        if self.solver == "sgd":
            return K.baseline_sgd_epoch(
                *aux["coo"].shuffle(rng), mu, p.user_bias, p.item_bias,
                float(self.learning_rate), float(self.reg),
            )  # fmt: skip
        K.baseline_als_epoch(
            data.users, data.items, data.ratings, mu, p.user_bias, p.item_bias, float(self.reg)
        )
        return None

    def _fold_in(self, rows: sp.csr_matrix) -> None:
        self.check_params()
        data = _ratings(rows, "Baseline.update_users: rows", allow_empty=True)
        n_new = data.shape[0]
        resid = data.ratings - self.global_mean_ - self.item_biases_[data.items]
        num = np.bincount(data.users, weights=resid, minlength=n_new)
        cnt = np.bincount(data.users, minlength=n_new).astype(np.float64)
        reg = float(self.reg)
        den = reg + cnt if self.solver == "als" else cnt * (1.0 + reg)
        bias = np.divide(num, den, out=np.zeros(n_new), where=cnt > 0)
        p = _Params(bias, self.item_biases_, np.zeros((n_new, 0), np.float32), self.item_factors_)
        self._append_users(p)
