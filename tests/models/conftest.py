"""Checkerboard data: user groups x item groups with a known answer, for every model family.

Users of group g like (binary) or rate 5 (ratings) every item of item group g except `holdout`
of them, which are held out. In the rating version they also rate a random ~30% of the other
groups' items 1, so an explicit model sees both what users like and what they do not. A model
that learns anything must rank each user's held-out items above every other-group item.
User and item labels are shuffled so that no model can pass by index order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
import scipy.sparse as sp

Kind = Literal["binary", "ratings"]

LIKED = 5.0
DISLIKED = 1.0
CROSS_RATED = 0.3


@dataclass(frozen=True)
class Checkerboard:
    """A checkerboard training matrix, its held-out items and the group labels."""

    kind: Kind
    train: sp.csr_matrix
    heldout: sp.csr_matrix
    """users x items, 1 where an own-group item was held out of `train`."""
    user_group: np.ndarray
    item_group: np.ndarray
    n_groups: int
    holdout: int
    seed: int

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def new_user(self, group: int, seed: int = 1) -> tuple[sp.csr_matrix, np.ndarray]:
        """A 1 x items row of a new user of `group`, and the own-group items left out of it."""
        rng = np.random.default_rng(seed)
        own = rng.permutation(np.flatnonzero(self.item_group == group))
        left_out, liked = np.sort(own[: self.holdout]), own[self.holdout :]
        row = np.zeros(self.n_items, dtype=np.float32)
        row[liked] = 1.0 if self.kind == "binary" else LIKED
        if self.kind == "ratings":
            other = np.flatnonzero(self.item_group != group)
            row[other[rng.random(len(other)) < CROSS_RATED]] = DISLIKED
        return sp.csr_matrix(row[None, :]), left_out


def make_checkerboard(
    kind: Kind,
    n_groups: int = 3,
    users_per_group: int = 20,
    items_per_group: int = 12,
    holdout: int = 2,
    seed: int = 0,
) -> Checkerboard:
    """Build the checkerboard (vectorized; tiny, so a dense build is fine in tests)."""
    rng = np.random.default_rng(seed)
    user_group = rng.permutation(np.repeat(np.arange(n_groups), users_per_group))
    item_group = rng.permutation(np.repeat(np.arange(n_groups), items_per_group))
    n_users, n_items = len(user_group), len(item_group)

    own = user_group[:, None] == item_group[None, :]
    # Held-out items: the `holdout` own-group items with the smallest random keys per user.
    keys = np.where(own, rng.random((n_users, n_items)), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    held = own & (rank < holdout)

    dense = np.zeros((n_users, n_items), dtype=np.float32)
    dense[own & ~held] = 1.0 if kind == "binary" else LIKED
    if kind == "ratings":
        dense[~own & (rng.random((n_users, n_items)) < CROSS_RATED)] = DISLIKED
    return Checkerboard(
        kind=kind,
        train=sp.csr_matrix(dense),
        heldout=sp.csr_matrix(held.astype(np.float32)),
        user_group=user_group,
        item_group=item_group,
        n_groups=n_groups,
        holdout=holdout,
        seed=seed,
    )


@pytest.fixture(scope="session")
def checkerboard() -> dict[str, Checkerboard]:
    """Both versions: `binary` likes (implicit models) and `ratings` 5/1 (explicit models)."""
    return {"binary": make_checkerboard("binary"), "ratings": make_checkerboard("ratings")}
