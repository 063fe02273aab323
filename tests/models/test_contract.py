"""The model contract of mfstudy.models._base, checked for every registered family.

Families are collected from `mfstudy.models._registered()`, so a newly registered model is
tested automatically, and it must get an entry in `SPECS` (fast hyperparameters, which
checkerboard version it trains on, what it can learn) or every test for it fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import scipy.sparse as sp

from mfstudy.models import Recommender, _registered, model_class


@dataclass(frozen=True)
class Spec:
    """How to test one family quickly."""

    params: dict[str, Any]
    """Constructor arguments; `iterations` and `seed` are overridden by some tests."""
    data: Literal["binary", "ratings"]
    """Checkerboard version: binary likes (implicit feedback) or 5/1 ratings (explicit)."""
    factors: int | None
    """Width of user_factors_/item_factors_, or None when the family has no fixed width."""
    learns_factors: bool = True
    """False for bias-only models: checks needing learned item similarity do not apply."""


SPECS: dict[str, Spec] = {
    "wrmf": Spec(
        params={"factors": 8, "regularization": 1.0, "alpha": 10.0, "iterations": 8, "seed": 0},
        data="binary",
        factors=8,
    ),
    "sgd": Spec(
        params={
            "factors": 8,
            "iterations": 60,
            "learning_rate": 0.03,
            "reg_factors": 0.02,
            "reg_bias": 0.02,
            "init_std": 0.1,
            "seed": 0,
        },
        data="ratings",
        factors=None,
    ),
    "als": Spec(
        params={
            "factors": 8,
            "iterations": 10,
            "reg_factors": 0.1,
            "reg_bias": 0.1,
            "init_std": 0.1,
            "seed": 0,
        },
        data="ratings",
        factors=None,
    ),
    "baseline": Spec(
        params={"solver": "sgd", "iterations": 10, "learning_rate": 0.01, "reg": 0.005, "seed": 0},
        data="ratings",
        factors=None,
        learns_factors=False,
    ),
}

FAMILIES = sorted(cls.family for cls in _registered())


def spec_of(family: str) -> Spec:
    if family not in SPECS:
        pytest.fail(f"model family {family!r} has no entry in SPECS of {__file__}; add one")
    return SPECS[family]


def fit(family: str, train: sp.csr_matrix, callback=None, **overrides: Any) -> Recommender:
    params = {**spec_of(family).params, **overrides}
    return model_class(family)(**params).fit(train, callback=callback)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def board(family: str, checkerboard):
    return checkerboard[spec_of(family).data]


@pytest.fixture
def fitted(family: str, board) -> Recommender:
    return fit(family, board.train)


def needs_learning(family: str) -> None:
    if not spec_of(family).learns_factors:
        pytest.skip(f"{family}: no learned factors, check not applicable")


# --------------------------------------------------------------------------- registry


def test_every_registered_family_has_a_spec() -> None:
    assert "wrmf" in FAMILIES
    missing = sorted(set(FAMILIES) - set(SPECS))
    assert not missing, f"add test hyperparameters to SPECS for: {missing}"
    for family in FAMILIES:
        assert model_class(family).family == family


def test_checkerboard_fixture_is_what_it_claims(checkerboard) -> None:
    for kind, cb in checkerboard.items():
        held = cb.heldout.toarray() > 0
        train = cb.train.toarray()
        own = cb.user_group[:, None] == cb.item_group[None, :]
        assert (held.sum(axis=1) == cb.holdout).all()
        assert not (held & (train > 0)).any()
        assert (held <= own).all()
        assert ((train > 0) == (own & ~held) | ((train > 0) & ~own)).all()
        if kind == "binary":
            assert set(np.unique(cb.train.data)) == {1.0}
            assert not (train[~own] > 0).any()
        else:
            assert set(np.unique(cb.train.data)) == {1.0, 5.0}
            assert (train[own & ~held] == 5.0).all() and (train[~own & (train > 0)] == 1.0).all()


# --------------------------------------------------------------------------- fitting


def test_fit_shapes_and_dtypes(family: str, board, fitted: Recommender) -> None:
    spec = spec_of(family)
    n_users, n_items = board.train.shape
    u, q = fitted.user_factors_, fitted.item_factors_
    assert u.dtype == np.float32 and q.dtype == np.float32
    assert u.shape[0] == n_users and q.shape[0] == n_items and u.shape[1] == q.shape[1]
    if spec.factors is not None:
        assert u.shape[1] == spec.factors
    assert fitted.n_epochs_ == spec.params["iterations"]
    assert sp.isspmatrix_csr(fitted.seen_) and fitted.seen_.shape == board.train.shape
    assert (fitted.seen_ != board.train).nnz == 0
    p, qq = fitted.scoring_factors()
    assert p.shape[0] == n_users and qq.shape[0] == n_items and p.shape[1] == qq.shape[1]
    assert np.isfinite(p).all() and np.isfinite(qq).all()


def test_check_params_names_a_rejected_hyperparameter(family: str, board) -> None:
    from mfstudy.errors import ConfigError

    cls = model_class(family)
    cls().check_params()  # the defaults are trainable
    bad = cls(iterations=-1)
    with pytest.raises(ConfigError, match="iterations") as err:
        bad.check_params()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="iterations"):
        bad.fit(board.train)  # fit checks first


def test_same_seed_same_model_other_seed_other_model(family: str, board) -> None:
    a = fit(family, board.train, seed=11)
    b = fit(family, board.train, seed=11)
    c = fit(family, board.train, seed=12)
    for x, y in zip(a.scoring_factors(), b.scoring_factors(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(
        not np.allclose(x, y) for x, y in zip(a.scoring_factors(), c.scoring_factors(), strict=True)
    )


def test_callback_once_per_epoch_with_the_epochs_state(family: str, board) -> None:
    epochs: list[int] = []
    last: list[tuple[np.ndarray, ...]] = []

    def cb(epoch: int, model: Recommender) -> None:
        epochs.append(epoch)
        last[:] = [tuple(a.copy() for a in model.scoring_factors())]

    model = fit(family, board.train, callback=cb, iterations=5)
    assert epochs == [1, 2, 3, 4, 5]
    assert model.n_epochs_ == 5
    for x, y in zip(last[0], model.scoring_factors(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_truthy_callback_stops_after_that_epoch(family: str, board) -> None:
    epochs: list[int] = []

    def cb(epoch: int, model: Recommender) -> bool:
        epochs.append(epoch)
        return epoch == 3

    stopped = fit(family, board.train, callback=cb, iterations=8)
    fresh = fit(family, board.train, iterations=3)
    assert epochs == [1, 2, 3]
    assert stopped.n_epochs_ == 3
    for x, y in zip(stopped.scoring_factors(), fresh.scoring_factors(), strict=True):
        np.testing.assert_array_equal(x, y)


class _Pruned(Exception):
    """Stands in for optuna.TrialPruned (core modules and their tests stay optuna-free)."""


def test_callback_exception_propagates(family: str, board) -> None:
    def cb(epoch: int, model: Recommender) -> None:
        if epoch == 2:
            raise _Pruned("pruned at epoch 2")

    model = model_class(family)(**{**spec_of(family).params, "iterations": 6})
    with pytest.raises(_Pruned, match="epoch 2"):
        model.fit(board.train, callback=cb)
    # The model is left as of the last completed epoch.
    fresh = fit(family, board.train, iterations=2)
    assert model.n_epochs_ == 2
    for x, y in zip(model.scoring_factors(), fresh.scoring_factors(), strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- inference


def test_recommend_excludes_seen_and_pads(fitted: Recommender, board) -> None:
    n_users, n_items = board.train.shape
    users = np.arange(n_users)
    seen = board.train.toarray() > 0
    items, scores = fitted.recommend(users, k=n_items, exclude_seen=True)
    assert items.shape == scores.shape == (n_users, n_items)
    for u in users:
        valid = items[u] >= 0
        # Exactly the unseen items, then -1 padding with -inf for each seen one.
        assert set(items[u][valid]) == set(np.flatnonzero(~seen[u]))
        assert valid.sum() == n_items - seen[u].sum()
        assert (items[u][~valid] == -1).all() and np.isneginf(scores[u][~valid]).all()
        assert valid[: valid.sum()].all()  # padding only at the end

    # Without exclusion every item is ranked, seen ones included.
    items_all, _ = fitted.recommend(users, k=n_items, exclude_seen=False)
    assert (np.sort(items_all, axis=1) == np.arange(n_items)).all()
    top5, _ = fitted.recommend(users, k=5, exclude_seen=False)
    assert seen[users[:, None], top5].any()


def test_recommend_pads_a_user_who_has_seen_almost_everything(family: str, board) -> None:
    train = board.train.tolil()
    value = 1.0 if board.kind == "binary" else 5.0
    train[0, :] = value
    train[0, [3, 7]] = 0.0
    model = fit(family, sp.csr_matrix(train))
    items, scores = model.recommend(np.array([0]), k=5)
    assert set(items[0, :2]) == {3, 7}
    assert (items[0, 2:] == -1).all() and np.isneginf(scores[0, 2:]).all()
    assert np.isfinite(scores[0, :2]).all()


def test_score_agrees_with_recommend(fitted: Recommender, board) -> None:
    n_users, n_items = board.train.shape
    users = np.arange(n_users)
    items, scores = fitted.recommend(users, k=n_items, exclude_seen=False)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    # recommend ranks by the raw P @ Q (tiny data: the dense product is the reference) ...
    p, q = fitted.scoring_factors()
    raw = np.take_along_axis(p.astype(np.float64) @ q.T.astype(np.float64), items, axis=1)
    np.testing.assert_allclose(scores, raw, rtol=1e-5, atol=1e-5)
    # ... and score() is that raw score up to a monotone map (e.g. clipping to the rating
    # range), so it never contradicts the ranking.
    direct = fitted.score(np.repeat(users, n_items), items.ravel()).reshape(n_users, n_items)
    assert (np.diff(direct, axis=1) <= 1e-5).all()
    assert np.corrcoef(direct.ravel(), raw.ravel())[0, 1] > 0.9


def test_save_load_round_trip(family: str, fitted: Recommender, board, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "model")
    loaded = Recommender.load(path)
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.n_epochs_ == fitted.n_epochs_
    users = np.arange(board.n_users)
    for x, y in zip(loaded.scoring_factors(), fitted.scoring_factors(), strict=True):
        np.testing.assert_array_equal(x, y)
    u = np.repeat(users, board.n_items)
    i = np.tile(np.arange(board.n_items), board.n_users)
    np.testing.assert_array_equal(loaded.score(u, i), fitted.score(u, i))
    for exclude in (True, False):
        a, sa = loaded.recommend(users, k=6, exclude_seen=exclude)
        b, sb = fitted.recommend(users, k=6, exclude_seen=exclude)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)


def test_update_users_folds_in_a_new_user(family: str, fitted: Recommender, board) -> None:
    row, left_out = board.new_user(group=0)
    items_before = fitted.item_factors_.copy()
    idx = fitted.update_users(row)
    np.testing.assert_array_equal(idx, [board.n_users])
    assert fitted.user_factors_.shape[0] == board.n_users + 1
    assert fitted.seen_.shape[0] == board.n_users + 1
    np.testing.assert_array_equal(fitted.item_factors_, items_before)
    recs, _ = fitted.recommend(idx, k=board.n_items)
    assert not set(recs[0]) & set(row.indices)  # its own likes are now seen
    if spec_of(family).learns_factors:
        # A group-A lover is recommended group-A items: exactly the ones it has not seen.
        assert set(recs[0, : len(left_out)]) == set(left_out)
        assert (board.item_group[recs[0, : len(left_out)]] == 0).all()


def test_similar_items_exclude_self_and_share_the_group(family: str, fitted, board) -> None:
    items = np.arange(board.n_items)
    k = 4
    similar, scores = fitted.similar_items(items, k=k)
    assert similar.shape == scores.shape == (board.n_items, k)
    assert not (similar == items[:, None]).any()
    if spec_of(family).learns_factors:
        same = board.item_group[similar] == board.item_group[:, None]
        assert same.all(), f"{(~same).sum()} of {same.size} similar items in another group"


def test_heldout_items_rank_in_the_top_k(family: str, fitted: Recommender, board) -> None:
    needs_learning(family)
    users = np.arange(board.n_users)
    recs, _ = fitted.recommend(users, k=board.holdout, exclude_seen=True)
    held = board.heldout.toarray() > 0
    hits = held[users[:, None], recs]
    assert hits.all(), f"{(~hits.all(axis=1)).sum()} users miss held-out items in their top-k"
