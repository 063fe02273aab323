"""The contract every model of the study fulfils.

A model is an estimator in the scikit-learn sense: `__init__` only stores hyperparameters (no
work, no random draws), `fit` learns from a users x items CSR matrix and returns `self`, and
every random choice flows from the `seed` hyperparameter.

After `fit`:

- `user_factors_` (n_users x f) and `item_factors_` (n_items x f) are float32 arrays;
- `n_epochs_` is the number of epochs actually run (fewer than asked when stopped early);
- `scoring_factors()` returns `(P, Q)` with `score(u, i) == P[u] @ Q[i]` before any clipping, so
  metrics rank and compute MSE from two matrices whatever the model (biases are folded into
  extra columns);
- `seen_` is the CSR of training interactions, used to exclude seen items when recommending.

`fit(train, callback=cb)` calls `cb(epoch, model)` after every epoch (`epoch` counts from 1) with
the model in the state reached by that epoch. A truthy return stops training after that epoch;
an exception raised by the callback (e.g. Optuna's `TrialPruned`) propagates out of `fit`, the
model left as of the last completed epoch.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

__all__ = ["Callback", "DivergedError", "Recommender"]

Callback = Callable[[int, "Recommender"], bool | None]


class DivergedError(ArithmeticError):
    """Training produced NaN or infinite factors or loss (e.g. a too large learning rate).

    The study records the trial as failed; a model that raised this is never registered.
    """


class Recommender(ABC):
    """Base class of all models; subclasses implement `_fit`, `_fold_in` and the state I/O."""

    #: Name used in configs (`model: wrmf`) and in saved files.
    family: ClassVar[str]

    user_factors_: np.ndarray
    item_factors_: np.ndarray
    seen_: sp.csr_matrix
    n_epochs_: int

    # ------------------------------------------------------------------ hyperparameters

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to `__init__` (JSON-serialisable)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    @abstractmethod
    def check_params(self) -> None:
        """Raise :class:`~mfstudy.errors.ConfigError` (one line naming the parameter) for a
        hyperparameter this model cannot train with. `fit` calls it first; a study calls it
        for each end of every searched range, on a model built with that value alone, before
        any trial runs."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ training

    @abstractmethod
    def fit(self, train: sp.csr_matrix, callback: Callback | None = None) -> Recommender:
        """Learn from the users x items matrix `train`; see the module docstring."""

    def scoring_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """`(P, Q)` with raw score(u, i) = P[u] @ Q[i]; plain factors unless overridden."""
        self._check_fitted()
        return self.user_factors_, self.item_factors_

    # ------------------------------------------------------------------ inference

    def score(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Predicted values for the pairs (user_ids[j], item_ids[j])."""
        p, q = self.scoring_factors()
        u = np.asarray(user_ids, dtype=np.int64)
        i = np.asarray(item_ids, dtype=np.int64)
        return np.einsum("ij,ij->i", p[u], q[i])

    def recommend(
        self, user_ids: np.ndarray, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` items and scores per user, best first, shape (len(user_ids), k).

        With `exclude_seen`, training items are never returned; rows with fewer than `k`
        candidates are padded with item -1 and score -inf.
        """
        from mfstudy.metrics import top_k

        p, q = self.scoring_factors()
        users = np.asarray(user_ids, dtype=np.int64)
        return top_k(p, q, users, k, exclude=self.seen_ if exclude_seen else None)

    def similar_items(self, item_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` items most cosine-similar to each item (itself excluded), best first."""
        from mfstudy.metrics import top_k

        self._check_fitted()
        q = self.item_factors_.astype(np.float32)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        qn = q / np.where(norms > 0, norms, 1.0)
        items = np.asarray(item_ids, dtype=np.int64)
        self_mask = sp.csr_matrix(
            (np.ones(len(items), dtype=np.float32), (np.arange(len(items)), items)),
            shape=(len(items), q.shape[0]),
        )
        # Rows of qn[items] play the role of users; the identity mask removes each item itself.
        return top_k(qn[items], qn, np.arange(len(items)), k, exclude=self_mask)

    def update_users(self, rows: sp.csr_matrix) -> np.ndarray:
        """Fold in new users (rows over the same items) with item factors fixed.

        Appends their factors and interactions; returns the new users' indices.
        """
        self._check_fitted()
        rows = sp.csr_matrix(rows, dtype=np.float32, copy=True)
        # A stored zero is no interaction: it must not count as seen.
        rows.eliminate_zeros()
        if rows.shape[1] != self.item_factors_.shape[0]:
            raise ValueError(
                f"update_users: rows have {rows.shape[1]} items, model has "
                f"{self.item_factors_.shape[0]}"
            )
        start = self.user_factors_.shape[0]
        self._fold_in(rows)
        self.seen_ = sp.vstack([self.seen_, rows], format="csr")
        return np.arange(start, start + rows.shape[0])

    @abstractmethod
    def _fold_in(self, rows: sp.csr_matrix) -> None:
        """Append the learned state of the users in `rows`, item state unchanged."""

    # ------------------------------------------------------------------ persistence

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Learned arrays to save (besides `seen_`)."""

    @abstractmethod
    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `_state` returned."""

    def save(self, path: str | Path) -> Path:
        """Write hyperparameters (JSON) and learned arrays (NumPy) into the folder `path`."""
        self._check_fitted()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"family": self.family, "params": self.get_params(), "n_epochs": self.n_epochs_}
        (out / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        np.savez(out / "state.npz", **self._state())
        sp.save_npz(out / "seen.npz", self.seen_)
        return out

    @staticmethod
    def load(path: str | Path) -> Recommender:
        """Rebuild a model saved by `save` (no pickle: hyperparameters and arrays only)."""
        from mfstudy.models import model_class

        src = Path(path)
        meta = json.loads((src / "model.json").read_text())
        model = model_class(meta["family"])(**meta["params"])
        with np.load(src / "state.npz", allow_pickle=False) as z:
            model._set_state({k: z[k] for k in z.files})
        model.seen_ = sp.load_npz(src / "seen.npz").tocsr()
        model.n_epochs_ = int(meta["n_epochs"])
        return model

    # ------------------------------------------------------------------ helpers

    def _check_fitted(self) -> None:
        if not hasattr(self, "item_factors_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
