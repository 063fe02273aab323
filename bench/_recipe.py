"""The blog's reference evaluation (Ethan Rosenthal's WRMF-on-Sketchfab learning curves), ported.

Kept deliberately as the blog writes it -- dense predictions for every user, `np.argsort` per
held-out user, set intersections, MSE over densified rows -- so benchmarks can measure
`mfstudy.metrics` against it and check that both give the same numbers. Not for production use:
it builds a users x items dense matrix.

One deviation in the recipe's favour: the blog recomputes `user_vecs.dot(item_vecs.T)` inside
every metric call; `evaluate_epoch` computes it once and shares it between the four metrics.
Random choices take an explicit `np.random.Generator` instead of the global NumPy state.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["calculate_mse", "evaluate_epoch", "precision_at_k", "predict_all", "train_test_split"]


def train_test_split(
    ratings: sp.csr_matrix, split_count: int, fraction: float, rng: np.random.Generator
) -> tuple[sp.csr_matrix, sp.csr_matrix, list[int]]:
    """The blog's user holdout: `fraction` of all users, drawn among users with at least
    2 * split_count interactions, each moves `split_count` random items from train to test."""
    train = ratings.copy().tocoo()
    test = sp.lil_matrix(train.shape)
    eligible = np.where(np.bincount(train.row) >= split_count * 2)[0]
    user_index = rng.choice(
        eligible, replace=False, size=int(np.floor(fraction * train.shape[0]))
    ).tolist()
    train = train.tolil()
    for user in user_index:
        test_ratings = rng.choice(ratings.getrow(user).indices, size=split_count, replace=False)
        train[user, test_ratings] = 0.0
        test[user, test_ratings] = ratings[user, test_ratings]
    train_csr = train.tocsr()
    train_csr.eliminate_zeros()
    return train_csr, test.tocsr(), user_index


def predict_all(user_vecs: np.ndarray, item_vecs: np.ndarray) -> np.ndarray:
    """Dense predictions for every user and item (the blog's `predict_for_customers`)."""
    return user_vecs.dot(item_vecs.T)


def precision_at_k(
    predictions: np.ndarray, ratings: sp.csr_matrix, k: int, user_index: list[int]
) -> float:
    """Mean over `user_index` of |top-k by argsort ∩ items of the user's row| / k."""
    ratings = ratings.tocsr()
    precisions = []
    for user in user_index:
        top_k = np.argsort(-predictions[user, :])[:k]
        labels = ratings.getrow(user).indices
        precision = float(len(set(top_k) & set(labels))) / float(k)
        precisions.append(precision)
    return float(np.mean(precisions))


def calculate_mse(predictions: np.ndarray, ratings: sp.csr_matrix, user_index: list[int]) -> float:
    """MSE over every cell of the users' rows, zeros included (sklearn's mean_squared_error
    of the two raveled arrays, written out)."""
    truth = ratings[user_index, :].toarray().ravel()
    pred = predictions[user_index, :].ravel()
    return float(np.mean((truth - pred) ** 2))


def evaluate_epoch(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    user_index: list[int],
    k: int,
) -> dict[str, float]:
    """What the blog's learning curve computes after each epoch, keyed like `evaluate`."""
    predictions = predict_all(user_vecs, item_vecs)
    return {
        f"train_precision_at_{k}": precision_at_k(predictions, train, k, user_index),
        f"test_precision_at_{k}": precision_at_k(predictions, test, k, user_index),
        "train_mse": calculate_mse(predictions, train, user_index),
        "test_mse": calculate_mse(predictions, test, user_index),
    }
