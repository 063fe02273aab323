"""Train/test splits of a users x items interaction matrix.

Every split keeps the global shape, so user and item codes mean the same thing in every part,
and every part is a float32 CSR with sorted indices whose stored entries are a subset of the
input's (values preserved). The parts of one split are disjoint and add up to the input.

All randomness comes from `np.random.default_rng(seed)`; the same seed gives the same split.
The numerical core is vectorized: an entry is moved by computing a boolean mask over the stored
entries (random keys ranked within each row with one `lexsort`), and the parts are rebuilt from
the masked CSR arrays, never through per-user Python loops or `lil_matrix` assignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mfstudy.config import (
    NewUserSplitConfig,
    RandomSplitConfig,
    SplitConfig,
    UserHoldoutSplitConfig,
)
from mfstudy.errors import SplitError

__all__ = [
    "HoldoutSplit",
    "NewUserSplit",
    "RandomSplit",
    "Split",
    "make_split",
    "new_user_split",
    "random_split",
    "user_holdout",
]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class HoldoutSplit:
    """The blog's split: `test` holds `k` interactions of each user in `users`, `train` the rest.

    `users` is the sorted int array of held-out users; every other row of `train` equals the
    input row and is empty in `test`.
    """

    train: sp.csr_matrix
    test: sp.csr_matrix
    users: np.ndarray
    eligible_users: int
    """How many users had enough interactions to be held out."""

    def summary(self) -> dict[str, int]:
        return {
            "train_interactions": int(self.train.nnz),
            "test_interactions": int(self.test.nnz),
            "eligible_users": self.eligible_users,
            "heldout_users": len(self.users),
        }


@dataclass(frozen=True, eq=False)
class NewUserSplit:
    """Users in `new_users` are absent from `train`; their interactions are split between
    `foldin` (given to the model to fold them in) and `test` (scored afterwards)."""

    train: sp.csr_matrix
    foldin: sp.csr_matrix
    test: sp.csr_matrix
    new_users: np.ndarray
    eligible_users: int
    """How many users had enough interactions to be new users."""

    def summary(self) -> dict[str, int]:
        return {
            "train_interactions": int(self.train.nnz),
            "foldin_interactions": int(self.foldin.nnz),
            "test_interactions": int(self.test.nnz),
            "eligible_users": self.eligible_users,
            "new_users": len(self.new_users),
        }


@dataclass(frozen=True, eq=False)
class RandomSplit:
    """A uniformly random share of all interactions in `test`, the rest in `train`."""

    train: sp.csr_matrix
    test: sp.csr_matrix

    def summary(self) -> dict[str, int]:
        return {"train_interactions": int(self.train.nnz), "test_interactions": int(self.test.nnz)}


Split = HoldoutSplit | NewUserSplit | RandomSplit


# --------------------------------------------------------------------------- numerical core


def _as_csr(full: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """The input as float32 CSR with canonical (sorted, summed) indices, never mutating it."""
    m = sp.csr_matrix(full, dtype=np.float32)  # shares the arrays when already float32 CSR
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()  # also sorts indices
    return m


def _entry_rows(m: sp.csr_matrix) -> np.ndarray:
    """Row index of every stored entry (the `row` array of the COO form)."""
    return np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))


def _subset(m: sp.csr_matrix, rows: np.ndarray, mask: np.ndarray) -> sp.csr_matrix:
    """CSR of the stored entries where `mask` is true; same shape, indices stay sorted because
    the mask keeps the order of the input's entries within each row."""
    counts = np.bincount(rows[mask], minlength=m.shape[0])
    indptr = np.zeros(m.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    out = sp.csr_matrix(
        (m.data[mask], m.indices[mask], indptr), shape=m.shape, dtype=np.float32, copy=False
    )
    out.has_sorted_indices = True
    return out


def _random_rank_in_row(
    m: sp.csr_matrix, rows: np.ndarray, picked: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the stored entries of the `picked` rows and a uniformly random rank of each
    entry within its row (0 .. n_row - 1), i.e. a random permutation of every picked row.

    Ranking random keys per row with one `lexsort` replaces the recipe's per-user
    `np.random.choice(row.indices, k, replace=False)`.
    """
    is_picked = np.zeros(m.shape[0], dtype=bool)
    is_picked[picked] = True
    pos = np.flatnonzero(is_picked[rows])  # entries of picked rows, grouped by row in order
    keys = rng.random(len(pos))
    order = np.lexsort((keys, rows[pos]))  # by row, then by random key
    counts = np.diff(m.indptr)[np.sort(picked)]
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.empty(len(pos), dtype=np.int64)
    rank[order] = np.arange(len(pos)) - starts
    return pos, rank


def _fmt_fraction(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------- splits


def user_holdout(
    full: sp.spmatrix | sp.sparray,
    fraction: float,
    k: int,
    min_interactions: int | None = None,
    *,
    seed: int,
) -> HoldoutSplit:
    """The blog's split: move `k` random interactions of some users from train to test.

    As in the recipe, the number of held-out users is `floor(fraction * n_users)` where
    `n_users` counts ALL users (rows), but they are drawn without replacement among the
    eligible users only: those with at least `min_interactions` interactions (default `2 * k`,
    so every held-out user keeps at least as many in train as it gives to test). A user needs at
    least `k` interactions to give `k`, so eligibility is `max(min_interactions, k)`.

    Raises :class:`SplitError` when fewer users are eligible than needed (including `k` larger
    than every user's count) or when the fraction rounds down to no user at all.
    """
    if not 0.0 < fraction <= 1.0:
        raise SplitError(f"user_holdout fraction must be in (0, 1], got {fraction}")
    if k < 1:
        raise SplitError(f"user_holdout k must be at least 1, got {k}")
    m = _as_csr(full)
    n_users = m.shape[0]
    threshold = 2 * k if min_interactions is None else max(int(min_interactions), k)
    n_needed = math.floor(fraction * n_users)
    if n_needed == 0:
        raise SplitError(
            f"fraction {_fmt_fraction(fraction)} of {n_users:,} users holds out no user; "
            "raise the fraction"
        )
    counts = np.diff(m.indptr)
    eligible = np.flatnonzero(counts >= threshold)
    if len(eligible) < n_needed:
        raise SplitError(
            f"Not enough users with >= {threshold} interactions for fraction "
            f"{_fmt_fraction(fraction)}: need {n_needed:,}, have {len(eligible):,}"
        )
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(eligible, size=n_needed, replace=False))
    rows = _entry_rows(m)
    pos, rank = _random_rank_in_row(m, rows, users, rng)
    to_test = np.zeros(m.nnz, dtype=bool)
    to_test[pos[rank < k]] = True
    return HoldoutSplit(
        train=_subset(m, rows, ~to_test),
        test=_subset(m, rows, to_test),
        users=users.astype(np.int64),
        eligible_users=len(eligible),
    )


def new_user_split(
    full: sp.spmatrix | sp.sparray,
    frac_new_users: float,
    foldin_fraction: float = 0.5,
    min_interactions: int = 2,
    *,
    seed: int,
) -> NewUserSplit:
    """Hold `round(frac_new_users * n_users)` users out of training (the `matrix-factorization`
    package's `train_update_test_split`), drawn among users with >= `min_interactions`.

    Each new user with `n` interactions gives `round(foldin_fraction * n)` of them, clipped to
    `1 .. n - 1`, to `foldin` and the rest to `test`, so it can be both folded in and scored.
    Raises :class:`SplitError` when too few users are eligible or no training user remains.
    """
    if not 0.0 < frac_new_users < 1.0:
        raise SplitError(f"frac_new_users must be in (0, 1), got {frac_new_users}")
    if not 0.0 < foldin_fraction < 1.0:
        raise SplitError(f"foldin_fraction must be in (0, 1), got {foldin_fraction}")
    if min_interactions < 2:
        raise SplitError(
            f"min_interactions must be at least 2 (one fold-in and one test interaction), "
            f"got {min_interactions}"
        )
    m = _as_csr(full)
    n_users = m.shape[0]
    n_new = round(frac_new_users * n_users)
    if n_new == 0:
        raise SplitError(
            f"frac_new_users {_fmt_fraction(frac_new_users)} of {n_users:,} users makes no new "
            "user; raise the fraction"
        )
    counts = np.diff(m.indptr)
    if n_new >= np.count_nonzero(counts):
        raise SplitError(
            f"frac_new_users {_fmt_fraction(frac_new_users)} of {n_users:,} users leaves no user "
            "with interactions for training"
        )
    eligible = np.flatnonzero(counts >= min_interactions)
    if len(eligible) < n_new:
        raise SplitError(
            f"Not enough users with >= {min_interactions} interactions for frac_new_users "
            f"{_fmt_fraction(frac_new_users)}: need {n_new:,}, have {len(eligible):,}"
        )
    rng = np.random.default_rng(seed)
    new_users = np.sort(rng.choice(eligible, size=n_new, replace=False))
    rows = _entry_rows(m)
    pos, rank = _random_rank_in_row(m, rows, new_users, rng)
    # Round half up (not half to even) so the fold-in size is a plain function of n.
    n_row = counts[rows[pos]]
    n_fold = np.clip(np.floor(foldin_fraction * n_row + 0.5).astype(np.int64), 1, n_row - 1)
    is_new = np.zeros(m.nnz, dtype=bool)
    is_new[pos] = True
    to_foldin = np.zeros(m.nnz, dtype=bool)
    to_foldin[pos[rank < n_fold]] = True
    return NewUserSplit(
        train=_subset(m, rows, ~is_new),
        foldin=_subset(m, rows, to_foldin),
        test=_subset(m, rows, is_new & ~to_foldin),
        new_users=new_users.astype(np.int64),
        eligible_users=len(eligible),
    )


def random_split(full: sp.spmatrix | sp.sparray, test_fraction: float, seed: int) -> RandomSplit:
    """Move a uniformly random `round(test_fraction * nnz)` of all interactions to test (the
    second source's 80/20 split of ratings for RMSE).

    Raises :class:`SplitError` when the test or the train part would be empty.
    """
    if not 0.0 < test_fraction < 1.0:
        raise SplitError(f"test_fraction must be in (0, 1), got {test_fraction}")
    m = _as_csr(full)
    n_test = round(test_fraction * m.nnz)
    if n_test == 0 or n_test == m.nnz:
        raise SplitError(
            f"test_fraction {_fmt_fraction(test_fraction)} of {m.nnz:,} interactions leaves "
            f"{'no test' if n_test == 0 else 'no training'} interaction"
        )
    rng = np.random.default_rng(seed)
    to_test = np.zeros(m.nnz, dtype=bool)
    to_test[rng.choice(m.nnz, size=n_test, replace=False)] = True
    rows = _entry_rows(m)
    return RandomSplit(train=_subset(m, rows, ~to_test), test=_subset(m, rows, to_test))


def make_split(full: sp.spmatrix | sp.sparray, cfg: SplitConfig, seed: int) -> Split:
    """Dispatch on `cfg.kind` to the split it configures.

    A :class:`SplitError` is re-raised prefixed with the `split.*` settings that caused it
    (and, for the per-user splits, the largest interaction count of any user), so the message
    names the keys to change rather than only derived numbers such as `>= 800 interactions`.
    """
    try:
        if isinstance(cfg, UserHoldoutSplitConfig):
            return user_holdout(full, cfg.fraction, cfg.k, cfg.min_interactions, seed=seed)
        if isinstance(cfg, NewUserSplitConfig):
            return new_user_split(
                full, cfg.frac_new_users, cfg.foldin_fraction, cfg.min_interactions, seed=seed
            )
        if isinstance(cfg, RandomSplitConfig):
            return random_split(full, cfg.test_fraction, seed)
    except SplitError as err:
        settings = ", ".join(
            f"split.{key}={value}"
            for key, value in cfg.model_dump().items()
            if key != "kind" and value is not None
        )
        most = ""
        if not isinstance(cfg, RandomSplitConfig) and full.shape[0] > 0:
            counts = np.diff(_as_csr(full).indptr)
            most = f" (users have at most {int(counts.max()):,} interactions)"
        raise SplitError(f"{settings}: {err}{most}") from None
    raise TypeError(f"unknown split config {type(cfg).__name__}")
