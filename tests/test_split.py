"""Invariants of the three splits, checked entry by entry against the input matrix."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mfstudy.config import NewUserSplitConfig, RandomSplitConfig, UserHoldoutSplitConfig
from mfstudy.data import RawInteractions, clean
from mfstudy.errors import SplitError
from mfstudy.split import (
    HoldoutSplit,
    NewUserSplit,
    RandomSplit,
    make_split,
    new_user_split,
    random_split,
    user_holdout,
)
from mfstudy.thresholding import threshold

# --------------------------------------------------------------------------- helpers


@st.composite
def csr_matrices(draw: st.DrawFn, max_users: int = 40, max_items: int = 25) -> sp.csr_matrix:
    """Random CSR with distinct positive values (so a moved or swapped value shows), possibly
    with empty rows and columns; mostly big enough for a split, sometimes tiny."""
    tiny = draw(st.sampled_from([False, False, False, True]))
    n_u = draw(st.integers(1, 4) if tiny else st.integers(5, max_users))
    n_i = draw(st.integers(1, 4) if tiny else st.integers(4, max_items))
    density = draw(st.one_of(st.floats(0.05, 1.0), st.floats(0.5, 1.0)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((n_u, n_i)) < density
    r, c = np.nonzero(mask)
    vals = rng.permutation(len(r)).astype(np.float32) + 1.0
    return sp.csr_matrix((vals, (r, c)), shape=(n_u, n_i), dtype=np.float32)


def entries(m: sp.csr_matrix) -> set[tuple[int, int, float]]:
    coo = m.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True))


def check_parts(full: sp.csr_matrix, *parts: sp.csr_matrix) -> None:
    """Parts are float32 CSR of the full shape with sorted indices, pairwise disjoint, and
    their entries (values included) are exactly the full matrix's."""
    seen: set[tuple[int, int]] = set()
    union: list[tuple[int, int, float]] = []
    for p in parts:
        assert isinstance(p, sp.csr_matrix)
        assert p.shape == full.shape
        assert p.dtype == np.float32
        assert p.has_sorted_indices
        for r in range(p.shape[0]):  # check the flag is true, not just set
            idx = p.indices[p.indptr[r] : p.indptr[r + 1]]
            assert np.all(np.diff(idx) > 0)
        e = entries(p)
        coords = {(r, c) for r, c, _ in e}
        assert not coords & seen, "parts overlap"
        seen |= coords
        union.extend(e)
    assert len(union) == full.nnz
    assert set(union) == entries(full)


def row_set(m: sp.csr_matrix, r: int) -> set[tuple[int, float]]:
    s = slice(m.indptr[r], m.indptr[r + 1])
    return set(zip(m.indices[s].tolist(), m.data[s].tolist(), strict=True))


def same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return (
        a.shape == b.shape
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.data, b.data)
    )


# --------------------------------------------------------------------------- user_holdout


@settings(max_examples=150, deadline=None)
@given(
    full=csr_matrices(),
    fraction=st.one_of(st.floats(0.05, 0.5), st.just(1.0)),
    k=st.integers(1, 4),
    min_inter=st.one_of(st.none(), st.integers(1, 8)),
    seed=st.integers(0, 2**32 - 1),
)
def test_user_holdout_invariants(
    full: sp.csr_matrix, fraction: float, k: int, min_inter: int | None, seed: int
) -> None:
    counts = np.diff(full.indptr)
    thr = 2 * k if min_inter is None else max(min_inter, k)
    need = math.floor(fraction * full.shape[0])
    eligible = set(np.flatnonzero(counts >= thr).tolist())
    if need == 0 or len(eligible) < need:
        event("user_holdout: SplitError")
        with pytest.raises(SplitError) as exc:
            user_holdout(full, fraction, k, min_inter, seed=seed)
        msg = str(exc.value)
        assert "\n" not in msg
        if need:
            assert f"need {need}, have {len(eligible)}" in msg
            assert f">= {thr} interactions" in msg
        return

    s = user_holdout(full, fraction, k, min_inter, seed=seed)
    assert isinstance(s, HoldoutSplit)
    check_parts(full, s.train, s.test)
    users = s.users.tolist()
    assert users == sorted(set(users)) and len(users) == need
    assert set(users) <= eligible
    held = set(users)
    for r in range(full.shape[0]):
        test_r, train_r, full_r = row_set(s.test, r), row_set(s.train, r), row_set(full, r)
        if r in held:
            assert len(test_r) == k
            assert len(train_r) == counts[r] - k
        else:
            assert not test_r
            assert train_r == full_r

    again = user_holdout(full, fraction, k, min_inter, seed=seed)
    assert same(again.train, s.train) and same(again.test, s.test)
    assert np.array_equal(again.users, s.users)


def test_user_holdout_varies_with_seed() -> None:
    full = sp.random(40, 30, density=0.5, format="csr", dtype=np.float32, random_state=1)
    results = {user_holdout(full, 0.3, 3, seed=s).test.tocoo().data.tobytes() for s in range(8)}
    assert len(results) == 8


def test_user_holdout_is_uniform_within_a_row() -> None:
    # One user with 10 items, k=1: each item should be the test item ~1/10 of the time.
    full = sp.csr_matrix(np.arange(1, 11, dtype=np.float32)[None, :])
    picks = np.array([user_holdout(full, 1.0, 1, seed=s).test.indices[0] for s in range(2000)])
    freq = np.bincount(picks, minlength=10)
    assert freq.min() > 140 and freq.max() < 260, freq  # expected 200, sd ~13


def test_user_holdout_is_uniform_among_eligible_users() -> None:
    # 10 eligible users of 20 (the rest have one interaction), 2 held out: each ~1/5 of draws.
    dense = np.zeros((20, 6), dtype=np.float32)
    dense[:10, :] = 1.0
    dense[10:, 0] = 1.0
    full = sp.csr_matrix(dense)
    counts = np.zeros(20, dtype=np.int64)
    for s in range(1000):
        counts[user_holdout(full, 0.1, 3, seed=s).users] += 1
    assert counts[10:].sum() == 0
    assert counts[:10].min() > 140 and counts[:10].max() < 260, counts  # expected 200


def test_user_holdout_error_messages() -> None:
    full = sp.csr_matrix(np.ones((10, 4), dtype=np.float32))
    with pytest.raises(SplitError) as exc:
        user_holdout(full, 0.5, 3, seed=0)  # needs 6 interactions, everyone has 4
    assert str(exc.value) == (
        "Not enough users with >= 6 interactions for fraction 0.5: need 5, have 0"
    )
    with pytest.raises(SplitError, match=r">= 9 interactions .* need 2, have 0$"):
        user_holdout(full, 0.2, 9, min_interactions=1, seed=0)  # k above every count
    with pytest.raises(SplitError, match="holds out no user"):
        user_holdout(full, 0.05, 1, seed=0)
    big = sp.csr_matrix(
        (np.ones(1500, dtype=np.float32), (np.arange(1500), np.zeros(1500, dtype=int))),
        shape=(1500, 1),
    )
    with pytest.raises(SplitError, match=r"need 300, have 0$"):
        user_holdout(big, 0.2, 5, seed=0)
    with pytest.raises(SplitError, match=r"need 1,500, have 0$"):
        user_holdout(big, 1.0, 5, seed=0)


def test_user_holdout_does_not_touch_input() -> None:
    full = sp.random(20, 15, density=0.6, format="csr", dtype=np.float32, random_state=3)
    before = full.copy()
    user_holdout(full, 0.5, 2, seed=0)
    assert same(full, before)


def test_user_holdout_accepts_unsorted_coo_like_input() -> None:
    # Unsorted indices and a duplicate entry: the split sees the canonical matrix.
    m = sp.csr_matrix(
        (
            np.array([3.0, 1.0, 2.0, 5.0], dtype=np.float32),
            np.array([2, 0, 1, 2]),
            np.array([0, 4]),
        ),
        shape=(1, 3),
    )
    s = user_holdout(m, 1.0, 1, min_interactions=1, seed=0)
    canonical = m.copy()
    canonical.sum_duplicates()
    check_parts(canonical, s.train, s.test)
    assert row_set(canonical, 0) == {(0, 1.0), (1, 2.0), (2, 8.0)}


# --------------------------------------------------------------------------- new_user_split


@settings(max_examples=150, deadline=None)
@given(
    full=csr_matrices(),
    frac=st.one_of(st.floats(0.05, 0.5), st.floats(0.5, 0.95)),
    foldin=st.floats(0.05, 0.95),
    min_inter=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_new_user_split_invariants(
    full: sp.csr_matrix, frac: float, foldin: float, min_inter: int, seed: int
) -> None:
    counts = np.diff(full.indptr)
    n_new = round(frac * full.shape[0])
    eligible = set(np.flatnonzero(counts >= min_inter).tolist())
    ok = 0 < n_new <= len(eligible) and n_new < np.count_nonzero(counts)
    if not ok:
        event("new_user_split: SplitError")
        with pytest.raises(SplitError) as exc:
            new_user_split(full, frac, foldin, min_inter, seed=seed)
        assert "\n" not in str(exc.value)
        return

    s = new_user_split(full, frac, foldin, min_inter, seed=seed)
    assert isinstance(s, NewUserSplit)
    check_parts(full, s.train, s.foldin, s.test)
    new = s.new_users.tolist()
    assert new == sorted(set(new)) and len(new) == n_new and set(new) <= eligible
    for r in range(full.shape[0]):
        tr, fo, te = row_set(s.train, r), row_set(s.foldin, r), row_set(s.test, r)
        if r in set(new):
            n = int(counts[r])
            want_fold = min(max(math.floor(foldin * n + 0.5), 1), n - 1)
            assert not tr
            assert len(fo) == want_fold and len(te) == n - want_fold
            assert fo and te
        else:
            assert tr == row_set(full, r) and not fo and not te

    again = new_user_split(full, frac, foldin, min_inter, seed=seed)
    assert all(
        same(a, b)
        for a, b in [(again.train, s.train), (again.foldin, s.foldin), (again.test, s.test)]
    )


def test_new_user_split_varies_with_seed() -> None:
    full = sp.random(40, 30, density=0.5, format="csr", dtype=np.float32, random_state=2)
    results = {new_user_split(full, 0.25, seed=s).foldin.tocoo().data.tobytes() for s in range(8)}
    assert len(results) == 8


def test_new_user_split_errors() -> None:
    dense = np.zeros((10, 5), dtype=np.float32)
    dense[:, 0] = 1.0
    dense[:2, 1] = 1.0  # only users 0 and 1 have 2 interactions
    full = sp.csr_matrix(dense)
    with pytest.raises(SplitError) as exc:
        new_user_split(full, 0.3, seed=0)
    assert str(exc.value) == (
        "Not enough users with >= 2 interactions for frac_new_users 0.3: need 3, have 2"
    )
    with pytest.raises(SplitError, match="makes no new user"):
        new_user_split(full, 0.01, seed=0)
    with pytest.raises(SplitError, match="leaves no user with interactions for training"):
        new_user_split(sp.csr_matrix(np.ones((2, 3), dtype=np.float32)), 0.9, seed=0)


# --------------------------------------------------------------------------- random_split


@settings(max_examples=150, deadline=None)
@given(full=csr_matrices(), tf=st.floats(0.05, 0.95), seed=st.integers(0, 2**32 - 1))
def test_random_split_invariants(full: sp.csr_matrix, tf: float, seed: int) -> None:
    n_test = round(tf * full.nnz)
    if n_test in (0, full.nnz):
        event("random_split: SplitError")
        with pytest.raises(SplitError) as exc:
            random_split(full, tf, seed)
        assert "\n" not in str(exc.value) and f"{full.nnz:,} interactions" in str(exc.value)
        return
    s = random_split(full, tf, seed)
    assert isinstance(s, RandomSplit)
    check_parts(full, s.train, s.test)
    assert s.test.nnz == n_test
    again = random_split(full, tf, seed)
    assert same(again.train, s.train) and same(again.test, s.test)


def test_random_split_is_uniform_and_varies() -> None:
    full = sp.csr_matrix(np.ones((4, 5), dtype=np.float32))
    hits = np.zeros(full.shape, dtype=np.int64)
    tests = set()
    for s in range(1000):
        t = random_split(full, 0.2, s).test
        hits += t.toarray().astype(np.int64)
        tests.add(t.indices.tobytes() + t.indptr.tobytes())
    assert hits.min() > 140 and hits.max() < 260, hits  # expected 200 per cell
    assert len(tests) > 800  # ~904 distinct of C(20, 4) = 4845 expected


def test_random_split_error() -> None:
    full = sp.csr_matrix(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(SplitError) as exc:
        random_split(full, 0.2, 0)
    assert str(exc.value) == "test_fraction 0.2 of 2 interactions leaves no test interaction"


# --------------------------------------------------------------------------- make_split


def test_make_split_dispatches_with_the_same_seed() -> None:
    full = sp.random(50, 30, density=0.4, format="csr", dtype=np.float32, random_state=4)
    h = make_split(full, UserHoldoutSplitConfig(fraction=0.2, k=3), 7)
    assert isinstance(h, HoldoutSplit)
    assert same(h.test, user_holdout(full, 0.2, 3, seed=7).test)
    h6 = make_split(full, UserHoldoutSplitConfig(fraction=0.2, k=3, min_interactions=12), 7)
    assert same(h6.test, user_holdout(full, 0.2, 3, 12, seed=7).test)
    n = make_split(full, NewUserSplitConfig(frac_new_users=0.3, foldin_fraction=0.4), 7)
    assert isinstance(n, NewUserSplit)
    assert same(n.foldin, new_user_split(full, 0.3, 0.4, seed=7).foldin)
    r = make_split(full, RandomSplitConfig(test_fraction=0.1), 7)
    assert isinstance(r, RandomSplit)
    assert same(r.test, random_split(full, 0.1, 7).test)


# --------------------------------------------------------------------------- real data


def test_lastfm_recipe_split(data_dir: Path) -> None:
    df = pd.read_csv(data_dir / "lastfm-2k" / "user_artists.dat", sep="\t")
    frame = df.rename(columns={"userID": "user", "artistID": "item"}).astype({"weight": float})
    inter, _ = clean(RawInteractions(frame=frame, source="lastfm-2k"), "binary")
    inter, _ = threshold(inter, 5, 5)
    full = inter.to_csr()
    assert full.shape == (1859, 2823)
    s = user_holdout(full, 0.2, 5, seed=42)
    assert len(s.users) == math.floor(0.2 * 1859) == 371
    test_counts = np.diff(s.test.indptr)
    assert np.all(test_counts[s.users] == 5)
    assert s.test.nnz == 371 * 5
    assert s.train.nnz == full.nnz - 371 * 5
    assert np.all(np.diff(full.indptr)[s.users] >= 10)
    check_parts(full, s.train, s.test)
