"""WRMF specifics: the HKV confidence mapping onto implicit, hooks, threads, GPU fallback.

The contract every model shares (callbacks, early stop, recommend, save/load...) is checked in
test_contract.py; this file checks what only WRMF does, against direct NumPy solves of the
Hu-Koren-Volinsky normal equations.
"""

from __future__ import annotations

import math
import warnings

import implicit.gpu
import implicit.gpu.als
import implicit.utils
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from implicit.cpu.als import AlternatingLeastSquares as CpuALS
from threadpoolctl import threadpool_info

from mfstudy.errors import ConfigError, DataError
from mfstudy.models import DivergedError
from mfstudy.models.wrmf import WRMF, hkv_confidence


def counts(n_users: int = 40, n_items: int = 30, density: float = 0.25, seed: int = 0):
    """A users x items play-count matrix with counts spread over 1..60."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    values = np.where(mask, rng.integers(1, 60, (n_users, n_items)), 0)
    return sp.csr_matrix(values.astype(np.float32))


def hkv_reference(weights: np.ndarray, kind: str, alpha: float, epsilon: float) -> np.ndarray:
    """Dense c_ui from the paper's formulas, written independently of the module under test."""
    d = np.asarray(weights, dtype=np.float64)
    c = 1.0 + alpha * (d if kind == "linear" else np.log(1.0 + d / epsilon))
    return np.where(d > 0, c, 1.0)


def normal_equation_solve(dense: np.ndarray, fixed: np.ndarray, conf: np.ndarray, reg: float):
    """Rows x_u = (F^T C_u F + reg I)^-1 F^T C_u p_u, one np.linalg.solve per row (tiny data)."""
    f = fixed.astype(np.float64)
    p = (dense > 0).astype(np.float64)
    a = np.einsum("ui,ik,il->ukl", conf, f, f) + reg * np.eye(f.shape[1])
    b = np.einsum("ui,ik->uk", conf * p, f)
    return np.linalg.solve(a, b[..., None])[..., 0]


# --------------------------------------------------------------------------- confidence


def test_confidence_formulas_on_known_values() -> None:
    d = np.array([1.0, 2.0, 10.0])
    np.testing.assert_allclose(hkv_confidence(d, "linear", 2.0), [3.0, 5.0, 21.0])
    expected = [1.0 + 2.0 * math.log(1.0 + x / 0.5) for x in d]
    np.testing.assert_allclose(hkv_confidence(d, "log", 2.0, epsilon=0.5), expected, rtol=1e-6)
    assert hkv_confidence(d, "log", 2.0).dtype == np.float32


@pytest.mark.parametrize("kind", ["linear", "log"])
def test_fit_solves_the_hkv_normal_equations(kind: str) -> None:
    # With 3 factors implicit's 3-step conjugate gradient solves each 3x3 system exactly, so one
    # epoch of the real fit must match the direct solve with the HKV confidence.
    train = counts()
    dense = train.toarray()
    alpha, epsilon, reg = 2.0, 3.0, 0.1
    snapshots: list[tuple[np.ndarray, np.ndarray]] = []
    model = WRMF(
        factors=3,
        regularization=reg,
        alpha=alpha,
        confidence=kind,
        epsilon=epsilon,
        iterations=2,
        seed=3,
    )
    model.fit(
        train,
        callback=lambda e, m: snapshots.append((m.user_factors_.copy(), m.item_factors_.copy())),
    )

    conf = hkv_reference(dense, kind, alpha, epsilon)
    # Epoch 2's user solve starts from epoch 1's item factors...
    users = normal_equation_solve(dense, snapshots[0][1], conf, reg)
    np.testing.assert_allclose(model.user_factors_, users, rtol=1e-3, atol=1e-4)
    # ... and its item solve from epoch 2's user factors.
    items = normal_equation_solve(dense.T, model.user_factors_, conf.T, reg)
    np.testing.assert_allclose(model.item_factors_, items, rtol=1e-3, atol=1e-4)

    # implicit's own convention (c = alpha * d, no "1 +") gives visibly different factors, so
    # the assertions above do tell the mappings apart.
    naive = np.where(dense > 0, alpha * dense if kind == "linear" else conf - 1.0, 1.0)
    wrong = normal_equation_solve(dense, snapshots[0][1], naive, reg)
    assert np.abs(wrong - users).max() > 1e-2


@settings(deadline=None, max_examples=25)
@given(
    kind=st.sampled_from(["linear", "log"]),
    alpha=st.floats(0.0, 40.0),
    epsilon=st.floats(0.05, 20.0),
    seed=st.integers(0, 2**16),
    n_new=st.integers(1, 6),
)
def test_fold_in_matches_numpy_solve(kind, alpha, epsilon, seed, n_new) -> None:
    train = counts(seed=seed)
    model = WRMF(
        factors=6,
        regularization=0.5,
        alpha=alpha,
        confidence=kind,
        epsilon=epsilon,
        iterations=3,
        seed=seed,
    ).fit(train)
    rows = counts(n_users=n_new, seed=seed + 1, density=0.3)
    item_factors = model.item_factors_.copy()
    old_users = model.user_factors_.copy()

    idx = model.update_users(rows)

    np.testing.assert_array_equal(idx, np.arange(40, 40 + n_new))
    np.testing.assert_array_equal(model.item_factors_, item_factors)
    np.testing.assert_array_equal(model.user_factors_[:40], old_users)
    dense = rows.toarray()
    expected = normal_equation_solve(
        dense, item_factors, hkv_reference(dense, kind, alpha, epsilon), 0.5
    )
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(model.user_factors_[idx], expected, atol=2e-4 * scale, rtol=1e-3)


def test_stored_zeros_are_not_likes() -> None:
    train = counts()
    with_zeros = train.tocoo()
    extra_r, extra_c = np.nonzero(train.toarray() == 0)
    with_zeros = sp.csr_matrix(
        (
            np.r_[with_zeros.data, np.zeros(5, np.float32)],
            (np.r_[with_zeros.row, extra_r[:5]], np.r_[with_zeros.col, extra_c[:5]]),
        ),
        shape=train.shape,
    )
    assert with_zeros.nnz == train.nnz + 5
    a = WRMF(factors=4, iterations=3).fit(train)
    b = WRMF(factors=4, iterations=3).fit(with_zeros)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    assert b.seen_.nnz == train.nnz


# --------------------------------------------------------------------------- training loop


def test_callback_sees_implicits_arrays_without_copies() -> None:
    seen_ids: list[tuple[int, int]] = []
    snap: dict[int, np.ndarray] = {}

    def cb(epoch: int, m: WRMF) -> bool:
        seen_ids.append((id(m.user_factors_), id(m.item_factors_)))
        snap[epoch] = m.item_factors_.copy()
        return epoch == 4

    model = WRMF(factors=5, iterations=10).fit(counts(), callback=cb)
    assert len(set(seen_ids)) == 1  # the same arrays, updated in place by implicit
    assert seen_ids[-1] == (id(model.user_factors_), id(model.item_factors_))
    assert model.n_epochs_ == 4
    np.testing.assert_array_equal(model.item_factors_, snap[4])
    assert not np.array_equal(snap[3], snap[4])


def test_thread_count_does_not_change_the_result() -> None:
    train = counts(n_users=200, n_items=80)
    one = WRMF(factors=8, iterations=4, num_threads=1, seed=5).fit(train)
    two = WRMF(factors=8, iterations=4, num_threads=2, seed=5).fit(train)
    np.testing.assert_array_equal(one.user_factors_, two.user_factors_)
    np.testing.assert_array_equal(one.item_factors_, two.item_factors_)


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_single_threaded_inside_implicit_only(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _blas_threads()
    # implicit checks the BLAS threads once per process; re-arm its check so that constructing
    # the ALS model outside a 1-thread limit would warn here.
    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)
    in_callback: list[list[int]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        WRMF(factors=4, iterations=2).fit(
            counts(), callback=lambda e, m: in_callback.append(_blas_threads())
        )
    assert in_callback == [before, before]  # the user's callback keeps the user's BLAS
    assert _blas_threads() == before


def test_iterations_zero_gives_initial_factors() -> None:
    model = WRMF(factors=4, iterations=0).fit(counts())
    assert model.n_epochs_ == 0
    assert model.user_factors_.shape == (40, 4)
    assert model.item_factors_.shape == (30, 4)


# --------------------------------------------------------------------------- failures


def test_divergence_raises_diverged_error() -> None:
    calls: list[int] = []
    with pytest.raises(DivergedError, match="epoch 1"):
        WRMF(factors=4, alpha=1e30, iterations=3).fit(
            counts(), callback=lambda e, m: calls.append(e)
        )
    assert calls == []  # a diverged epoch is never reported as a result


def test_confidence_overflow_raises_diverged_error() -> None:
    with pytest.raises(DivergedError, match="overflows"):
        WRMF(factors=4, alpha=1e38).fit(counts())


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"confidence": "lin"}, "confidence"),
        ({"factors": 0}, "factors"),
        ({"alpha": -1.0}, "alpha"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"regularization": float("nan")}, "regularization"),
        ({"iterations": 2.5}, "iterations"),
    ],
)
def test_bad_hyperparameters_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"WRMF: {key} must be"):
        WRMF(**params).fit(counts())


def test_bad_training_matrix_is_a_data_error() -> None:
    bad = counts()
    bad.data[bad.indptr[7]] = -1.0
    with pytest.raises(DataError, match=r"non-negative \(row 7\)"):
        WRMF(factors=4).fit(bad)
    with pytest.raises(DataError, match="sparse"):
        WRMF(factors=4).fit(counts().toarray())


# --------------------------------------------------------------------------- GPU


@pytest.mark.skipif(implicit.gpu.HAS_CUDA, reason="CUDA present: no fallback to test")
def test_use_gpu_without_cuda_warns_and_trains_on_cpu() -> None:
    train = counts()
    with pytest.warns(RuntimeWarning, match="no CUDA"):
        gpu = WRMF(factors=4, iterations=3, use_gpu=True, seed=2).fit(train)
    cpu = WRMF(factors=4, iterations=3, seed=2).fit(train)
    np.testing.assert_array_equal(gpu.user_factors_, cpu.user_factors_)


class _FakeGpuMatrix:
    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def to_numpy(self) -> np.ndarray:
        return self._a.copy()


class _FakeGpuALS:
    """Stands in for implicit's GPU ALS: device matrices that only convert via to_numpy()."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self._cpu = CpuALS(**kwargs)

    @property
    def user_factors(self) -> _FakeGpuMatrix:
        return _FakeGpuMatrix(self._cpu.user_factors)

    @property
    def item_factors(self) -> _FakeGpuMatrix:
        return _FakeGpuMatrix(self._cpu.item_factors)

    def fit(self, user_items: sp.csr_matrix, show_progress: bool, callback) -> None:
        self._cpu.fit(user_items, show_progress=show_progress, callback=callback)


def test_gpu_path_converts_factors_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(implicit.gpu, "HAS_CUDA", True)
    monkeypatch.setattr(implicit.gpu.als, "AlternatingLeastSquares", _FakeGpuALS)
    train = counts()
    epochs: list[int] = []
    gpu = WRMF(factors=4, iterations=3, use_gpu=True, seed=2)
    gpu.fit(train, callback=lambda e, m: epochs.append(e) or e == 2)
    cpu = WRMF(factors=4, iterations=2, seed=2).fit(train)
    assert epochs == [1, 2] and gpu.n_epochs_ == 2
    assert isinstance(gpu.user_factors_, np.ndarray) and gpu.user_factors_.dtype == np.float32
    np.testing.assert_array_equal(gpu.user_factors_, cpu.user_factors_)
    np.testing.assert_array_equal(gpu.item_factors_, cpu.item_factors_)
