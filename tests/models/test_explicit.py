"""Behaviour of the explicit-rating models SGDMF, ALSMF and Baseline on small planted data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mfstudy.errors import ConfigError, DataError
from mfstudy.models import DivergedError, Recommender, model_class
from mfstudy.models.explicit import ALSMF, SGDMF, Baseline


def planted(
    n_users: int = 80, n_items: int = 50, rank: int = 3, density: float = 0.5, seed: int = 0
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Ratings 3 + b_u + b_i + x_u.y_i + noise on a random half of the cells; also the truth."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.6, (n_users, rank))
    y = rng.normal(0, 0.6, (n_items, rank))
    truth = 3.0 + rng.normal(0, 0.4, (n_users, 1)) + rng.normal(0, 0.4, (1, n_items)) + x @ y.T
    noisy = truth + rng.normal(0, 0.1, truth.shape)
    u, i = np.nonzero(rng.random(truth.shape) < density)
    m = sp.csr_matrix((noisy[u, i], (u, i)), shape=truth.shape)
    return m, truth


def rmse(model: Recommender, m: sp.csr_matrix) -> float:
    coo = m.tocoo()
    return float(np.sqrt(np.mean((model.score(coo.row, coo.col) - coo.data) ** 2)))


def split_cells(m: sp.csr_matrix, seed: int = 1) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    coo = m.tocoo()
    test = np.random.default_rng(seed).random(coo.nnz) < 0.2

    def part(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=m.shape)

    return part(~test), part(test)


# Settings that train well on the planted problem within a fraction of a second.
MODELS = {
    "sgd-linear": lambda **kw: SGDMF(factors=4, iterations=40, learning_rate=0.03, **kw),
    "sgd-sigmoid": lambda **kw: SGDMF(
        factors=4, iterations=40, learning_rate=0.1, kernel="sigmoid", **kw
    ),
    "sgd-rbf": lambda **kw: SGDMF(
        factors=4, iterations=40, learning_rate=0.05, kernel="rbf", gamma=0.5, **kw
    ),
    "als": lambda **kw: ALSMF(factors=4, iterations=10, reg_factors=0.05, reg_bias=0.05, **kw),
    "baseline-sgd": lambda **kw: Baseline(iterations=40, learning_rate=0.03, **kw),
    "baseline-als": lambda **kw: Baseline(solver="als", iterations=10, reg=1.0, **kw),
}


@pytest.fixture(scope="module")
def data() -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    m, truth = planted()
    train, test = split_cells(m)
    return train, test, truth


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, Recommender]:
    train = data[0]
    return {name: make().fit(train) for name, make in MODELS.items()}


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("name", list(MODELS))
def test_rmse_decreases_and_beats_the_mean(name: str, data, fitted) -> None:
    train, test, _ = data
    model = fitted[name]
    hist = model.train_rmse_
    assert len(hist) == model.n_epochs_ == model.iterations
    assert hist[-1] < hist[0]
    # The global mean predictor is the floor every model must clear on held-out cells.
    mean_rmse = float(np.sqrt(np.mean((test.data - train.data.mean()) ** 2)))
    assert rmse(model, test) < 0.9 * mean_rmse


@pytest.mark.parametrize("name", ["sgd-linear", "als"])
def test_factor_models_recover_planted_structure(name: str, data, fitted) -> None:
    """Factor models beat the bias-only baseline on held-out cells of a rank-3 problem."""
    _, test, _ = data
    assert rmse(fitted[name], test) < 0.6 * rmse(fitted["baseline-als"], test)


def test_rmse_is_monotone_for_als(fitted) -> None:
    # Each ALS half-step minimizes the objective exactly, so the training error cannot blow up.
    hist = np.array(fitted["als"].train_rmse_)
    assert np.all(np.diff(hist) < 1e-3)


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("name", list(MODELS))
def test_scoring_factors_give_the_pre_link_score(name: str, fitted) -> None:
    model = fitted[name]
    p, q = model.scoring_factors()
    assert p.dtype == q.dtype == np.float32
    assert p.shape[1] == q.shape[1] == model.user_factors_.shape[1] + 2
    u = np.repeat(np.arange(p.shape[0]), q.shape[0])
    i = np.tile(np.arange(q.shape[0]), p.shape[0])
    raw = np.einsum("ij,ij->i", p[u].astype(np.float64), q[i].astype(np.float64))
    x, y = model.user_factors_[u].astype(np.float64), model.item_factors_[i].astype(np.float64)
    lo, hi = model.min_rating_, model.max_rating_
    if getattr(model, "kernel", "linear") == "rbf":
        np.testing.assert_allclose(raw, -np.sum((x - y) ** 2, axis=1), atol=1e-4)
        rating = lo + (hi - lo) * np.exp(model.gamma * raw)
    else:
        lin = (
            model.global_mean_
            + model.user_biases_[u]
            + model.item_biases_[i]
            + np.sum(x * y, axis=1)
        )
        np.testing.assert_allclose(raw, lin, atol=1e-4)
        rating = (
            lin
            if getattr(model, "kernel", "linear") == "linear"
            else (lo + (hi - lo) / (1 + np.exp(-lin)))
        )
    np.testing.assert_allclose(model.score(u, i), np.clip(rating, lo, hi), atol=1e-4)


def test_scores_are_clipped_to_the_rating_range(data) -> None:
    train = data[0]
    # A wide planted range so that unclipped predictions leave [2, 4].
    model = SGDMF(factors=4, iterations=30, learning_rate=0.03, min_rating=2.5, max_rating=3.5)
    model.fit(train)
    u, i = np.divmod(np.arange(train.shape[0] * train.shape[1]), train.shape[1])
    s = model.score(u, i)
    assert s.min() == 2.5 and s.max() == 3.5
    p, q = model.scoring_factors()
    raw = np.einsum("ij,ij->i", p[u], q[i])
    assert raw.min() < 2.5 and raw.max() > 3.5  # the clip did something
    inside = (raw > 2.6) & (raw < 3.4)
    np.testing.assert_allclose(s[inside], raw[inside], atol=1e-4)


def test_default_rating_range_is_the_training_range(fitted, data) -> None:
    train = data[0]
    for model in fitted.values():
        assert model.min_rating_ == pytest.approx(train.data.min())
        assert model.max_rating_ == pytest.approx(train.data.max())


@settings(deadline=None, max_examples=25)
@given(
    name=st.sampled_from(list(MODELS)),
    users=st.lists(st.integers(-3, 90), min_size=1, max_size=20),
    seed=st.integers(0, 100),
)
def test_unknown_users_and_items_get_mean_plus_known_bias(
    name: str, users: list[int], seed: int, fitted
) -> None:
    model = fitted[name]
    nu, ni = model.user_factors_.shape[0], model.item_factors_.shape[0]
    u = np.array(users)
    i = np.random.default_rng(seed).integers(-2, ni + 3, u.size)
    s = model.score(u, i)
    assert np.all(np.isfinite(s))
    assert np.all((s >= model.min_rating_) & (s <= model.max_rating_))
    u_ok, i_ok = (u >= 0) & (u < nu), (i >= 0) & (i < ni)
    fallback = (
        model.global_mean_
        + np.where(u_ok, model.user_biases_[np.clip(u, 0, nu - 1)], 0)
        + np.where(i_ok, model.item_biases_[np.clip(i, 0, ni - 1)], 0)
    )
    unknown = ~(u_ok & i_ok)
    expected = np.clip(fallback, model.min_rating_, model.max_rating_)
    np.testing.assert_allclose(s[unknown], expected[unknown], atol=1e-9)


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "model",
    [
        SGDMF(factors=4, iterations=5, learning_rate=10.0),
        SGDMF(factors=4, iterations=5, learning_rate=50.0, reg_bias=1.0, kernel="sigmoid"),
        Baseline(iterations=5, learning_rate=10.0),
    ],
    ids=["sgd", "sgd-sigmoid", "baseline"],
)
def test_divergence_raises_and_leaves_no_nan_model(model: Recommender, data) -> None:
    seen: list[int] = []

    def cb(epoch: int, m: Recommender) -> None:
        seen.append(epoch)
        assert np.all(np.isfinite(m.user_factors_)) and np.all(np.isfinite(m.user_biases_))
        assert np.all(np.isfinite(m.item_factors_)) and np.all(np.isfinite(m.item_biases_))

    with pytest.raises(DivergedError, match="diverged in epoch"):
        model.fit(data[0], callback=cb)
    # Raised right after the first bad epoch: the callback saw only finite epochs before it ...
    assert seen == list(range(1, len(seen) + 1))
    with pytest.raises(DivergedError, match=f"diverged in epoch {len(seen) + 1} "):
        model.fit(data[0])
    # ... and the model is left unfitted rather than holding NaNs.
    with pytest.raises(RuntimeError, match="not fitted"):
        model.score(np.arange(3), np.arange(3))


@pytest.mark.parametrize("name", list(MODELS))
def test_deterministic_by_seed(name: str, data) -> None:
    train = data[0]
    a = MODELS[name](seed=3).fit(train)
    b = MODELS[name](seed=3).fit(train)
    c = MODELS[name](seed=4).fit(train)
    for attr in ("user_factors_", "item_factors_", "user_biases_", "item_biases_"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    assert a.train_rmse_ == b.train_rmse_
    if name != "baseline-als":  # the only model with no random draw at all
        assert a.train_rmse_ != c.train_rmse_


def test_empty_users_and_items_keep_bias_zero_and_init_factors() -> None:
    m, _ = planted(20, 15)
    m = m.tolil()
    m[4, :] = 0
    m[:, 7] = 0
    m = m.tocsr()
    m.eliminate_zeros()
    for model in (
        SGDMF(factors=3, iterations=3, init_std=0.2, seed=5),
        ALSMF(factors=3, iterations=3, init_std=0.2, seed=5),
    ):
        model.fit(m)
        rng = np.random.default_rng(5)
        p0 = rng.normal(0, 0.2, (20, 3)).astype(np.float32)
        q0 = rng.normal(0, 0.2, (15, 3)).astype(np.float32)
        assert model.user_biases_[4] == 0 and model.item_biases_[7] == 0
        np.testing.assert_array_equal(model.user_factors_[4], p0[4])
        np.testing.assert_array_equal(model.item_factors_[7], q0[7])
        assert not np.array_equal(model.user_factors_[3], p0[3])


def test_stored_zeros_are_not_ratings(data) -> None:
    train = data[0]
    with_zeros = train.copy()
    with_zeros.data[::7] = 0.0  # stored, explicit zeros
    without = with_zeros.copy()
    without.eliminate_zeros()
    assert with_zeros.nnz > without.nnz
    a = SGDMF(factors=3, iterations=3).fit(with_zeros)
    b = SGDMF(factors=3, iterations=3).fit(without)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    assert a.global_mean_ == b.global_mean_ and a.seen_.nnz == without.nnz


# --------------------------------------------------------------------------- callback


@pytest.mark.parametrize("name", ["sgd-linear", "als", "baseline-sgd"])
def test_callback_sees_each_epoch_and_can_stop(name: str, data) -> None:
    states: list[tuple[int, int, np.ndarray]] = []

    def cb(epoch: int, model: Recommender) -> bool:
        states.append((epoch, model.n_epochs_, model.user_biases_.copy()))
        return epoch == 3

    model = MODELS[name]().fit(data[0], callback=cb)
    assert [s[0] for s in states] == [1, 2, 3] == [s[1] for s in states]
    assert model.n_epochs_ == 3 and len(model.train_rmse_) == 3
    np.testing.assert_array_equal(model.user_biases_, states[-1][2])
    assert not np.array_equal(states[0][2], states[1][2])


def test_callback_exception_propagates_with_last_epoch_kept(data) -> None:
    class Stop(Exception):
        pass

    def cb(epoch: int, model: Recommender) -> None:
        if epoch == 2:
            raise Stop

    model = SGDMF(factors=4, iterations=10, learning_rate=0.03)
    with pytest.raises(Stop):
        model.fit(data[0], callback=cb)
    assert model.n_epochs_ == 2


# --------------------------------------------------------------------------- fold-in


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_in_beats_unknown_user_prediction(name: str) -> None:
    m, _ = planted(n_users=120, n_items=50, seed=7)
    old, new = m[:90], m[90:]
    coo = new.tocoo()
    give = np.random.default_rng(0).random(coo.nnz) < 0.5
    rows = sp.csr_matrix((coo.data[give], (coo.row[give], coo.col[give])), shape=new.shape)
    hu, hi, hr = coo.row[~give], coo.col[~give], coo.data[~give]

    model = MODELS[name]().fit(old)
    item_state = (model.item_factors_.copy(), model.item_biases_.copy())
    cold = model.score(np.full(hu.size, -1), hi)
    ids = model.update_users(rows)
    np.testing.assert_array_equal(ids, np.arange(90, 120))
    assert model.user_factors_.shape[0] == model.user_biases_.shape[0] == 120
    assert model.seen_.shape == (120, 50)
    np.testing.assert_array_equal(model.item_factors_, item_state[0])
    np.testing.assert_array_equal(model.item_biases_, item_state[1])
    warm = model.score(ids[hu], hi)
    err = {k: math.sqrt(np.mean((v - hr) ** 2)) for k, v in (("cold", cold), ("warm", warm))}
    assert err["warm"] < 0.9 * err["cold"], err


def test_fold_in_is_the_als_user_step(data) -> None:
    """Folding a training user in again reproduces ALS's own user solve for that user."""
    train = data[0]
    model = ALSMF(factors=4, iterations=6, reg_factors=0.05, reg_bias=0.05).fit(train)
    ids = model.update_users(train[:5])
    # After the last item step the users are no longer exactly optimal, so compare with one more
    # user half-step computed independently.
    from mfstudy.models.explicit import _reference as R

    b, x = np.zeros(5), np.zeros((5, 4))
    c = train[:5].tocsr()
    R.als_half_step(
        c.indptr,
        c.indices,
        c.data,
        model.global_mean_,
        model.item_biases_,
        model.item_factors_.astype(np.float64),
        0.05,
        0.05,
        b,
        x,
    )
    np.testing.assert_allclose(model.user_biases_[ids], b, atol=1e-5)
    np.testing.assert_allclose(model.user_factors_[ids], x, atol=1e-5)


# --------------------------------------------------------------------------- persistence & API


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_round_trip(name: str, fitted, tmp_path) -> None:
    model = fitted[name]
    loaded = Recommender.load(model.save(tmp_path / name))
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    u, i = np.arange(-1, 20), np.arange(5, 26)
    np.testing.assert_array_equal(loaded.score(u, i), model.score(u, i))
    for a, b in zip(loaded.scoring_factors(), model.scoring_factors(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.train_rmse_ == model.train_rmse_ and loaded.n_epochs_ == model.n_epochs_


def test_registered_families() -> None:
    assert model_class("sgd") is SGDMF
    assert model_class("als") is ALSMF
    assert model_class("baseline") is Baseline


def test_init_only_stores() -> None:
    m = SGDMF(factors=-5, kernel="nope")  # validated at fit, not here
    assert m.get_params()["factors"] == -5
    assert not hasattr(m, "item_factors_")


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (SGDMF(kernel="poly"), "kernel must be one of linear, sigmoid, rbf"),
        (SGDMF(factors=0), "factors must be an integer >= 1"),
        (SGDMF(learning_rate=0.0), "learning_rate must be a finite number > 0"),
        (SGDMF(min_rating=5, max_rating=1), "min_rating 5.0 is above max_rating 1.0"),
        (ALSMF(reg_factors=0.0), "reg_factors must be a finite number > 0"),
        (Baseline(solver="svd"), "solver must be one of sgd, als"),
        (Baseline(iterations=2.5), "iterations must be an integer >= 1"),
    ],
)
def test_bad_hyperparameters_raise_config_error(model: Recommender, match: str, data) -> None:
    with pytest.raises(ConfigError, match=match):
        model.fit(data[0])


def test_bad_training_input_raises_data_error() -> None:
    m, _ = planted(6, 5)
    with pytest.raises(DataError, match="expected a users x items scipy sparse matrix"):
        SGDMF().fit(m.toarray())
    with pytest.raises(DataError, match="no ratings"):
        ALSMF().fit(sp.csr_matrix((4, 3)))
    bad = m.copy()
    bad.data[3] = np.nan
    row = int(np.searchsorted(bad.indptr, 3, side="right") - 1)
    with pytest.raises(DataError, match=f"rating at row {row}, column {bad.indices[3]} is nan"):
        Baseline().fit(bad)
