"""Weighted regularized matrix factorization (implicit-feedback ALS) through `implicit`.

The numerical work is `implicit`'s: this module only maps the study's hyperparameters onto it
(the confidence formula, seeds, threads, GPU), turns its per-iteration hook into the model
contract of :mod:`mfstudy.models._base` and checks for divergence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares as CpuALS
from threadpoolctl import ThreadpoolController

from mfstudy.errors import ConfigError, DataError
from mfstudy.models._base import Callback, DivergedError, Recommender

__all__ = ["WRMF", "hkv_confidence"]

Confidence = Literal["linear", "log"]


class _StopTraining(Exception):
    """Raised inside implicit's iteration hook to end its loop when our callback asks to stop."""


def hkv_confidence(
    weights: np.ndarray, kind: Confidence, alpha: float, epsilon: float = 1.0
) -> np.ndarray:
    """Confidence c = 1 + alpha*d (`linear`) or 1 + alpha*log(1 + d/epsilon) (`log`), float32.

    Hu, Koren & Volinsky (2008), eq. (1) and the log variant of section 4. Computed in float64
    and rounded once, so the float32 values handed to the solver are as exact as they can be.
    """
    d = np.asarray(weights, dtype=np.float64)
    with np.errstate(over="ignore"):
        if kind == "linear":
            c = 1.0 + alpha * d
        else:
            c = 1.0 + alpha * np.log1p(d / epsilon)
        return c.astype(np.float32)


def _as_weights(matrix: sp.spmatrix | sp.sparray, what: str) -> sp.csr_matrix:
    """`matrix` as a canonical float32 CSR of finite, non-negative weights without stored zeros.

    Stored zeros are dropped because implicit reads any stored positive value as a like
    (p_ui = 1), while HKV define p_ui = 1 only for d_ui > 0.
    """
    if not sp.issparse(matrix):
        raise DataError(
            f"{what}: expected a scipy sparse users x items matrix, got {type(matrix).__name__}"
        )
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    m.sum_duplicates()
    bad = ~np.isfinite(m.data) | (m.data < 0)
    if bad.any():
        row = int(np.searchsorted(m.indptr, np.flatnonzero(bad)[0], side="right") - 1)
        raise DataError(f"{what}: weights must be finite and non-negative (row {row})")
    m.eliminate_zeros()
    m.sort_indices()
    return m


def _all_finite(a: np.ndarray) -> bool:
    # A vectorized mask is exact and, measured on lastfm-sized factors, faster than reducing
    # through a float64 sum; it costs well under 1% of an ALS epoch.
    return bool(np.isfinite(a).all())


class WRMF(Recommender):
    """Implicit-feedback matrix factorization (Hu, Koren & Volinsky 2008) fitted by `implicit`.

    Confidence mapping. HKV minimise sum_ui c_ui (p_ui - x_u.y_i)^2 + reg (|x|^2 + |y|^2) with
    p_ui = [d_ui > 0] and c_ui = 1 + alpha*d_ui (`confidence="linear"`) or
    c_ui = 1 + alpha*log(1 + d_ui/epsilon) (`"log"`). implicit 0.7 reads the stored value v_ui of
    its input as the confidence itself, after scaling by its own `alpha` (c = alpha_impl * v):
    its solvers build Y^T Y + reg I + sum_i (c_i - 1) y_i y_i^T and Y^T C_u p_u = sum_i c_i y_i,
    unobserved cells counting with confidence 1 (the CPU `fit`, `recalculate_user` and the GPU
    `recalculate_user` scale by alpha_impl; the GPU `fit` ignores it). So the matrix handed to
    implicit holds v_ui = c_ui computed here by :func:`hkv_confidence`, and implicit's own `alpha`
    stays 1.0: the effective confidence is exactly the HKV formula on every code path.

    Training is one continuous `implicit` fit (its conjugate-gradient solver, 3 steps per
    iteration); `fit(callback=...)` hooks implicit's per-iteration callback, during which
    `user_factors_`/`item_factors_` are implicit's own arrays (no copies on CPU). Folding in new
    users solves their normal equations exactly (Cholesky) against the fixed item factors.
    """

    family = "wrmf"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        confidence: Confidence = "linear",
        epsilon: float = 1.0,
        iterations: int = 15,
        use_gpu: bool = False,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.confidence = confidence
        self.epsilon = epsilon
        self.iterations = iterations
        self.use_gpu = use_gpu
        self.num_threads = num_threads
        self.seed = seed

    # ------------------------------------------------------------------ bookkeeping

    def check_params(self) -> None:
        """Reject hyperparameters implicit would accept silently or crash on obscurely."""

        def is_int(v: Any, low: int) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low

        def is_real(v: Any, low: float, strict: bool) -> bool:
            ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
            return ok and math.isfinite(v) and (v > low if strict else v >= low)

        checks = [
            ("factors", is_int(self.factors, 1), "an int >= 1"),
            ("regularization", is_real(self.regularization, 0, False), "a finite number >= 0"),
            ("alpha", is_real(self.alpha, 0, False), "a finite number >= 0"),
            ("confidence", self.confidence in ("linear", "log"), "'linear' or 'log'"),
            ("epsilon", is_real(self.epsilon, 0, True), "a finite number > 0"),
            ("iterations", is_int(self.iterations, 0), "an int >= 0"),
            ("num_threads", is_int(self.num_threads, 0), "an int >= 0 (0: all cores)"),
            ("seed", is_int(self.seed, 0), "an int >= 0"),
        ]
        for name, ok, requirement in checks:
            if not ok:
                value = getattr(self, name)
                raise ConfigError(f"WRMF: {name} must be {requirement}, got {value!r}")

    def _confidence_matrix(self, weights: sp.csr_matrix) -> sp.csr_matrix:
        """Same sparsity as `weights`, values c_ui; see the class docstring for why."""
        conf = weights.copy()
        conf.data = hkv_confidence(weights.data, self.confidence, self.alpha, self.epsilon)
        if not _all_finite(conf.data):
            raise DivergedError(
                f"WRMF: confidence overflows float32 (alpha={self.alpha}, "
                f"confidence={self.confidence!r})"
            )
        return conf

    def _gpu_available(self) -> bool:
        if not self.use_gpu:
            return False
        import implicit.gpu

        if implicit.gpu.HAS_CUDA:
            return True
        warnings.warn(
            "WRMF(use_gpu=True): implicit has no CUDA support here; training on the CPU",
            RuntimeWarning,
            stacklevel=3,
        )
        return False

    def _implicit_model(self, gpu: bool) -> Any:
        """A fresh implicit ALS model; alpha is 1.0 because the matrix already holds c_ui."""
        common: dict[str, Any] = {
            "factors": int(self.factors),
            "regularization": float(self.regularization),
            "alpha": 1.0,
            "dtype": np.float32,
            "iterations": int(self.iterations),
            "calculate_training_loss": False,
            "random_state": self.seed,
        }
        if gpu:
            from implicit.gpu.als import AlternatingLeastSquares as GpuALS

            return GpuALS(**common)
        return CpuALS(num_threads=int(self.num_threads), **common)

    # ------------------------------------------------------------------ training

    def fit(self, train: sp.csr_matrix, callback: Callback | None = None) -> WRMF:
        """Learn from the users x items weights `train` (counts or likes); see `Recommender`."""
        self.check_params()
        weights = _as_weights(train, "WRMF.fit train")
        conf = self._confidence_matrix(weights)
        gpu = self._gpu_available()
        # Everything a callback may use (e.g. recommend() for validation metrics) is in place
        # before the first epoch ends.
        self.seen_ = weights
        self.n_epochs_ = 0

        # implicit parallelises over users itself; a multi-threaded BLAS underneath it
        # oversubscribes the cores (implicit warns). The user's callback gets the original
        # BLAS threads back, since it may well do dense algebra (ranking metrics).
        # (implicit is imported at module level, so the controller sees scipy's BLAS too.)
        controller = ThreadpoolController()
        original = controller.info()
        with controller.limit(limits=1, user_api="blas"):
            als = self._implicit_model(gpu)
            hook = self._epoch_hook(als, gpu, callback, lambda: controller.limit(limits=original))
            try:
                als.fit(conf, show_progress=False, callback=hook)
            except _StopTraining:
                return self
        self._take_factors(als, gpu)  # covers iterations=0, where the hook never runs
        return self

    def _take_factors(self, als: Any, gpu: bool) -> None:
        if gpu:
            self.user_factors_ = als.user_factors.to_numpy().astype(np.float32, copy=False)
            self.item_factors_ = als.item_factors.to_numpy().astype(np.float32, copy=False)
        else:
            # implicit's solvers update these arrays in place: binding them is free.
            self.user_factors_ = als.user_factors
            self.item_factors_ = als.item_factors

    def _epoch_hook(
        self,
        als: Any,
        gpu: bool,
        callback: Callback | None,
        user_blas: Callable[[], Any],
    ) -> Callable[[int, float, float | None], None]:
        """implicit's `callback(iteration, elapsed, loss)` -> our `callback(epoch, model)`."""

        def hook(iteration: int, elapsed: float, loss: float | None) -> None:
            epoch = iteration + 1
            self._take_factors(als, gpu)
            self.n_epochs_ = epoch
            finite = _all_finite(self.user_factors_) and _all_finite(self.item_factors_)
            if not finite or (loss is not None and not math.isfinite(loss)):
                raise DivergedError(
                    f"WRMF diverged at epoch {epoch}: non-finite factors or loss "
                    f"(regularization={self.regularization}, alpha={self.alpha})"
                )
            if callback is None:
                return
            with user_blas():
                stop = callback(epoch, self)
            if stop:
                raise _StopTraining

        return hook

    # ------------------------------------------------------------------ fold-in and state

    def _fold_in(self, rows: sp.csr_matrix) -> None:
        """Exact per-user solves (Y^T C_u Y + reg I) x_u = Y^T C_u p_u via implicit's Cholesky."""
        conf = self._confidence_matrix(_as_weights(rows, "WRMF.update_users rows"))
        n_new, n_factors = conf.shape[0], self.item_factors_.shape[1]
        if n_new == 0:
            return
        controller = ThreadpoolController()
        with controller.limit(limits=1, user_api="blas"):
            solver = CpuALS(
                factors=n_factors,
                regularization=float(self.regularization),
                alpha=1.0,
                dtype=np.float32,
                num_threads=int(self.num_threads),
            )
            solver.item_factors = np.ascontiguousarray(self.item_factors_, dtype=np.float32)
            new = solver.recalculate_user(np.arange(n_new), conf)
        if not _all_finite(new):
            raise DivergedError("WRMF.update_users: non-finite factors for the new users")
        self.user_factors_ = np.concatenate([self.user_factors_, new.astype(np.float32)])

    def _state(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.user_factors_ = np.ascontiguousarray(state["user_factors"], dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(state["item_factors"], dtype=np.float32)
