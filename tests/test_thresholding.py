"""k-core thresholding against the blog's pandas loop and a brute-force definition."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfstudy.data import Interactions, RawInteractions, clean
from mfstudy.errors import DataError
from mfstudy.thresholding import ThresholdStats, threshold

# --------------------------------------------------------------------------- references


def threshold_likes(df: pd.DataFrame, uid_min: int, mid_min: int) -> pd.DataFrame:
    """The blog recipe's loop, ported literally (only the formatting changed)."""
    done = False
    while not done:
        starting_shape = df.shape[0]
        mid_counts = df.groupby("uid").mid.count()
        df = df[~df.uid.isin(mid_counts[mid_counts < mid_min].index.tolist())]
        uid_counts = df.groupby("mid").uid.count()
        df = df[~df.mid.isin(uid_counts[uid_counts < uid_min].index.tolist())]
        ending_shape = df.shape[0]
        if starting_shape == ending_shape:
            done = True
    return df


def brute_force_core(dense: np.ndarray, a: int, b: int) -> tuple[set[int], set[int]]:
    """The definition itself: the union of every (user set, item set) in which each user has
    >= a items and each item >= b users. Unions of valid sets are valid, so this union is the
    largest valid set. Exponential: only for tiny matrices."""
    n_u, n_i = dense.shape
    keep_u: set[int] = set()
    keep_i: set[int] = set()
    for us in itertools.product([False, True], repeat=n_u):
        um = np.array(us, dtype=bool)
        for its in itertools.product([False, True], repeat=n_i):
            im = np.array(its, dtype=bool)
            sub = dense[np.ix_(um, im)]
            if (sub.sum(axis=1) >= a).all() and (sub.sum(axis=0) >= b).all():
                keep_u |= set(np.flatnonzero(um).tolist())
                keep_i |= set(np.flatnonzero(im).tolist())
    return keep_u, keep_i


def from_dense(dense: np.ndarray, rng: np.random.Generator | None = None) -> Interactions:
    """Interactions of a dense 0/1 matrix with distinct weights (to check they travel along);
    raw ids are strings so a re-coding bug shows. Empty rows/columns are dropped, as `clean`
    would, by selecting all entries."""
    r, c = np.nonzero(dense)
    order = np.arange(len(r)) if rng is None else rng.permutation(len(r))
    r, c = r[order], c[order]
    inter = Interactions(
        users=r.astype(np.int32),
        items=c.astype(np.int32),
        weights=(1.0 + r * 100 + c).astype(np.float32),
        user_ids=np.array([f"u{j}" for j in range(dense.shape[0])], dtype=object),
        item_ids=np.array([f"i{j}" for j in range(dense.shape[1])], dtype=object),
    )
    return inter.select(np.ones(len(r), dtype=bool))


def triples(inter: Interactions) -> set[tuple[str, str, float]]:
    return set(
        zip(
            inter.user_ids[inter.users].tolist(),
            inter.item_ids[inter.items].tolist(),
            inter.weights.tolist(),
            strict=True,
        )
    )


# --------------------------------------------------------------------------- real data


def test_lastfm_matches_blog_loop(data_dir: Path) -> None:
    df = pd.read_csv(data_dir / "lastfm-2k" / "user_artists.dat", sep="\t")
    assert list(df.columns) == ["userID", "artistID", "weight"]

    likes = df.rename(columns={"userID": "uid", "artistID": "mid"})[["uid", "mid"]]
    expected = threshold_likes(likes.drop_duplicates(), uid_min=5, mid_min=5)
    assert (expected.uid.nunique(), expected.mid.nunique(), len(expected)) == (1859, 2823, 71355)

    frame = df.rename(columns={"userID": "user", "artistID": "item"}).astype({"weight": float})
    inter, _ = clean(RawInteractions(frame=frame, source="lastfm-2k"), "binary")
    out, stats = threshold(inter, min_items_per_user=5, min_users_per_item=5)

    assert (out.n_users, out.n_items, out.nnz) == (1859, 2823, 71355)
    got = set(zip(out.user_ids[out.users].tolist(), out.item_ids[out.items].tolist(), strict=True))
    assert got == set(zip(expected.uid.tolist(), expected.mid.tolist(), strict=True))
    assert np.all(out.weights == 1.0)

    assert stats.users_before == 1892 and stats.items_before == 17632
    assert stats.interactions_before == 92834
    assert stats.users_after == 1859 and stats.items_after == 2823
    assert stats.interactions_after == 71355
    assert stats.sparsity_after_pct == pytest.approx(100 * 71355 / (1859 * 2823))
    assert stats.sparsity_before_pct == pytest.approx(100 * 92834 / (1892 * 17632))
    assert stats.passes >= 2  # at least one removing pass and the confirming one
    d = stats.to_dict()
    assert d["users_after"] == 1859 and d["passes"] == stats.passes
    assert set(d) == {f.name for f in ThresholdStats.__dataclass_fields__.values()}


# --------------------------------------------------------------------------- properties


@st.composite
def dense_matrices(draw: st.DrawFn, max_users: int, max_items: int) -> np.ndarray:
    n_u = draw(st.integers(1, max_users))
    n_i = draw(st.integers(1, max_items))
    density = draw(st.floats(0.2, 0.95))
    seed = draw(st.integers(0, 2**32 - 1))
    dense = (np.random.default_rng(seed).random((n_u, n_i)) < density).astype(np.int64)
    # At least one interaction so the input is valid Interactions.
    dense[0, 0] = 1
    return dense


def expected_core(dense: np.ndarray, a: int, b: int) -> set[tuple[str, str, float]]:
    keep_u, keep_i = brute_force_core(dense, a, b)
    return {
        (f"u{u}", f"i{i}", float(1 + u * 100 + i))
        for u, i in zip(*np.nonzero(dense), strict=True)
        if u in keep_u and i in keep_i
    }


@settings(max_examples=60, deadline=None)
@given(dense=dense_matrices(5, 5), a=st.integers(1, 4), b=st.integers(1, 4))
def test_result_is_the_largest_valid_subset(dense: np.ndarray, a: int, b: int) -> None:
    inter = from_dense(dense)
    want = expected_core(dense, a, b)
    if not want:
        with pytest.raises(DataError):
            threshold(inter, a, b)
        return
    out, stats = threshold(inter, a, b)
    assert triples(out) == want
    # Dense codes: every code in range used, ids consistent with codes.
    assert set(out.users.tolist()) == set(range(out.n_users))
    assert set(out.items.tolist()) == set(range(out.n_items))
    assert np.bincount(out.users).min() >= a
    assert np.bincount(out.items).min() >= b
    assert (stats.users_after, stats.items_after, stats.interactions_after) == (
        out.n_users,
        out.n_items,
        out.nnz,
    )
    assert (stats.users_before, stats.items_before, stats.interactions_before) == (
        inter.n_users,
        inter.n_items,
        inter.nnz,
    )


@settings(max_examples=60, deadline=None)
@given(
    dense=dense_matrices(25, 20),
    a=st.integers(1, 6),
    b=st.integers(1, 6),
    perm_seed=st.integers(0, 2**32 - 1),
)
def test_idempotent_and_order_independent(
    dense: np.ndarray, a: int, b: int, perm_seed: int
) -> None:
    inter = from_dense(dense)
    shuffled = from_dense(dense, np.random.default_rng(perm_seed))
    try:
        out, _ = threshold(inter, a, b)
    except DataError:
        with pytest.raises(DataError):
            threshold(shuffled, a, b)
        return
    again, stats = threshold(out, a, b)
    assert triples(again) == triples(out)
    assert stats.passes == 1
    assert stats.interactions_before == stats.interactions_after == out.nnz
    out_shuffled, _ = threshold(shuffled, a, b)
    assert triples(out_shuffled) == triples(out)
    # Swapping the roles of users and items swaps the thresholds and gives the transposed core.
    transposed, _ = threshold(from_dense(dense.T), b, a)
    assert {(i, u) for u, i, _ in triples(out)} == {
        (u.replace("u", "i"), i.replace("i", "u")) for u, i, _ in triples(transposed)
    }


def test_thresholds_of_one_keep_everything() -> None:
    dense = np.array([[1, 0, 0], [0, 1, 1]])
    inter = from_dense(dense)
    out, stats = threshold(inter, 1, 1)
    assert triples(out) == triples(inter)
    assert stats.passes == 1


def test_cascade_needs_several_passes() -> None:
    # A chain: removing the sparse end user drops an item, which drops the next user, ...
    dense = np.array(
        [
            [1, 1, 0, 0],
            [0, 1, 1, 0],
            [0, 0, 1, 1],
            [0, 0, 0, 1],
        ]
    )
    with pytest.raises(DataError):
        threshold(from_dense(dense), 2, 2)
    # A 2x2 full block survives while the chain hanging off it peels away pass by pass.
    block = np.zeros((5, 5), dtype=np.int64)
    block[:2, :2] = 1
    block[1, 2] = block[2, 2] = block[2, 3] = block[3, 3] = block[3, 4] = block[4, 4] = 1
    out, stats = threshold(from_dense(block), 2, 2)
    assert triples(out) == {
        (f"u{u}", f"i{i}", float(1 + u * 100 + i)) for u in range(2) for i in range(2)
    }
    assert stats.passes >= 3


# --------------------------------------------------------------------------- errors


def test_empty_result_message() -> None:
    dense = np.eye(4, dtype=np.int64)
    with pytest.raises(DataError) as exc:
        threshold(from_dense(dense), 5, 3)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg == (
        "no interactions left after thresholding at 5 items per user and 3 users per item "
        "(started from 4 users, 4 items)"
    )


def test_empty_result_message_formats_thousands() -> None:
    n = 1234
    inter = Interactions(
        users=np.arange(n, dtype=np.int32),
        items=np.arange(n, dtype=np.int32) % 567,
        weights=np.ones(n, dtype=np.float32),
        user_ids=np.arange(n),
        item_ids=np.arange(567),
    )
    with pytest.raises(DataError, match=r"started from 1,234 users, 567 items\)$"):
        threshold(inter, 2, 1)
