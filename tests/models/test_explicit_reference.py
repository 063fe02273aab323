"""One epoch of every explicit-model kernel equals its slow NumPy reference (and the package's).

Kernel and reference start from the same parameters and visit ratings in the same order; the
references in `_reference.py` are written differently on purpose (vector ops per rating,
np.linalg.solve, np.bincount, the package's own sigmoid-derivative formula). Where the
`matrix-factorization` package is installed, its own numba update functions are a third,
fully independent reference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mfstudy.models.explicit import SGDMF, Baseline
from mfstudy.models.explicit import _kernels as K
from mfstudy.models.explicit import _reference as R

TOL = {"rtol": 1e-5, "atol": 1e-5}
#: An epoch's loss is a float32 sum of squared errors: near zero (a 1 x 1 problem fitted almost
#: exactly) the kernel and the reference differ by rounding far below any loss that matters,
#: but by more than 1e-5 relative (hypothesis found 3.10e-11 vs 3.27e-11).
LOSS_ATOL = 1e-9


def _problem(seed: int, n_users: int, n_items: int, n_factors: int, density: float) -> dict:
    """Random ratings (some empty rows/columns), random parameters, a random visiting order."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[0, 0] = True  # at least one rating
    u, i = np.nonzero(mask)
    r = rng.integers(1, 6, u.size).astype(np.float64)
    order = rng.permutation(u.size)
    return {
        "users": u.astype(np.int32),
        "items": i.astype(np.int32),
        "ratings": r,
        "order": order,
        # The ratings in visiting order, as the SGD driver passes them to the kernels.
        "visit": (u[order].astype(np.int32), i[order].astype(np.int32), r[order]),
        "mu": float(r.mean()),
        "ub": rng.normal(0, 0.2, n_users),
        "ib": rng.normal(0, 0.2, n_items),
        "P": rng.normal(0, 0.3, (n_users, n_factors)).astype(np.float32),
        "Q": rng.normal(0, 0.3, (n_items, n_factors)).astype(np.float32),
        "shape": (n_users, n_items),
    }


def _copies(pb: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    names = ("ub", "ib", "P", "Q")
    return [pb[n].copy() for n in names], [pb[n].copy() for n in names]


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, **TOL)


problems = st.builds(
    _problem,
    seed=st.integers(0, 2**31 - 1),
    n_users=st.integers(1, 12),
    n_items=st.integers(1, 10),
    n_factors=st.integers(1, 6),
    density=st.floats(0.1, 0.9),
)
update_items = st.booleans()


@settings(deadline=None, max_examples=15)
@given(pb=problems, upd=update_items, lr=st.floats(0.001, 0.1), reg=st.floats(0.0, 0.1))
def test_sgd_linear_epoch_matches_reference(pb: dict, upd: bool, lr: float, reg: float) -> None:
    got, want = _copies(pb)
    cols = (*pb["visit"], pb["mu"])
    s1 = K.sgd_epoch_linear(*cols, *got, lr, reg, 2 * reg, upd)
    s2 = R.sgd_epoch_linear(*cols, *want, lr, reg, 2 * reg, upd)
    _assert_same(got, want)
    assert s1 == pytest.approx(s2, rel=1e-5, abs=LOSS_ATOL)
    if not upd:  # item parameters frozen
        np.testing.assert_array_equal(got[1], pb["ib"])
        np.testing.assert_array_equal(got[3], pb["Q"])


@settings(deadline=None, max_examples=15)
@given(pb=problems, upd=update_items, lr=st.floats(0.001, 0.5), reg=st.floats(0.0, 0.1))
def test_sgd_sigmoid_epoch_matches_reference(pb: dict, upd: bool, lr: float, reg: float) -> None:
    got, want = _copies(pb)
    cols = (*pb["visit"], pb["mu"])
    s1 = K.sgd_epoch_sigmoid(*cols, *got, lr, reg, 2 * reg, 1.0, 4.0, upd)
    s2 = R.sgd_epoch_sigmoid(*cols, *want, lr, reg, 2 * reg, 1.0, 4.0, upd)
    _assert_same(got, want)
    assert s1 == pytest.approx(s2, rel=1e-5, abs=LOSS_ATOL)


@settings(deadline=None, max_examples=15)
@given(pb=problems, upd=update_items, gamma=st.floats(0.01, 2.0), lr=st.floats(0.001, 0.2))
def test_sgd_rbf_epoch_matches_reference(pb: dict, upd: bool, gamma: float, lr: float) -> None:
    got, want = _copies(pb)
    cols = pb["visit"]
    s1 = K.sgd_epoch_rbf(*cols, got[2], got[3], lr, 0.02, gamma, 1.0, 4.0, upd)
    s2 = R.sgd_epoch_rbf(*cols, want[2], want[3], lr, 0.02, gamma, 1.0, 4.0, upd)
    _assert_same(got, want)
    assert s1 == pytest.approx(s2, rel=1e-5, abs=LOSS_ATOL)
    # RBF has no biases: they must be untouched.
    np.testing.assert_array_equal(got[0], pb["ub"])


@settings(deadline=None, max_examples=15)
@given(pb=problems, reg_b=st.floats(0.0, 1.0), reg_f=st.floats(0.01, 1.0))
def test_als_epoch_matches_reference(pb: dict, reg_b: float, reg_f: float) -> None:
    """A full ALS epoch: users from items, then items from the new users."""
    csr = sp.csr_matrix((pb["ratings"], (pb["users"], pb["items"])), shape=pb["shape"])
    csc = csr.T.tocsr()
    got, want = _copies(pb)
    for fn, (ub, ib, p, q) in ((K.als_half_step, got), (R.als_half_step, want)):
        fn(csr.indptr, csr.indices, csr.data, pb["mu"], ib, q, reg_b, reg_f, ub, p)
        fn(csc.indptr, csc.indices, csc.data, pb["mu"], ub, p, reg_b, reg_f, ib, q)
    _assert_same(got, want)
    # Rows without ratings keep their previous values.
    empty_users = np.diff(csr.indptr) == 0
    np.testing.assert_array_equal(got[0][empty_users], pb["ub"][empty_users])
    np.testing.assert_array_equal(got[2][empty_users], pb["P"][empty_users])


def test_als_solve_is_the_ridge_minimizer() -> None:
    """The user step zeroes the gradient of its documented objective (independent of R)."""
    pb = _problem(3, 6, 9, 4, 0.7)
    csr = sp.csr_matrix((pb["ratings"], (pb["users"], pb["items"])), shape=pb["shape"])
    ub, p = pb["ub"].copy(), pb["P"].astype(np.float64)
    q = pb["Q"].astype(np.float64)
    rb, rf = 0.3, 0.2
    K.als_half_step(csr.indptr, csr.indices, csr.data, pb["mu"], pb["ib"], q, rb, rf, ub, p)
    for u in range(6):
        cols = csr.indices[csr.indptr[u] : csr.indptr[u + 1]]
        if cols.size == 0:
            continue
        err = (
            pb["mu"]
            + ub[u]
            + pb["ib"][cols]
            + q[cols] @ p[u]
            - csr.data[csr.indptr[u] : csr.indptr[u + 1]]
        )
        n = cols.size
        np.testing.assert_allclose(err.sum() + n * rb * ub[u], 0.0, atol=1e-9)
        np.testing.assert_allclose(q[cols].T @ err + n * rf * p[u], 0.0, atol=1e-9)


@settings(deadline=None, max_examples=15)
@given(pb=problems, lr=st.floats(0.001, 0.2), reg=st.floats(0.0, 0.5))
def test_baseline_sgd_epoch_matches_reference(pb: dict, lr: float, reg: float) -> None:
    got, want = _copies(pb)
    cols = (*pb["visit"], pb["mu"])
    s1 = K.baseline_sgd_epoch(*cols, got[0], got[1], lr, reg)
    s2 = R.baseline_sgd_epoch(*cols, want[0], want[1], lr, reg)
    _assert_same(got[:2], want[:2])
    assert s1 == pytest.approx(s2, rel=1e-5, abs=LOSS_ATOL)


@settings(deadline=None, max_examples=15)
@given(pb=problems, reg=st.floats(0.0, 5.0))
def test_baseline_als_epoch_matches_reference(pb: dict, reg: float) -> None:
    got, want = _copies(pb)
    cols = (pb["users"], pb["items"], pb["ratings"], pb["mu"])
    K.baseline_als_epoch(*cols, got[0], got[1], reg)
    R.baseline_als_epoch(*cols, want[0], want[1], reg)
    _assert_same(got[:2], want[:2])


@settings(deadline=None, max_examples=15)
@given(pb=problems, kernel=st.sampled_from([0, 1, 2]), extra=st.integers(1, 3))
def test_predict_pairs_matches_reference(pb: dict, kernel: int, extra: int) -> None:
    nu, ni = pb["shape"]
    rng = np.random.default_rng(extra)
    users = np.r_[pb["users"], rng.integers(-1, nu + 2, 20)].astype(np.int64)
    items = np.r_[pb["items"], rng.integers(-1, ni + 2, 20)].astype(np.int64)
    args = (kernel, pb["mu"], pb["ub"], pb["ib"], pb["P"], pb["Q"], 0.3, 1.0, 4.0)
    got, want = np.empty(users.size), np.empty(users.size)
    K.predict_pairs(users, items, *args, got)
    R.predict_pairs(users, items, *args, want)
    np.testing.assert_allclose(got, want, **TOL)


# --------------------------------------------------------------------------- the models


def test_sgdmf_one_epoch_follows_documented_draws() -> None:
    """fit(iterations=1) = reference epoch from N(0, std) user then item factors, then one
    shuffle seed, all from default_rng(seed): pins the driver's documented random stream."""
    pb = _problem(7, 9, 8, 3, 0.5)
    csr = sp.csr_matrix((pb["ratings"], (pb["users"], pb["items"])), shape=pb["shape"])
    model = SGDMF(
        factors=3,
        iterations=1,
        learning_rate=0.05,
        reg_factors=0.02,
        reg_bias=0.01,
        init_std=0.2,
        seed=11,
    ).fit(csr)
    rng = np.random.default_rng(11)
    p = rng.normal(0, 0.2, (9, 3)).astype(np.float32)
    q = rng.normal(0, 0.2, (8, 3)).astype(np.float32)
    coo = csr.tocoo()  # row-major, like the model's ratings
    u, i, r = coo.row.astype(np.int32), coo.col.astype(np.int32), coo.data.copy()
    K.shuffle_ratings(u, i, r, int(rng.integers(2**31)))
    ub, ib = np.zeros(9), np.zeros(8)
    mu = float(csr.data.mean())
    R.sgd_epoch_linear(u, i, r, mu, ub, ib, p, q, 0.05, 0.01, 0.02, True)
    np.testing.assert_allclose(model.user_factors_, p, **TOL)
    np.testing.assert_allclose(model.item_factors_, q, **TOL)
    np.testing.assert_allclose(model.user_biases_, ub, **TOL)
    np.testing.assert_allclose(model.item_biases_, ib, **TOL)
    assert model.global_mean_ == pytest.approx(mu)


@settings(deadline=None, max_examples=20)
@given(n=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_shuffle_ratings_permutes_triples_by_seed(n: int, seed: int) -> None:
    u = np.arange(n, dtype=np.int32)
    i, r = (u * 7 + 3).astype(np.int32), u * 0.5
    a = (u.copy(), i.copy(), r.copy())
    b = (u.copy(), i.copy(), r.copy())
    K.shuffle_ratings(*a, seed)
    K.shuffle_ratings(*b, seed)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # same seed, same order
    np.testing.assert_array_equal(np.sort(a[0]), u)  # a permutation ...
    np.testing.assert_array_equal(a[1], a[0] * 7 + 3)  # ... of whole triples
    np.testing.assert_array_equal(a[2], a[0] * 0.5)
    if n >= 10:
        c = u.copy()
        K.shuffle_ratings(c, i.copy(), r.copy(), seed + 1)
        assert not np.array_equal(a[0], c) and not np.array_equal(a[0], u)


def test_baseline_als_model_matches_reference_over_epochs() -> None:
    pb = _problem(5, 10, 7, 1, 0.6)
    csr = sp.csr_matrix((pb["ratings"], (pb["users"], pb["items"])), shape=pb["shape"])
    model = Baseline(solver="als", iterations=3, reg=0.7).fit(csr)
    coo = csr.tocoo()
    ub, ib = np.zeros(10), np.zeros(7)
    for _ in range(3):
        R.baseline_als_epoch(coo.row, coo.col, coo.data, float(csr.data.mean()), ub, ib, 0.7)
    np.testing.assert_allclose(model.user_biases_, ub, **TOL)
    np.testing.assert_allclose(model.item_biases_, ib, **TOL)


# --------------------------------------------------------------------------- the package itself


@pytest.fixture(scope="module")
def mf_kernels():
    return pytest.importorskip("matrix_factorization.kernels")


def test_linear_and_sigmoid_match_package_updates(mf_kernels) -> None:
    pb = _problem(21, 8, 7, 4, 0.6)
    for kernel in ("linear", "sigmoid"):
        ours, _ = _copies(pb)
        theirs = [
            pb["ub"].copy(),
            pb["ib"].copy(),
            pb["P"].astype(np.float64),
            pb["Q"].astype(np.float64),
        ]
        cols = (*pb["visit"], pb["mu"])
        if kernel == "linear":
            K.sgd_epoch_linear(*cols, *ours, 0.05, 0.03, 0.03, True)
        else:
            K.sgd_epoch_sigmoid(*cols, *ours, 0.05, 0.03, 0.03, 1.0, 4.0, True)
        for k in pb["order"]:
            args = (
                int(pb["users"][k]),
                int(pb["items"][k]),
                float(pb["ratings"][k]),
                pb["mu"],
                *theirs,
                0.05,
                0.03,
            )
            if kernel == "linear":
                mf_kernels.kernel_linear_sgd_update(*args)
            else:
                mf_kernels.kernel_sigmoid_sgd_update(*args, 1.0, 4.0)
        _assert_same(ours, theirs)


def test_rbf_matches_package_updates(mf_kernels) -> None:
    pb = _problem(22, 8, 7, 4, 0.6)
    ours = [pb["P"].copy(), pb["Q"].copy()]
    theirs = [pb["P"].astype(np.float64), pb["Q"].astype(np.float64)]
    K.sgd_epoch_rbf(*pb["visit"], *ours, 0.05, 0.03, 0.5, 1.0, 4.0, True)
    for k in pb["order"]:
        mf_kernels.kernel_rbf_sgd_update(
            int(pb["users"][k]),
            int(pb["items"][k]),
            float(pb["ratings"][k]),
            *theirs,
            0.05,
            0.03,
            0.5,
            1.0,
            4.0,
        )
    _assert_same(ours, theirs)


def test_baseline_als_matches_package() -> None:
    mf = pytest.importorskip("matrix_factorization")
    pb = _problem(23, 9, 6, 1, 0.6)
    # The package's own model, two ALS epochs from zero biases around the same global mean.
    # It numbers users and items in its own order (`user_id_map`): mapped back to ours here,
    # and a user or item without ratings keeps a bias of 0.
    ids = {"user_id": pb["users"].astype(np.int64), "item_id": pb["items"].astype(np.int64)}
    model = mf.BaselineModel(method="als", n_epochs=2, reg=0.5, verbose=0)
    model.fit(pd.DataFrame(ids), pd.Series(pb["ratings"]))
    assert model.global_mean == pytest.approx(pb["mu"])
    ub, ib = np.zeros(9), np.zeros(6)
    ub[list(model.user_id_map)] = model.user_biases[list(model.user_id_map.values())]
    ib[list(model.item_id_map)] = model.item_biases[list(model.item_id_map.values())]
    ours = [np.zeros(9), np.zeros(6)]
    for _ in range(2):
        K.baseline_als_epoch(pb["users"], pb["items"], pb["ratings"], pb["mu"], *ours, 0.5)
    _assert_same(ours, [ub, ib])
