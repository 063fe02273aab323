"""All-cells MSE and observed RMSE against dense NumPy on small data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mfstudy.metrics import mse_all_cells, rmse_observed


def problem(seed: int, n_users: int, n_items: int, f: int, density: float, dtype):
    rng = np.random.default_rng(seed)
    P = rng.standard_normal((n_users, f)).astype(dtype)
    Q = rng.standard_normal((n_items, f)).astype(dtype)
    mask = rng.random((n_users, n_items)) < density
    values = rng.integers(1, 6, size=(n_users, n_items)).astype(np.float32)
    truth = sp.csr_matrix(np.where(mask, values, 0.0).astype(np.float32))
    return rng, P, Q, truth


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_users=st.integers(1, 25),
    n_items=st.integers(1, 40),
    f=st.integers(1, 10),
    density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_mse_all_cells_matches_dense(seed, n_users, n_items, f, density, dtype):
    rng, P, Q, truth = problem(seed, n_users, n_items, f, density, dtype)
    users = rng.integers(0, n_users, size=rng.integers(1, 2 * n_users + 1))
    dense_pred = P.astype(np.float64) @ Q.astype(np.float64).T
    want = np.mean((truth.toarray().astype(np.float64)[users] - dense_pred[users]) ** 2)
    assert mse_all_cells(P, Q, truth, users) == pytest.approx(want, rel=1e-9)


def test_mse_all_cells_exact_fit_is_zero():
    """Cancellation: ||r||^2, the cross and the quadratic terms are large and equal."""
    rng = np.random.default_rng(0)
    P = rng.integers(-3, 4, size=(20, 4)).astype(np.float32)
    Q = rng.integers(-3, 4, size=(30, 4)).astype(np.float32)
    truth = sp.csr_matrix(P.astype(np.float64) @ Q.astype(np.float64).T)
    assert mse_all_cells(P, Q, truth, np.arange(20)) == pytest.approx(0.0, abs=1e-12)
    # Shifting one stored value by 1 adds exactly 1 / cells.
    truth.data[0] += 1.0
    assert mse_all_cells(P, Q, truth, np.arange(20)) == pytest.approx(1 / 600, rel=1e-12)


def test_mse_duplicates_are_summed_and_zeros_ignored():
    P = np.array([[1.0], [0.0]], dtype=np.float32)
    Q = np.array([[1.0], [2.0]], dtype=np.float32)
    # Row 0 stores item 0 twice (1 + 2 = 3) and an explicit zero at item 1.
    truth = sp.csr_matrix(
        (np.array([1.0, 2.0, 0.0]), np.array([0, 0, 1]), np.array([0, 3, 3])), shape=(2, 2)
    )
    want = np.mean((truth.toarray() - P @ Q.T) ** 2)
    assert mse_all_cells(P, Q, truth, np.array([0, 1])) == pytest.approx(want, rel=1e-12)


def test_mse_no_users_is_nan():
    P, Q = np.ones((2, 1)), np.ones((3, 1))
    assert math.isnan(mse_all_cells(P, Q, sp.csr_matrix((2, 3)), np.array([], dtype=int)))


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_users=st.integers(1, 20),
    n_items=st.integers(1, 30),
    density=st.sampled_from([0.1, 0.5, 1.0]),
    clip=st.sampled_from([None, (1.0, 5.0), (-0.5, 0.5)]),
    subset=st.booleans(),
)
def test_rmse_observed_matches_dense(seed, n_users, n_items, density, clip, subset):
    rng, P, Q, truth = problem(seed, n_users, n_items, 3, density, np.float32)
    users = rng.choice(n_users, rng.integers(1, n_users + 1), replace=False) if subset else None
    rows = np.arange(n_users) if users is None else users
    dense_truth = truth.toarray().astype(np.float64)[rows]
    pred = (P.astype(np.float64) @ Q.astype(np.float64).T)[rows]
    if clip is not None:
        pred = np.clip(pred, *clip)
    observed = dense_truth != 0
    got = rmse_observed(P, Q, truth, users=users, clip=clip)
    if not observed.any():
        assert math.isnan(got)
    else:
        want = np.sqrt(np.mean((dense_truth[observed] - pred[observed]) ** 2))
        assert got == pytest.approx(want, rel=1e-9)


def test_rmse_bad_clip_raises():
    with pytest.raises(ValueError, match="clip"):
        rmse_observed(np.ones((1, 1)), np.ones((1, 1)), sp.csr_matrix(np.ones((1, 1))), clip=(5, 1))
