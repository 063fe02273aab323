"""A fitted model plus its raw-id maps: raw ids in, raw ids and names out.

The model works on dense indices; users of the CLI and of a served model speak the dataset's
raw ids. Raw ids are compared as strings (that is how they travel through CSV files, command
lines and JSON), so `196` and `"196"` name the same user.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mfstudy.models import Recommender
from mfstudy.tracking._errors import UnknownIdError

__all__ = ["RECOMMENDATION_COLUMNS", "LoadedRecommender", "read_id_maps", "write_id_maps"]

_log = logging.getLogger(__name__)

#: Columns of a batch recommendation frame (one row per user and rank).
RECOMMENDATION_COLUMNS = ["user_id", "rank", "item_id", "item_name", "score"]
USERS_CSV = "users.csv"
ITEMS_CSV = "items.csv"


def _as_str_array(values: Sequence[object] | np.ndarray) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def write_id_maps(
    folder: Path,
    user_ids: Sequence[object] | np.ndarray,
    item_ids: Sequence[object] | np.ndarray,
    item_names: Sequence[object] | np.ndarray | None,
) -> tuple[Path, Path]:
    """`users.csv` (user_id) and `items.csv` (item_id, item_name), row i = model index i."""
    folder.mkdir(parents=True, exist_ok=True)
    items = _as_str_array(item_ids)
    names = items if item_names is None else _as_str_array(item_names)
    users_path, items_path = folder / USERS_CSV, folder / ITEMS_CSV
    pd.DataFrame({"user_id": _as_str_array(user_ids)}).to_csv(users_path, index=False)
    pd.DataFrame({"item_id": items, "item_name": names}).to_csv(items_path, index=False)
    return users_path, items_path


def read_id_maps(users_csv: Path, items_csv: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`write_id_maps`: (user_ids, item_ids, item_names) as string arrays."""
    opts = {"dtype": str, "keep_default_na": False}
    users = pd.read_csv(users_csv, **opts)["user_id"].to_numpy(dtype=object)
    items = pd.read_csv(items_csv, **opts)
    return users, items["item_id"].to_numpy(dtype=object), items["item_name"].to_numpy(dtype=object)


class LoadedRecommender:
    """What the CLI calls for `recommend --user ID` and `recommend --similar-to ITEM`."""

    def __init__(
        self,
        model: Recommender,
        user_ids: Sequence[object] | np.ndarray,
        item_ids: Sequence[object] | np.ndarray,
        item_names: Sequence[object] | np.ndarray | None = None,
        source: str = "the model",
    ) -> None:
        p, q = model.user_factors_, model.item_factors_
        self.model = model
        self.user_ids = _as_str_array(user_ids)
        self.item_ids = _as_str_array(item_ids)
        self.item_names = self.item_ids if item_names is None else _as_str_array(item_names)
        self.source = source
        if len(self.user_ids) != p.shape[0]:
            raise ValueError(f"{len(self.user_ids)} user ids for a model of {p.shape[0]} users")
        if not len(self.item_ids) == len(self.item_names) == q.shape[0]:
            raise ValueError(
                f"{len(self.item_ids)} item ids / {len(self.item_names)} names for a model of "
                f"{q.shape[0]} items"
            )
        self._users = pd.Index(self.user_ids)
        self._items = pd.Index(self.item_ids)
        if not (self._users.is_unique and self._items.is_unique):
            raise ValueError("raw user and item ids must be unique")

    @classmethod
    def from_folder(
        cls, model_dir: Path, users_csv: Path, items_csv: Path, source: str = ""
    ) -> LoadedRecommender:
        """Load a saved `Recommender` folder and the id maps written by `write_id_maps`."""
        users, items, names = read_id_maps(users_csv, items_csv)
        return cls(Recommender.load(model_dir), users, items, names, source or str(model_dir))

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    # ------------------------------------------------------------------ single queries (CLI)

    def recommend(self, user_id: object, k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-`k` items for one raw user id: columns rank, item_id, item_name, score.

        Raises :class:`UnknownIdError` (one line) for a user the model was not trained on.
        """
        frame, unknown = self.recommend_many([user_id], k, exclude_seen)
        if unknown:
            raise UnknownIdError(
                f"user {str(user_id)!r} is not known to {self.source} "
                f"({self.n_users} users; ids are compared as strings)"
            )
        return frame.drop(columns="user_id").reset_index(drop=True)

    def similar_to(self, item_id: object, k: int = 10) -> pd.DataFrame:
        """The `k` items most similar to one raw item id: rank, item_id, item_name, score."""
        idx = self._items.get_indexer([str(item_id)])
        if idx[0] < 0:
            raise UnknownIdError(
                f"item {str(item_id)!r} is not known to {self.source} ({self.n_items} items)"
            )
        k = min(int(k), self.n_items - 1)
        if k < 1:
            return pd.DataFrame({c: [] for c in ["rank", "item_id", "item_name", "score"]})
        items, scores = self.model.similar_items(idx, k)
        return self._rows(np.zeros(1, dtype=np.int64), items, scores, ["?"])[
            ["rank", "item_id", "item_name", "score"]
        ]

    # ------------------------------------------------------------------ batch (pyfunc)

    def recommend_many(
        self,
        user_ids: Sequence[object] | np.ndarray,
        k: int | Sequence[int] | np.ndarray = 10,
        exclude_seen: bool = True,
    ) -> tuple[pd.DataFrame, list[str]]:
        """Recommendations for many raw users at once, and the ids that are unknown.

        `k` is one number or one per user. Unknown users get no rows (they are returned in the
        second element, so the caller decides whether that is an error).
        """
        query = _as_str_array(user_ids)
        ks = np.broadcast_to(np.asarray(k, dtype=np.int64), query.shape)
        idx = self._users.get_indexer(query)
        known = idx >= 0
        unknown = [str(u) for u in query[~known]]
        kmax = int(min(ks[known].max(initial=0), self.n_items))
        if kmax <= 0 or not known.any():
            return pd.DataFrame({c: [] for c in RECOMMENDATION_COLUMNS}), unknown
        items, scores = self.model.recommend(idx[known], kmax, exclude_seen=exclude_seen)
        frame = self._rows(np.arange(known.sum()), items, scores, query[known])
        # Per-user k: keep each user's first k ranks.
        frame = frame[frame["rank"].to_numpy() <= ks[known][frame.pop("_row").to_numpy()]]
        return frame.reset_index(drop=True), unknown

    def _rows(
        self,
        rows: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray,
        row_users: Sequence[object] | np.ndarray,
    ) -> pd.DataFrame:
        """Long frame from (n, k) top-k arrays, dropping the -1 padding of short rows."""
        items = np.asarray(items)
        n, k = items.shape
        row = np.repeat(rows, k)
        flat_items = items.ravel()
        keep = flat_items >= 0
        row, flat_items = row[keep], flat_items[keep]
        return pd.DataFrame(
            {
                "user_id": np.asarray(row_users, dtype=object)[row],
                "rank": np.tile(np.arange(1, k + 1), n)[keep],
                "item_id": self.item_ids[flat_items],
                "item_name": self.item_names[flat_items],
                "score": np.asarray(scores, dtype=np.float64).ravel()[keep],
                "_row": row,
            }
        )
