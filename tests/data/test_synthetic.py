"""The synthetic generator: determinism, sizes, planted preferences, popularity, duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfstudy.config import SyntheticSource
from mfstudy.data import clean, generate_synthetic, planted_factors, popularity


def test_same_seed_same_frame_other_seed_other_frame() -> None:
    cfg = SyntheticSource(values="count", duplicate_fraction=0.1)
    a, b, c = (generate_synthetic(cfg, s) for s in (7, 7, 8))
    pd.testing.assert_frame_equal(a.frame, b.frame)
    pd.testing.assert_series_equal(a.item_names, b.item_names)
    assert not a.frame.equals(c.frame)
    pa, qa = planted_factors(cfg, 7)
    pc, _ = planted_factors(cfg, 8)
    assert not np.array_equal(pa, pc)
    np.testing.assert_array_equal(planted_factors(cfg, 7)[1], qa)


def test_layout_ids_and_names() -> None:
    cfg = SyntheticSource(n_users=300, n_items=120, n_interactions=4_000)
    raw = generate_synthetic(cfg, 1)
    f = raw.frame
    assert list(f.columns) == ["user", "item", "weight"]
    assert f["user"].dtype == np.int64 and f["item"].dtype == np.int64
    assert f["weight"].dtype == np.float64 and (f["weight"] == 1.0).all()
    assert raw.item_names is not None and raw.item_names.loc[17] == "item 17"
    assert len(raw.item_names) == 120
    inter, _ = clean(raw, "binary")
    assert inter.item_names is not None and inter.item_names[0] == "item 0"


@settings(max_examples=30, deadline=None)
@given(
    n_users=st.integers(1, 300),
    n_items=st.integers(1, 200),
    n_interactions=st.integers(1, 20_000),
    exponent=st.floats(0.0, 3.0),
    affinity=st.floats(0.0, 5.0),
    rank=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_sizes_roughly_honoured(
    n_users: int,
    n_items: int,
    n_interactions: int,
    exponent: float,
    affinity: float,
    rank: int,
    seed: int,
) -> None:
    cfg = SyntheticSource(
        n_users=n_users,
        n_items=n_items,
        n_interactions=n_interactions,
        popularity_exponent=exponent,
        affinity=affinity,
        rank=rank,
    )
    f = generate_synthetic(cfg, seed).frame
    users, items = f["user"].to_numpy(), f["item"].to_numpy()
    assert not f.duplicated(["user", "item"]).any()  # distinct pairs before duplicates
    assert users.min() >= 0 and users.max() < n_users
    assert items.min() >= 0 and items.max() < n_items
    assert len(np.unique(users)) == n_users  # every user holds at least one item
    # Each user holds >= 1 item, so the target is at least n_users; at most the full matrix.
    expected = min(max(n_interactions, n_users), n_users * n_items)
    assert 0.9 * expected <= len(f) <= 1.02 * expected + 2


def _holdings(cfg: SyntheticSource, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean planted score of held pairs vs. of the popularity-only expectation, per row."""
    f = generate_synthetic(cfg, seed).frame
    p, q = planted_factors(cfg, seed)
    u, i = f["user"].to_numpy(), f["item"].to_numpy()
    held = np.einsum("ij,ij->i", p[u], q[i])
    # What a user's item would score on average if chosen by popularity alone.
    baseline = p[u] @ (popularity(cfg) @ q)
    return held, baseline


@pytest.mark.parametrize("affinity", [0.0, 2.0])
def test_planted_preferences_are_real(affinity: float) -> None:
    """Users hold items with high u.v more often than popularity alone predicts, and only
    because of `affinity`: at 0 the held scores match the popularity baseline."""
    cfg = SyntheticSource(n_users=1_000, n_items=500, n_interactions=30_000, affinity=affinity)
    held, baseline = _holdings(cfg, 3)
    lift = held.mean() - baseline.mean()
    se = held.std() / np.sqrt(len(held))
    if affinity == 0.0:
        assert abs(lift) < 5 * se + 0.02, lift
    else:
        assert lift > 0.4, lift  # s has unit variance: 0.4 is a large shift
        # And more so for held items than for the same users' unheld popular items.
        assert (held > 0).mean() > 0.6


def test_planted_structure_is_low_rank() -> None:
    """The users x items matrix, item means removed, lies largely in the planted item space:
    projected on the planted item factors it keeps far more of its energy than on random
    factors of the same rank (at affinity 0 both are equal, ~1.3%)."""
    cfg = SyntheticSource(n_users=2_000, n_items=300, n_interactions=60_000, rank=4, affinity=3.0)
    f = generate_synthetic(cfg, 5).frame
    m = np.zeros((cfg.n_users, cfg.n_items))  # tiny: 2,000 x 300
    m[f["user"], f["item"]] = 1.0
    m -= m.mean(axis=0)
    _, q = planted_factors(cfg, 5)
    rand = np.random.default_rng(0).standard_normal(q.shape)

    def explained(basis: np.ndarray) -> float:
        proj, _ = np.linalg.qr(basis)
        return float(np.linalg.norm(m @ proj) ** 2 / np.linalg.norm(m) ** 2)

    assert explained(q) > 3 * explained(rand)


def test_power_law_popularity() -> None:
    cfg = SyntheticSource(n_users=2_000, n_items=1_000, n_interactions=60_000, affinity=2.0)
    items = generate_synthetic(cfg, 11).frame["item"].to_numpy()
    counts = np.bincount(items, minlength=cfg.n_items)
    top = np.sort(counts)[::-1]
    # The top 1% of items hold many times their uniform share (1%) of the interactions ...
    assert top[:10].sum() / counts.sum() > 0.05
    # ... the tail is thin, and popularity falls with the item index as designed.
    assert top[:100].mean() > 5 * top[-500:].mean()
    ranks = pd.Series(counts).rank().to_numpy()
    assert np.corrcoef(ranks, np.arange(cfg.n_items))[0, 1] < -0.8
    # Without the exponent the same test fails: popularity is flat.
    flat = generate_synthetic(cfg.model_copy(update={"popularity_exponent": 0.0}), 11)
    flat_counts = np.bincount(flat.frame["item"].to_numpy(), minlength=cfg.n_items)
    assert np.sort(flat_counts)[::-1][:10].sum() / flat_counts.sum() < 0.03


def test_heavy_tailed_user_activity() -> None:
    cfg = SyntheticSource(n_users=2_000, n_items=1_000, n_interactions=60_000)
    per_user = np.bincount(generate_synthetic(cfg, 2).frame["user"].to_numpy())
    assert per_user.max() > 10 * np.median(per_user)
    assert per_user.min() >= 1


def test_counts_grow_with_preference() -> None:
    cfg = SyntheticSource(n_users=1_000, n_items=500, n_interactions=30_000, values="count")
    raw = generate_synthetic(cfg, 4)
    w = raw.frame["weight"].to_numpy()
    assert w.min() >= 1 and np.array_equal(w, np.round(w))
    assert len(np.unique(w)) > 10
    p, q = planted_factors(cfg, 4)
    s = np.einsum("ij,ij->i", p[raw.frame["user"]], q[raw.frame["item"]])
    rho = pd.Series(w).corr(pd.Series(s), method="spearman")
    assert rho > 0.3, rho


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_duplicates_injected_and_removed_by_clean(fraction: float) -> None:
    base = SyntheticSource(n_users=500, n_items=300, n_interactions=10_000, values="count")
    cfg = base.model_copy(update={"duplicate_fraction": fraction})
    clean_raw = generate_synthetic(base, 9)
    raw = generate_synthetic(cfg, 9)
    n = len(clean_raw.frame)
    n_dup = round(fraction * n)
    assert len(raw.frame) == n + n_dup
    # The first n rows are the duplicate-free data; the rest repeat distinct rows verbatim.
    pd.testing.assert_frame_equal(raw.frame.iloc[:n], clean_raw.frame)
    assert raw.frame.duplicated().sum() == n_dup
    inter, stats = clean(raw, "sum")
    ref, _ = clean(clean_raw, "sum")
    assert stats.duplicates_dropped == n_dup
    assert inter.nnz == n
    np.testing.assert_array_equal(inter.weights, ref.weights)  # no play counted twice
