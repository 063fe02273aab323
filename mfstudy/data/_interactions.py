"""Interactions as arrays: raw (as read) and encoded (dense integer codes, ready for CSR)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfstudy.errors import DataError

__all__ = ["CleanStats", "Interactions", "RawInteractions", "clean"]


@dataclass(frozen=True)
class RawInteractions:
    """Rows as read from a source, before de-duplication.

    `frame` has the columns `user`, `item` and `weight` (float64, validated finite and
    non-negative by the loader). `item_names` maps raw item id to a display name.
    """

    frame: pd.DataFrame
    source: str
    item_names: pd.Series | None = None

    @property
    def rows_read(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class Interactions:
    """Encoded interactions: one entry per distinct (user, item) with its weight.

    `users` and `items` are int32 codes into `user_ids` and `item_ids` (the raw ids, in code
    order). Every code in range occurs at least once, so the matrix has no empty rows/columns.
    """

    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_names: np.ndarray | None = field(default=None)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def nnz(self) -> int:
        return len(self.users)

    @property
    def sparsity(self) -> float:
        """Percentage of the users x items cells that hold an interaction (the blog's figure)."""
        cells = self.n_users * self.n_items
        return 100.0 * self.nnz / cells if cells else 0.0

    def to_csr(self) -> sp.csr_matrix:
        """The users x items float32 CSR matrix, built in one vectorized call."""
        m = sp.csr_matrix(
            (self.weights.astype(np.float32, copy=False), (self.users, self.items)),
            shape=(self.n_users, self.n_items),
            dtype=np.float32,
        )
        m.sort_indices()
        return m

    def select(self, keep: np.ndarray) -> Interactions:
        """Keep the entries where the boolean mask `keep` is true, re-coding users and items
        so codes stay dense (ids that lost every entry disappear)."""
        users, items = self.users[keep], self.items[keep]
        ucodes, unew = _recode(users, self.n_users)
        icodes, inew = _recode(items, self.n_items)
        return Interactions(
            users=unew,
            items=inew,
            weights=self.weights[keep],
            user_ids=self.user_ids[ucodes],
            item_ids=self.item_ids[icodes],
            item_names=None if self.item_names is None else self.item_names[icodes],
        )

    def summary(self) -> dict[str, float | int]:
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.nnz,
            "sparsity_pct": self.sparsity,
        }


def _recode(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The codes still present (sorted) and each entry's new dense code, as
    `np.unique(codes, return_inverse=True)` gives them, in linear time: codes are already
    dense in [0, n), so a presence mask and its running count replace the sort (6x faster on
    50M entries)."""
    present = np.zeros(n, dtype=bool)
    present[codes] = True
    remap = np.cumsum(present, dtype=np.int64) - 1
    return np.flatnonzero(present), remap[codes].astype(np.int32)


@dataclass(frozen=True)
class CleanStats:
    rows_read: int
    duplicates_dropped: int
    interactions: int


def clean(raw: RawInteractions, weighting: str) -> tuple[Interactions, CleanStats]:
    """Drop duplicate rows, merge repeated (user, item) pairs by `weighting`, and encode.

    Duplicates are identical rows (user, item and weight), as the blog's `drop_duplicates`;
    they are dropped before merging so `sum` does not count a logging glitch twice.
    """
    frame = raw.frame
    if len(frame) == 0:
        raise DataError(f"{raw.source}: no interactions (the file is empty)")
    dup = frame.duplicated(keep="first").to_numpy()
    n_dup = int(dup.sum())
    if n_dup:
        frame = frame.loc[~dup]

    # Codes sorted by raw id make the encoding independent of row order in the file.
    ucode, user_ids = pd.factorize(frame["user"], sort=True)
    icode, item_ids = pd.factorize(frame["item"], sort=True)
    n_items = len(item_ids)
    key = ucode.astype(np.int64) * n_items + icode
    w = frame["weight"].to_numpy(dtype=np.float64)

    uniq, inv = np.unique(key, return_inverse=True)
    if weighting == "binary":
        merged = np.ones(len(uniq), dtype=np.float64)
    elif weighting == "sum":
        merged = np.bincount(inv, weights=w, minlength=len(uniq))
    elif weighting == "mean":
        merged = np.bincount(inv, weights=w, minlength=len(uniq)) / np.bincount(
            inv, minlength=len(uniq)
        )
    elif weighting == "max":
        merged = np.full(len(uniq), -np.inf)
        np.maximum.at(merged, inv, w)
    else:
        raise DataError(f"unknown weighting {weighting!r}: expected binary, sum, max or mean")

    names = None
    if raw.item_names is not None:
        looked_up = raw.item_names.reindex(pd.Index(item_ids))
        names = looked_up.fillna("").astype(str).to_numpy(dtype=object)
    inter = Interactions(
        users=(uniq // n_items).astype(np.int32),
        items=(uniq % n_items).astype(np.int32),
        weights=merged.astype(np.float32),
        user_ids=np.asarray(user_ids),
        item_ids=np.asarray(item_ids),
        item_names=names,
    )
    return inter, CleanStats(
        rows_read=raw.rows_read, duplicates_dropped=n_dup, interactions=inter.nnz
    )
