"""Per-epoch evaluation speed: `mfstudy.metrics.evaluate` against the blog's recipe and ALS.

Run from the repo root:  python bench/eval_speed.py [--reps N] [--quick] [--json]

Data: (a) lastfm-2k as binary likes, 5/5 iterative k-core ($MFSTUDY_DATA_DIR/lastfm-2k, default
../shared/data beside the repo); (b) a seeded synthetic matrix the size of the blog's
thresholded Sketchfab data (15,274 users x 25,655 items, ~0.14% dense, power-law item
popularity). Both use the blog's holdout: 20% of users, 5 test items each, k = 5.

For each, implicit's CPU ALS (40 factors, 1 BLAS thread) is timed for one epoch, then one epoch's
evaluation (train + test p@5 and MSE over the held-out users) is timed both ways. Numbers are
checked to agree (exclude_seen=False, the blog's protocol). Prints a table; asserts nothing.
Goal (issue "Foundation"): recipe / ours >= 20 and ours / ALS epoch <= 1/4. `--quick`: lastfm-2k
only, 2 repetitions (a smoke run); `--json`: the headline ratios as a last JSON line (see
bench/run_all.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _recipe import evaluate_epoch, train_test_split  # noqa: E402
from run_all import emit, row  # noqa: E402

from mfstudy.metrics import evaluate  # noqa: E402

K = 5
FACTORS = 40
SEED = 20161019


def data_dir() -> Path:
    env = os.environ.get("MFSTUDY_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def kcore(frame: pd.DataFrame, min_user: int = 5, min_item: int = 5) -> pd.DataFrame:
    """The blog's iterative thresholding: drop sparse users and items until both hold."""
    while True:
        n = len(frame)
        frame = frame[frame.groupby("item")["user"].transform("size") >= min_item]
        frame = frame[frame.groupby("user")["item"].transform("size") >= min_user]
        if len(frame) == n:
            return frame


def to_csr(frame: pd.DataFrame) -> sp.csr_matrix:
    u = frame["user"].astype("category").cat.codes.to_numpy()
    i = frame["item"].astype("category").cat.codes.to_numpy()
    m = sp.csr_matrix(
        (np.ones(len(frame), dtype=np.float32), (u, i)), shape=(u.max() + 1, i.max() + 1)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def lastfm() -> sp.csr_matrix:
    path = data_dir() / "lastfm-2k" / "user_artists.dat"
    raw = pd.read_csv(path, sep="\t").rename(columns={"userID": "user", "artistID": "item"})
    return to_csr(kcore(raw[["user", "item"]]))


def sketchfab_like(rng: np.random.Generator) -> sp.csr_matrix:
    """15,274 x 25,655 likes at ~0.14%: Zipf-like item popularity, heavy-tailed user activity."""
    n_users, n_items, density = 15_274, 25_655, 0.0014
    target = int(density * n_users * n_items)
    popularity = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    popularity = rng.permutation(popularity / popularity.sum())
    activity = 5 + rng.pareto(1.5, n_users)
    degree = np.minimum(np.round(activity / activity.sum() * target * 1.06), n_items // 4)
    users = np.repeat(np.arange(n_users), degree.astype(np.int64))
    items = rng.choice(n_items, size=len(users), p=popularity)
    m = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def best_of(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench(
    name: str,
    ratings: sp.csr_matrix,
    reps: int,
    rng: np.random.Generator,
    numbers: list[dict[str, float | str]] | None = None,
) -> list[str]:
    from implicit.cpu.als import AlternatingLeastSquares

    train, test, user_index = train_test_split(ratings, split_count=5, fraction=0.2, rng=rng)
    users = np.asarray(user_index, dtype=np.int64)
    rows = []
    n_u, n_i = ratings.shape
    print(
        f"\n== {name}: {n_u} users x {n_i} items, {ratings.nnz} likes "
        f"({100 * ratings.nnz / (n_u * n_i):.3f}%), {len(users)} held-out users"
    )

    als_times = {}
    model = AlternatingLeastSquares(factors=FACTORS, iterations=1, random_state=SEED)
    model.fit(train, show_progress=False)  # epoch 1 from the random start
    for threads in (0, 1):
        m = AlternatingLeastSquares(
            factors=FACTORS, iterations=1, random_state=SEED, num_threads=threads
        )
        m.fit(train, show_progress=False)
        als_times[threads], _ = best_of(lambda m=m: m.fit(train, show_progress=False), reps)

    for epochs in (1, 15):
        if epochs > 1:
            model.iterations = epochs - 1
            model.fit(train, show_progress=False)  # warm start: continues from epoch 1
        P, Q = model.user_factors.copy(), model.item_factors.copy()
        t_ours, ours = best_of(
            lambda P=P, Q=Q: evaluate(P, Q, train, test, users, K, exclude_seen=False), reps
        )
        t_seen, _ = best_of(
            lambda P=P, Q=Q: evaluate(P, Q, train, test, users, K, exclude_seen=True), reps
        )
        t_recipe, recipe = best_of(
            lambda P=P, Q=Q: evaluate_epoch(P, Q, train, test, user_index, K), max(1, reps // 2)
        )
        assert isinstance(ours, dict) and isinstance(recipe, dict)
        diffs = ", ".join(
            f"{key} {ours[key]:.6g} vs {recipe[key]:.6g}"
            for key in recipe
            if not np.isclose(ours[key], recipe[key], rtol=1e-5, atol=0)
        )
        if numbers is not None:
            numbers.append(
                {
                    "data": name,
                    "epochs": epochs,
                    "recipe_over_ours": t_recipe / t_ours,
                    "ours_over_als": t_ours / als_times[0],
                    "ours_over_als_1": t_ours / als_times[1],
                    "excl_over_als": t_seen / als_times[0],
                    "excl_over_als_1": t_seen / als_times[1],
                }
            )
        rows.append(
            f"| {name} | {epochs} | {1e3 * als_times[0]:.0f} / {1e3 * als_times[1]:.0f} "
            f"| {1e3 * t_recipe:.0f} | {1e3 * t_ours:.1f} | {1e3 * t_seen:.1f} "
            f"| {t_recipe / t_ours:.0f}x | {t_ours / als_times[0]:.2f} / "
            f"{t_ours / als_times[1]:.2f} | {diffs or 'identical'} |"
        )
        print(
            f"   after {epochs} epoch(s): p@5 train {ours[f'train_precision_at_{K}']:.4f} "
            f"test {ours[f'test_precision_at_{K}']:.4f}, mse train {ours['train_mse']:.6g} "
            f"test {ours['test_mse']:.6g}"
        )
    return rows


def headline(numbers: list[dict[str, float | str]], quick: bool) -> list[dict]:
    """Per data set, the worst case over the epochs of each ratio (see bench/run_all.py)."""
    out = []
    prefix = "quick: smoke run, not a result; " if quick else ""
    for data in dict.fromkeys(str(n["data"]) for n in numbers):
        mine = [n for n in numbers if n["data"] == data]
        epochs = " and ".join(str(n["epochs"]) for n in mine)

        def worst(key: str, fn: Callable[..., float], mine: list = mine) -> float:
            return fn(float(n[key]) for n in mine)

        out += [
            row(
                "eval_speed",
                f"recipe / ours evaluation time, {data}",
                worst("recipe_over_ours", min),
                "the blog's evaluation (dense scores, argsort per user), same factors",
                ">= 20",
                note=f"{prefix}worst of {epochs} epochs",
            ),
            row(
                "eval_speed",
                f"ours / one ALS epoch (all threads), {data}",
                worst("ours_over_als", max),
                "one implicit ALS epoch at 40 factors",
                "<= 0.25",
                note=f"{prefix}worst of {epochs} epochs; 1-thread ALS epoch: "
                f"{worst('ours_over_als_1', max):.2f}",
            ),
            row(
                "eval_speed",
                f"ours with training items excluded / one ALS epoch, {data}",
                worst("excl_over_als", max),
                "one implicit ALS epoch at 40 factors (all threads)",
                "<= 0.25",
                note=f"{prefix}worst of {epochs} epochs; the shipped configs exclude them; "
                f"1-thread ALS epoch: {worst('excl_over_als_1', max):.2f}",
            ),
        ]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=None, help="timing repetitions (best kept)")
    parser.add_argument("--quick", action="store_true", help="lastfm-2k only, 2 reps: smoke run")
    parser.add_argument("--json", action="store_true", help="print the rows as a last JSON line")
    args = parser.parse_args(argv)
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    rng = np.random.default_rng(SEED)
    numbers: list[dict[str, float | str]] = []
    with threadpool_limits(limits=1, user_api="blas"):
        # Warm the JIT caches so compilation is not timed.
        tiny = sp.csr_matrix(np.eye(4, dtype=np.float32))
        evaluate(np.ones((4, 2)), np.ones((4, 2)), tiny, tiny, np.arange(4), 2)
        evaluate(np.ones((4, 2), np.float32), np.ones((4, 2), np.float32), tiny, tiny, [0], 2)
        rows = []
        rows += bench("lastfm-2k", lastfm(), reps, rng, numbers)
        if not args.quick:
            rows += bench("sketchfab-like (synthetic)", sketchfab_like(rng), reps, rng, numbers)
    print(
        "\nTimes in ms (best of reps). ALS epoch: implicit CPU ALS, 40 factors, all cores / "
        "1 thread.\nours: mfstudy.metrics.evaluate (exclude_seen=False as the blog; 'ours+excl' "
        "also ranks test with training items excluded).\n"
    )
    print(
        "| data | epochs | ALS epoch (all/1 thr) | recipe | ours | ours+excl "
        "| recipe/ours | ours/ALS (all/1 thr) | numbers |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)
    out = headline(numbers, args.quick)
    if args.json:
        emit(out)
    return out


def run(quick: bool = False) -> list[dict]:
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
