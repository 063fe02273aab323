"""Bootstrap intervals over users, and the paired bootstrap of two models' difference.

Every metric here is a ratio of sums over the evaluated users, `sum(num_u) / sum(den_u)`:
`den_u = 1` is a plain mean over users (precision, recall, nDCG, MAP at k and the all-cells
MSE), `den_u` = the user's number of rated entries makes RMSE's mean squared error (then
`root`). Users are what was sampled (the holdout is a sample of users), so users are what is
resampled: each replicate draws `n` users with replacement and recomputes the statistic; the
interval is the replicates' percentile interval.

Paired: both models are scored on the *same* users, and their per-user values are strongly
correlated (a user whose held-out items are popular is easy for every model). Resampling the
users once for both and differencing per replicate cancels that shared variation, so the
paired interval of a difference is far narrower than the one from resampling each model on
its own (which treats the two scores as independent samples they are not).

All randomness comes from the `np.random.Generator` the caller passes (seeded from the study's
seed), so the same inputs and seed give the same intervals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Interval",
    "PairedDifference",
    "UserValues",
    "bootstrap_interval",
    "bootstrap_replicates",
    "paired_bootstrap",
]

#: Draws of (replicates x users) indices are made in blocks of about this many.
_BLOCK = 1 << 22


@dataclass(frozen=True)
class UserValues:
    """A metric as per-user terms: the statistic is `sum(num) / sum(den)`, square-rooted when
    `root`; `den` None means one per user (the metric is the mean of `num`)."""

    num: np.ndarray
    den: np.ndarray | None = None
    root: bool = False

    def __post_init__(self) -> None:
        num = np.asarray(self.num, dtype=np.float64)
        object.__setattr__(self, "num", num)
        if self.den is not None:
            den = np.asarray(self.den, dtype=np.float64)
            if den.shape != num.shape:
                raise ValueError(f"num and den differ in shape: {num.shape} vs {den.shape}")
            object.__setattr__(self, "den", den)

    def __len__(self) -> int:
        return len(self.num)

    @property
    def value(self) -> float:
        """The metric over all users."""
        den = float(len(self.num)) if self.den is None else float(self.den.sum())
        if den == 0:
            return float("nan")
        v = float(self.num.sum()) / den
        return float(np.sqrt(v)) if self.root else v

    def on(self, idx: np.ndarray) -> np.ndarray:
        """The statistic of each row of resampled user indices `idx` (replicates x users)."""
        num = self.num[idx].sum(axis=1)
        if self.den is None:
            den = np.full(len(idx), idx.shape[1], np.float64)
        else:
            den = self.den[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = num / den
        return np.sqrt(v) if self.root else v


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap percentile interval at `level`."""

    estimate: float
    low: float
    high: float
    level: float

    def __str__(self) -> str:
        pct = f"{100 * self.level:g}%"
        return f"{self.estimate:.4g} ({pct} CI {self.low:.4g} to {self.high:.4g})"


@dataclass(frozen=True)
class PairedDifference:
    """`a - b` over the same users, with both scores' intervals from the same replicates.

    `p_value`: two-sided bootstrap p-value of "no difference" (twice the smaller share of
    replicates on either side of 0, with the +1 correction so it is never 0). `prob_a_higher`
    and `prob_a_lower`: the shares of replicates in which `a` scores higher (lower) than `b`.
    """

    a: Interval
    b: Interval
    difference: Interval
    p_value: float
    prob_a_higher: float
    prob_a_lower: float
    n_users: int
    n_boot: int


def _indices(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks of resampled user indices, (replicates x n) each, `n_boot` rows in all."""
    block = max(1, _BLOCK // max(n, 1))
    done = 0
    while done < n_boot:
        rows = min(block, n_boot - done)
        yield rng.integers(0, n, size=(rows, n))
        done += rows


def bootstrap_replicates(values: UserValues, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` bootstrap replicates of the statistic (users resampled with replacement)."""
    n = len(values)
    if n == 0:
        return np.full(n_boot, np.nan)
    return np.concatenate([values.on(idx) for idx in _indices(n, n_boot, rng)])


def _interval(estimate: float, reps: np.ndarray, level: float) -> Interval:
    reps = reps[np.isfinite(reps)]
    if len(reps) == 0 or not np.isfinite(estimate):
        return Interval(estimate, float("nan"), float("nan"), level)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return Interval(estimate, float(low), float(high), level)


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_interval(
    values: UserValues, rng: np.random.Generator, n_boot: int = 2000, level: float = 0.95
) -> Interval:
    """The metric over all users with its bootstrap percentile interval at `level`."""
    _check(n_boot, level)
    return _interval(values.value, bootstrap_replicates(values, n_boot, rng), level)


def paired_bootstrap(
    a: UserValues,
    b: UserValues,
    rng: np.random.Generator,
    n_boot: int = 2000,
    level: float = 0.95,
) -> PairedDifference:
    """Intervals of `a`, `b` and `a - b`, resampling users once for both (user u of `a` is
    user u of `b`); see the module docstring for why pairing matters."""
    _check(n_boot, level)
    n = len(a)
    if len(b) != n:
        raise ValueError(f"paired values need the same users: {n} vs {len(b)}")
    if n == 0:
        nan = float("nan")
        empty = Interval(nan, nan, nan, level)
        return PairedDifference(empty, empty, empty, nan, nan, nan, 0, n_boot)
    ra, rb = [], []
    for idx in _indices(n, n_boot, rng):
        ra.append(a.on(idx))
        rb.append(b.on(idx))
    reps_a, reps_b = np.concatenate(ra), np.concatenate(rb)
    diff = reps_a - reps_b
    ok = diff[np.isfinite(diff)]
    m = len(ok)
    if m:
        below = (np.count_nonzero(ok <= 0) + 1) / (m + 1)
        above = (np.count_nonzero(ok >= 0) + 1) / (m + 1)
        p_value = min(1.0, 2.0 * min(below, above))
        higher = float(np.count_nonzero(ok > 0) / m)
        lower = float(np.count_nonzero(ok < 0) / m)
    else:
        p_value = higher = lower = float("nan")
    return PairedDifference(
        a=_interval(a.value, reps_a, level),
        b=_interval(b.value, reps_b, level),
        difference=_interval(a.value - b.value, diff, level),
        p_value=float(p_value),
        prob_a_higher=higher,
        prob_a_lower=lower,
        n_users=n,
        n_boot=n_boot,
    )
