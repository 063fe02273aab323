"""Overhead of the WRMF wrapper over a bare `implicit` ALS fit (goal: <= 5%).

Both fits get the same confidence matrix (lastfm-2k binary likes, c = 1 + alpha*d), the same
hyperparameters, seed and epochs, and run with BLAS limited to one thread; WRMF additionally
validates and converts its input, builds the confidence matrix and runs its per-epoch hook
(divergence check, a no-op callback). Runs alternate to spread machine noise over both, and
the best of `--repeats` is compared. The two fits must end with identical factors, which shows
that they did the same work.

    python bench/wrmf_overhead.py [--factors 64] [--iterations 15] [--repeats 5]

`--quick`: 5 iterations, 2 repeats (a smoke run); `--json`: the headline ratio as a last JSON
line (see bench/run_all.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from mfstudy.models.wrmf import WRMF, _all_finite, _as_weights, hkv_confidence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from run_all import emit, row  # noqa: E402


def lastfm_likes() -> sp.csr_matrix:
    """users x artists binary likes from hetrec2011 `user_artists.dat`."""
    base = Path(os.environ.get("MFSTUDY_DATA_DIR", REPO.parent / "shared" / "data"))
    path = base / "lastfm-2k" / "user_artists.dat"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (set MFSTUDY_DATA_DIR)")
    frame = pd.read_csv(path, sep="\t", usecols=["userID", "artistID"])
    users, _ = pd.factorize(frame["userID"])
    items, _ = pd.factorize(frame["artistID"])
    likes = sp.csr_matrix(
        (np.ones(len(frame), np.float32), (users, items)),
        shape=(users.max() + 1, items.max() + 1),
    )
    likes.data[:] = 1.0  # duplicates, if any, are still one like
    return likes


def bare_fit(conf: sp.csr_matrix, args: argparse.Namespace) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=args.factors,
            regularization=args.regularization,
            alpha=1.0,
            iterations=args.iterations,
            random_state=args.seed,
        )
        als.fit(conf, show_progress=False)
    return time.perf_counter() - start, als.item_factors


def wrmf_fit(likes: sp.csr_matrix, args: argparse.Namespace) -> tuple[float, WRMF]:
    start = time.perf_counter()
    model = WRMF(
        factors=args.factors,
        regularization=args.regularization,
        alpha=args.alpha,
        iterations=args.iterations,
        seed=args.seed,
    )
    model.fit(likes, callback=lambda epoch, m: None)
    return time.perf_counter() - start, model


def wrapper_own_work(likes: sp.csr_matrix, model: WRMF, iterations: int) -> float:
    """Seconds of what WRMF adds around implicit (input checks, confidence, epoch checks).

    Timed alone it is free of the fit's machine noise, which on a busy box exceeds it.
    """
    start = time.perf_counter()
    model._confidence_matrix(_as_weights(likes, "bench"))
    for _ in range(iterations):
        _all_finite(model.user_factors_) and _all_finite(model.item_factors_)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=None, help="default 15, quick 5")
    parser.add_argument("--regularization", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=None, help="default 5, quick 2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5 iterations, 2 repeats")
    parser.add_argument("--json", action="store_true", help="print the rows as a last JSON line")
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = 5 if args.quick else 15
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5

    likes = lastfm_likes()
    conf = likes.copy()
    conf.data = hkv_confidence(likes.data, "linear", args.alpha)
    print(
        f"lastfm-2k likes: {likes.shape[0]} users x {likes.shape[1]} items, nnz {likes.nnz}; "
        f"{args.factors} factors x {args.iterations} iterations, {os.cpu_count()} cpus"
    )

    bare_fit(conf, args)  # warm-up: first-touch page faults, lazy imports
    wrmf_fit(likes, args)
    bare_times, wrmf_times = [], []
    for _ in range(args.repeats):
        t, bare_items = bare_fit(conf, args)
        bare_times.append(t)
        t, model = wrmf_fit(likes, args)
        wrmf_times.append(t)
    if not np.array_equal(bare_items, model.item_factors_):
        raise SystemExit("bare implicit and WRMF ended with different factors: not the same fit")

    best_bare, best_wrmf = min(bare_times), min(wrmf_times)
    print("bare implicit  s: " + " ".join(f"{t:.3f}" for t in bare_times))
    print("WRMF wrapper   s: " + " ".join(f"{t:.3f}" for t in wrmf_times))
    print(
        f"best: bare {best_bare:.3f}s, WRMF {best_wrmf:.3f}s, "
        f"ratio {best_wrmf / best_bare:.3f} (overhead {100 * (best_wrmf / best_bare - 1):+.1f}%)"
    )
    own = min(wrapper_own_work(likes, model, args.iterations) for _ in range(args.repeats))
    print(f"wrapper's own work alone: {1000 * own:.1f} ms = {100 * own / best_bare:.2f}% of bare")
    quick = "quick: smoke run, not a result; " if args.quick else ""
    rows = [
        row(
            "wrmf_overhead",
            "WRMF fit / bare implicit fit (best of each)",
            best_wrmf / best_bare,
            f"implicit ALS alone, same confidence, seed, {args.factors} factors x "
            f"{args.iterations} iterations, same final factors",
            "<= 1.05",
            note=f"{quick}lastfm-2k likes, best of {args.repeats}; {best_bare:.3f} s vs "
            f"{best_wrmf:.3f} s; wrapper's own work {1000 * own:.1f} ms",
        )
    ]
    if args.json:
        emit(rows)
    return rows


def run(quick: bool = False) -> list[dict]:
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
