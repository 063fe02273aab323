"""Synthetic interactions with planted low-rank preferences, power-law popularity and heavy users.

The generator stands in for real data offline, and its planted structure lets tests check that
a model recovers something real. The model of one user's choice is

    P(user u holds item i)  ∝  pop_i * exp(affinity * s_ui),   s_ui = P_u · Q_i,

with `pop_i = (i + 1) ** -popularity_exponent` and `s_ui` of unit variance (P ~ N(0, 1),
Q ~ N(0, 1/rank)), and each user holds `k_u` distinct items, `k_u` lognormal (heavy-tailed)
scaled so the total is about `n_interactions`.

Scoring every user against every item is out of the question at 1M x 200k, so each user's items
are drawn in two stages, one chunk of users at a time:

1. candidates: about `3 * k_u` draws from the popularity distribution alone (with replacement);
2. selection: the `k_u` distinct candidates with the largest
   `log(times drawn) + affinity * s_ui + Gumbel noise` (the Gumbel-top-k trick, which samples
   without replacement proportionally to `times drawn * exp(affinity * s_ui)`; the draw count
   is an unbiased stand-in for `pop_i`, so popular items do not saturate for heavy users).

Users left with fewer distinct candidates than `k_u` (heavy users under a steep popularity
curve) get top-up rounds of ever more popularity draws, then, if still short (a curve so steep
the tail is practically never drawn), a few rounds of uniform draws. Every random stream is keyed by
(seed, purpose, chunk), and the chunks are fixed by the config alone, so the output depends
only on the config and the seed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from mfstudy.config import SyntheticSource
from mfstudy.data._interactions import RawInteractions

__all__ = ["generate_synthetic", "planted_factors", "popularity"]

_ACTIVITY_SIGMA = 1.0
"""Lognormal sigma of user activity: the busiest of 2,000 users holds ~30x the median."""
_OVERSAMPLE = 3.0
_MIN_EXTRA = 8
_POPULARITY_ROUNDS = 4
_MAX_ROUNDS = 8
_CHUNK_CANDIDATES = 2_000_000
"""Candidate draws per chunk: bounds the working memory (~100 MB) whatever the data size."""
_COUNT_BASE = 1.0
"""log of the typical extra count of a `values="count"` interaction at preference 0."""

# Purposes of the random streams (second element of every seed key).
_FACTORS, _ACTIVITY, _CHUNK, _DUPLICATES = 0, 1, 2, 3


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def planted_factors(cfg: SyntheticSource, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The planted user (n_users x rank) and item (n_items x rank) float32 vectors.

    Scaled so that `P[u] @ Q[i]` has unit variance whatever the rank, which makes `affinity`
    comparable across ranks. Exposed so tests and benchmarks can compare a model against the
    truth.
    """
    rng = _rng(seed, _FACTORS)
    p = rng.standard_normal((cfg.n_users, cfg.rank), dtype=np.float32)
    q = rng.standard_normal((cfg.n_items, cfg.rank), dtype=np.float32)
    q *= np.float32(1.0 / np.sqrt(cfg.rank))
    return p, q


def popularity(cfg: SyntheticSource) -> np.ndarray:
    """Item draw probabilities, proportional to `(i + 1) ** -popularity_exponent`."""
    w = np.arange(1, cfg.n_items + 1, dtype=np.float64) ** -cfg.popularity_exponent
    return w / w.sum()


def _activity(cfg: SyntheticSource, seed: int) -> np.ndarray:
    """Distinct items per user (int64, in [1, n_items]) summing to about `n_interactions`.

    Lognormal activity times a scale found by bisection, so clipping at 1 and at the catalogue
    size does not push the total far from the target; stochastic rounding with fixed uniforms
    keeps the count monotone in the scale.
    """
    rng = _rng(seed, _ACTIVITY)
    a = rng.lognormal(0.0, _ACTIVITY_SIGMA, cfg.n_users)
    jitter = rng.random(cfg.n_users)
    n_items = cfg.n_items
    target = min(cfg.n_interactions, cfg.n_users * n_items)

    def counts(scale: float) -> np.ndarray:
        return np.clip(np.floor(scale * a + jitter), 1, n_items).astype(np.int64)

    lo, hi = 0.0, target / a.sum()
    while counts(hi).sum() < target and hi < 1e18:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if counts(mid).sum() < target:
            lo = mid
        else:
            hi = mid
    return counts(hi)


class _Sampler:
    """Inverse-CDF sampling of item indices through a guide table (Chen's method).

    `guide[j]` is the first item whose CDF exceeds `j / L`, so a uniform `u` starts its search
    at `guide[floor(u * L)]` and is at most a step or two short of its item: ~3x faster than a
    binary search over the whole CDF, which dominated the run time at 200k items.
    """

    def __init__(self, probabilities: np.ndarray) -> None:
        cdf = np.cumsum(probabilities)
        cdf[-1] = 1.0
        self.cdf = cdf
        self.size = 4 * len(cdf)
        grid = np.arange(self.size, dtype=np.float64) / self.size
        self.guide = np.searchsorted(cdf, grid, side="right")

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.random(n)
        idx = self.guide[(u * self.size).astype(np.int64)]
        behind = np.flatnonzero(self.cdf[idx] <= u)
        while len(behind):  # a few rounds at most; each touches only the stragglers
            idx[behind] += 1
            behind = behind[self.cdf[idx[behind]] <= u[behind]]
        return idx


def _draw(
    rng: np.random.Generator, sampler: _Sampler | None, owners: np.ndarray, n_items: int
) -> np.ndarray:
    """One item draw per entry of `owners`, as (owner * n_items + item) keys: from the
    popularity distribution, or uniform when `sampler` is None."""
    if sampler is None:
        items = rng.integers(0, n_items, len(owners), dtype=np.int64)
    else:
        items = sampler.draw(rng, len(owners))
    return owners.astype(np.int64) * n_items + items


def _dots(pt: np.ndarray, qt: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`P[rows] . Q[cols]` from the transposed factors, one rank component at a time.

    Gathering 1-D columns is ~5x faster than gathering rows of a 2-D array, and never
    materialises the (candidates x rank) matrices.
    """
    s = np.zeros(len(rows), dtype=np.float32)
    for j in range(pt.shape[0]):
        s += pt[j].take(rows) * qt[j].take(cols)
    return s


def _select_chunk(
    rng: np.random.Generator,
    k: np.ndarray,
    pt_chunk: np.ndarray,
    qt: np.ndarray,
    sampler: _Sampler,
    affinity: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose `k[u]` distinct items for each local user u; return (users, items, scores).

    `pt_chunk` and `qt` are the transposed (rank x n) user factors of the chunk and item factors.
    """
    n_local, n_items = len(k), qt.shape[1]
    m = np.ceil(_OVERSAMPLE * k).astype(np.int64) + _MIN_EXTRA
    owners = np.repeat(np.arange(n_local, dtype=np.int64), m)
    keys, times = np.unique(_draw(rng, sampler, owners, n_items), return_counts=True)
    for r in range(1, _MAX_ROUNDS + 1):
        have = np.bincount(keys // n_items, minlength=n_local)
        short = np.flatnonzero(have < k)
        if len(short) == 0:
            break
        deficit = k[short] - have[short]
        # Top-up rounds: ever larger popularity draws for the users still short; when the
        # popularity curve is too steep to reach them in bounded memory, uniform draws.
        draws = (np.ceil(_OVERSAMPLE * deficit).astype(np.int64) + _MIN_EXTRA) << r
        source: _Sampler | None = sampler
        if r > _POPULARITY_ROUNDS or draws.sum() > _CHUNK_CANDIDATES:
            draws, source = 2 * deficit + _MIN_EXTRA, None
        extra = _draw(rng, source, np.repeat(short, draws), n_items)
        keys, inv = np.unique(np.concatenate([keys, extra]), return_inverse=True)
        times = np.bincount(
            inv, weights=np.concatenate([times, np.ones(len(extra))]), minlength=len(keys)
        )
    short = np.flatnonzero(np.bincount(keys // n_items, minlength=n_local) < k)
    if len(short) and len(short) * n_items <= _CHUNK_CANDIDATES:
        # Users whose quota is (nearly) every item: random draws find the last few missing
        # items slowly (a coupon collector), so every item becomes a candidate of theirs.
        extra = (short[:, None] * n_items + np.arange(n_items)).ravel()
        keys, inv = np.unique(np.concatenate([keys, extra]), return_inverse=True)
        times = np.bincount(
            inv, weights=np.concatenate([times, np.ones(len(extra))]), minlength=len(keys)
        )
    users = keys // n_items
    items = keys - users * n_items
    s = _dots(pt_chunk, qt, users, items)
    score = np.log(times) + affinity * s + rng.gumbel(size=len(keys))
    # Order by (user, descending score) with one integer sort on user * n + score rank: the
    # same order as np.lexsort((-score, users)), about 2.5x faster on float keys.
    score_rank = np.empty(len(score), dtype=np.int64)
    score_rank[np.argsort(-score)] = np.arange(len(score))
    order = np.argsort(users * len(score) + score_rank)
    sorted_users = users[order]
    starts = np.concatenate(([0], np.cumsum(np.bincount(users, minlength=n_local))[:-1]))
    rank = np.arange(len(order)) - starts[sorted_users]
    chosen = np.sort(order[rank < k[sorted_users]])  # back to (user, item) order
    return users[chosen], items[chosen], s[chosen]


def generate_synthetic(cfg: SyntheticSource, seed: int) -> RawInteractions:
    """Interactions drawn from the planted model described in the module docstring.

    Users and items are int64 ids `0..n-1` (item `i` is the `i`-th most popular by design);
    item names are `"item <id>"`. `values="count"` gives counts >= 1 that grow with the planted
    preference; `duplicate_fraction` appends verbatim repeats of that fraction of the rows.
    """
    p, q = planted_factors(cfg, seed)
    qt = np.ascontiguousarray(q.T)
    del q
    sampler = _Sampler(popularity(cfg))
    k = _activity(cfg, seed)

    # Chunks of consecutive users with about _CHUNK_CANDIDATES first-round draws each.
    m = np.ceil(_OVERSAMPLE * k).astype(np.int64) + _MIN_EXTRA
    chunk_of = (np.cumsum(m) - m) // _CHUNK_CANDIDATES
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(chunk_of)) + 1, [cfg.n_users]))

    total = int(k.sum())
    n_dup_max = round(cfg.duplicate_fraction * total)
    users = np.empty(total + n_dup_max, dtype=np.int64)
    items = np.empty(total + n_dup_max, dtype=np.int64)
    weights = np.ones(total + n_dup_max, dtype=np.float64)
    n = 0
    for c, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        rng = _rng(seed, _CHUNK, c)
        cu, ci, s = _select_chunk(
            rng, k[lo:hi], np.ascontiguousarray(p[lo:hi].T), qt, sampler, cfg.affinity
        )
        end = n + len(cu)
        users[n:end] = cu + lo
        items[n:end] = ci
        if cfg.values == "count":
            rate = np.exp(_COUNT_BASE + s) * rng.gamma(1.0, 1.0, len(s))
            weights[n:end] = 1.0 + rng.poisson(rate)
        n = end

    n_dup = round(cfg.duplicate_fraction * n)
    if n_dup:
        pick = np.sort(_rng(seed, _DUPLICATES).choice(n, size=n_dup, replace=False))
        users[n : n + n_dup] = users[pick]
        items[n : n + n_dup] = items[pick]
        weights[n : n + n_dup] = weights[pick]
    rows = n + n_dup

    frame = pd.DataFrame(
        {"user": users[:rows], "item": items[:rows], "weight": weights[:rows]}, copy=False
    )
    ids = np.arange(cfg.n_items, dtype=np.int64)
    names = pd.Series("item " + ids.astype(str).astype(object), index=ids, name="item_name")
    return RawInteractions(frame=frame, source=f"synthetic (seed {seed})", item_names=names)
