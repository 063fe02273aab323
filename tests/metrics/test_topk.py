"""top_k against a plain per-user full sort, including the norm-bound pruning path."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mfstudy.metrics import _topk, top_k


def factors(rng: np.random.Generator, n_users: int, n_items: int, f: int, skew: float):
    """Continuous random factors (ties have probability zero); `skew` spreads the norms."""
    P = rng.standard_normal((n_users, f)) * rng.lognormal(0.0, skew, (n_users, 1))
    Q = rng.standard_normal((n_items, f)) * rng.lognormal(0.0, skew, (n_items, 1))
    return P.astype(np.float32), Q.astype(np.float32)


def random_csr(rng: np.random.Generator, shape: tuple[int, int], density: float) -> sp.csr_matrix:
    mask = rng.random(shape) < density
    return sp.csr_matrix(mask.astype(np.float32))


def reference_top_k(P, Q, users, k, exclude):
    """Full sort of every user's scores, one user at a time, excluded items removed."""
    scores = P.astype(np.float64) @ Q.astype(np.float64).T
    dense_excl = None if exclude is None else exclude.toarray() != 0
    items = np.full((len(users), k), -1, dtype=np.int64)
    top_scores = np.full((len(users), k), -np.inf)
    for row, u in enumerate(users):
        candidates = [i for i in range(Q.shape[0]) if dense_excl is None or not dense_excl[u, i]]
        candidates.sort(key=lambda i: (-scores[u, i], i))
        best = candidates[:k]
        items[row, : len(best)] = best
        top_scores[row, : len(best)] = scores[u, best]
    return items, top_scores


def blocks(first: int, widest: int):
    """Shrink the pruning schedule so small test problems go through many blocks."""
    return mock.patch.multiple(_topk, _FIRST_BLOCK=first, _MAX_BLOCK=widest)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_users=st.integers(1, 25),
    n_items=st.integers(1, 70),
    f=st.integers(1, 8),
    k=st.integers(1, 12),
    density=st.sampled_from([0.0, 0.1, 0.5, 0.95]),
    skew=st.sampled_from([0.0, 1.0, 2.5]),
    schedule=st.sampled_from([(1, 1), (2, 8), (5, 5), (512, 1024)]),
    use_exclude=st.booleans(),
)
def test_top_k_matches_full_sort(
    seed, n_users, n_items, f, k, density, skew, schedule, use_exclude
):
    rng = np.random.default_rng(seed)
    P, Q = factors(rng, n_users, n_items, f, skew)
    exclude = random_csr(rng, (n_users, n_items), density) if use_exclude else None
    users = rng.integers(0, n_users, size=rng.integers(0, 2 * n_users + 1))
    with blocks(*schedule):
        items, scores = top_k(P, Q, users, k, exclude=exclude)
    ref_items, ref_scores = reference_top_k(P, Q, users, k, exclude)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert items.shape == scores.shape == (len(users), k)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_pruning_scores_few_cells_and_matches_full_scan():
    """Skewed norms let the bound skip most cells; the answer must not change."""
    rng = np.random.default_rng(7)
    P, Q = factors(rng, 60, 3000, 10, skew=2.0)
    users = np.arange(60)
    exclude = random_csr(rng, (60, 3000), 0.05)
    scanned = []
    original = _topk._scan_block

    def counting(scores, *args):
        scanned.append(scores.size)
        return original(scores, *args)

    with blocks(64, 128), mock.patch.object(_topk, "_scan_block", counting):
        items, _ = top_k(P, Q, users, 5, exclude=exclude)
    assert sum(scanned) < 0.5 * 60 * 3000
    ref_items, _ = reference_top_k(P, Q, users, 5, exclude)
    np.testing.assert_array_equal(items, ref_items)


@pytest.mark.parametrize("schedule", [(1, 1), (2, 4), (512, 1024)])
def test_ties_rank_lower_item_id_first(schedule):
    # Integer factors are exact in float32: items 0, 2, 5 and 7 score exactly 6.
    Q = np.array(
        [[1, 1], [0, 1], [1, 1], [3, 0], [0, 0], [2, 0], [-1, 0], [0, 2], [1, 0]],
        dtype=np.float32,
    )
    P = np.array([[2, 4], [0, 0]], dtype=np.float32)
    with blocks(*schedule):
        items, scores = top_k(P, Q, np.array([0, 1]), 4)
    # user 0 scores: [6, 4, 6, 6, 0, 4, -2, 8, 2] -> 7 (8), then the 6s by id: 0, 2, 3.
    np.testing.assert_array_equal(items[0], [7, 0, 2, 3])
    np.testing.assert_array_equal(scores[0], [8, 6, 6, 6])
    # user 1 scores all 0: plain item order.
    np.testing.assert_array_equal(items[1], [0, 1, 2, 3])


def test_padding_when_exclusion_leaves_fewer_than_k():
    rng = np.random.default_rng(3)
    P, Q = factors(rng, 3, 6, 4, skew=0.0)
    excl = np.zeros((3, 6), dtype=np.float32)
    excl[0, :4] = 1  # 2 candidates left
    excl[1, :] = 1  # none left
    items, scores = top_k(P, Q, np.array([0, 1, 2]), 4, exclude=sp.csr_matrix(excl))
    assert set(items[0, :2]) == {4, 5}
    np.testing.assert_array_equal(items[0, 2:], [-1, -1])
    np.testing.assert_array_equal(items[1], [-1, -1, -1, -1])
    assert np.all(np.isneginf(scores[1])) and np.all(np.isneginf(scores[0, 2:]))
    assert np.all(items[2] >= 0)
    # k beyond the catalogue pads too.
    items, scores = top_k(P, Q, np.array([2]), 9)
    assert sorted(items[0, :6]) == list(range(6))
    np.testing.assert_array_equal(items[0, 6:], [-1, -1, -1])


def test_explicit_zeros_and_duplicates_in_exclude():
    P = np.array([[1.0, 0.0]], dtype=np.float32)
    Q = np.array([[3.0, 0], [2.0, 0], [1.0, 0]], dtype=np.float32)
    # Stored zero at item 0 (not excluded); item 1 stored twice (excluded).
    exclude = sp.csr_matrix(
        (np.array([0.0, 1.0, 1.0]), np.array([0, 1, 1]), np.array([0, 3])), shape=(1, 3)
    )
    items, _ = top_k(P, Q, np.array([0]), 3, exclude=exclude)
    np.testing.assert_array_equal(items[0], [0, 2, -1])


def test_batch_size_does_not_change_results():
    rng = np.random.default_rng(11)
    n_users, n_items = 600, 5000  # 1 MB holds 256 rows of a 1,024-item block: 3 batches
    P, Q = factors(rng, n_users, n_items, 12, skew=1.0)
    exclude = random_csr(rng, (n_users, n_items), 0.01)
    users = rng.permutation(n_users)
    small = top_k(P, Q, users, 10, exclude=exclude, batch_memory_mb=1)
    large = top_k(P, Q, users, 10, exclude=exclude, batch_memory_mb=256)
    assert _topk.rows_per_batch(min(n_items, _topk._MAX_BLOCK), 1) < n_users
    np.testing.assert_array_equal(small[0], large[0])
    np.testing.assert_array_equal(small[1], large[1])
    ref_items, _ = reference_top_k(P, Q, users, 10, exclude)
    np.testing.assert_array_equal(small[0], ref_items)


def test_nan_and_inf_scores_are_never_returned():
    P = np.array([[1.0]], dtype=np.float32)
    Q = np.array([[np.nan], [-np.inf], [2.0], [1.0]], dtype=np.float32)
    items, scores = top_k(P, Q, np.array([0]), 4)
    np.testing.assert_array_equal(items[0], [2, 3, -1, -1])
    np.testing.assert_array_equal(scores[0], [2.0, 1.0, -np.inf, -np.inf])


def test_float64_factors_and_list_users():
    rng = np.random.default_rng(5)
    P, Q = factors(rng, 4, 30, 3, skew=1.0)
    items64, _ = top_k(P.astype(np.float64), Q.astype(np.float64), [3, 1], 5)
    items32, _ = top_k(P, Q, np.array([3, 1]), 5)
    np.testing.assert_array_equal(items64, items32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be"),
        ({"users": np.array([5])}, "users must lie"),
        ({"users": np.array([0.5])}, "integer"),
        ({"exclude": sp.csr_matrix((2, 3))}, "exclude has shape"),
        ({"exclude": np.zeros((3, 4))}, "sparse"),
        ({"Q": np.zeros((4, 3))}, "equal column counts"),
        ({"batch_memory_mb": 0}, "batch_memory_mb"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    args = {
        "P": np.zeros((3, 2), np.float32),
        "Q": np.zeros((4, 2), np.float32),
        "users": np.array([0, 1]),
        "k": 2,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        top_k(**args)
