"""Iterative k-core thresholding: drop sparse users and items until every survivor is dense enough.

The blog recipe removes users with too few items, then items with too few users, and repeats
until a whole pass removes nothing, because each removal can push other users or items under
their threshold. The fixed point is the largest set of users and items in which every user has
at least `min_items_per_user` of the kept items and every item at least `min_users_per_item` of
the kept users (the union of two such sets is again one, so the largest is unique and does not
depend on the order of removals).

The numerical core works on the integer codes with `np.bincount` (one loop iteration per pass,
never per row); the result is re-coded once at the end with :meth:`Interactions.select`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mfstudy.data import Interactions
from mfstudy.errors import DataError

__all__ = ["ThresholdStats", "kcore_mask", "threshold"]


@dataclass(frozen=True)
class ThresholdStats:
    """Sizes before and after thresholding, as the blog printed them.

    `sparsity_*_pct` is `100 * interactions / (users * items)`, the share of filled cells
    (the blog calls it sparsity although it is the density). `passes` counts the full
    user-then-item passes run, including the final one that removed nothing (the recipe's loop
    count).
    """

    users_before: int
    items_before: int
    interactions_before: int
    sparsity_before_pct: float
    users_after: int
    items_after: int
    interactions_after: int
    sparsity_after_pct: float
    passes: int

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def kcore_mask(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    min_items_per_user: int,
    min_users_per_item: int,
) -> tuple[np.ndarray, int]:
    """Boolean mask of the entries that survive the alternating k-core, and the pass count.

    Each pass works on the surviving entries only, so its cost shrinks with the data; a pass
    is two `bincount`s and two gathers.
    """
    alive = np.arange(len(users))  # indices of surviving entries
    passes = 0
    while True:
        passes += 1
        start = len(alive)
        u = users[alive]
        user_ok = np.bincount(u, minlength=n_users) >= min_items_per_user
        alive = alive[user_ok[u]]
        i = items[alive]
        item_ok = np.bincount(i, minlength=n_items) >= min_users_per_item
        alive = alive[item_ok[i]]
        if len(alive) == start:
            break
    keep = np.zeros(len(users), dtype=bool)
    keep[alive] = True
    return keep, passes


def threshold(
    inter: Interactions, min_items_per_user: int, min_users_per_item: int
) -> tuple[Interactions, ThresholdStats]:
    """Keep the largest subset where every user has >= `min_items_per_user` items and every
    item >= `min_users_per_item` users, re-coded densely.

    Raises :class:`DataError` when nothing survives, naming the thresholds and the start size.
    """
    keep, passes = kcore_mask(
        inter.users,
        inter.items,
        inter.n_users,
        inter.n_items,
        min_items_per_user,
        min_users_per_item,
    )
    if not keep.any():
        raise DataError(
            f"no interactions left after thresholding at {min_items_per_user} items per user "
            f"and {min_users_per_item} users per item (started from {inter.n_users:,} users, "
            f"{inter.n_items:,} items)"
        )
    out = inter.select(keep)
    stats = ThresholdStats(
        users_before=inter.n_users,
        items_before=inter.n_items,
        interactions_before=inter.nnz,
        sparsity_before_pct=inter.sparsity,
        users_after=out.n_users,
        items_after=out.n_items,
        interactions_after=out.nnz,
        sparsity_after_pct=out.sparsity,
        passes=passes,
    )
    return out, stats
