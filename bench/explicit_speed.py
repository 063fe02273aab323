"""Explicit-rating models against `matrix-factorization` (KernelMF, BaselineModel) and Surprise.

Run from the repo root:  python bench/explicit_speed.py [--seeds N] [--data-dir DIR] [--quick]

Data: MovieLens 100k `u.data` ($MFSTUDY_DATA_DIR/ml-100k, default ../shared/data beside the
repo), one seeded 80/20 random split of the ratings shared by every system. Users and items are
coded from the training part; a test pair whose user or item is not in training is predicted by
every system from the global mean plus the known bias.

Pairs at the second source's settings (all predictions clipped to [1, 5]):

- KernelMF(n_factors=100, n_epochs=20, lr=0.001, reg=0.005) vs SGDMF at the same settings;
- BaselineModel(method='sgd', lr=0.01, reg=0.005, n_epochs=20) vs Baseline(solver='sgd');
- BaselineModel(method='als', reg=0.5, n_epochs=20) vs Baseline(solver='als');
- Surprise SVD(n_factors=100, n_epochs=20) (its defaults lr 0.005, reg 0.02, init_std 0.1) vs
  SGDMF at those settings;
- our ALSMF at its defaults (no counterpart).

Each system is fitted once as a warm-up ("1st call": for numba code without an on-disk cache
that includes compilation) and then once per model seed, the seeds interleaved across the two
systems of a pair so that load on a shared machine hits both alike; the table gives the test
RMSE (mean over seeds) and the median warm fit time. Our JIT compile time is measured per model
in a subprocess with an empty NUMBA_CACHE_DIR (first fit minus second fit). Asserts nothing.

Targets (issue "Models"): RMSE equal or better than the package at the same settings; SGD at
100 factors x 20 epochs >= 5x faster than KernelMF and than Surprise SVD; ALS no slower than
BaselineModel als.

`--quick`: one seed, no compile probe (a smoke run); `--json`: the headline ratios as a last
JSON line (see bench/run_all.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from run_all import emit, row  # noqa: E402

SPLIT_SEED = 42
LO, HI = 1.0, 5.0

OURS: dict[str, dict] = {
    "SGDMF kmf": dict(cls="SGDMF", factors=100, iterations=20, learning_rate=0.001,
                      reg_factors=0.005, reg_bias=0.005, init_std=0.1),
    "SGDMF surprise": dict(cls="SGDMF", factors=100, iterations=20, learning_rate=0.005,
                           reg_factors=0.02, reg_bias=0.02, init_std=0.1),
    "Baseline sgd": dict(cls="Baseline", solver="sgd", iterations=20, learning_rate=0.01,
                         reg=0.005),
    "Baseline als": dict(cls="Baseline", solver="als", iterations=20, reg=0.5),
    "ALSMF": dict(cls="ALSMF", factors=100, iterations=20, reg_factors=0.1, reg_bias=0.1),
}  # fmt: skip


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame  # user, item, rating (raw ids)
    test: pd.DataFrame
    csr: sp.csr_matrix  # training ratings, users x items coded from train
    test_u: np.ndarray  # codes, -1 when unknown
    test_i: np.ndarray


def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("MFSTUDY_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load_split(folder: Path) -> Split:
    path = folder / "ml-100k" / "u.data"
    if not path.is_file():
        sys.exit(f"{path}: not found (set MFSTUDY_DATA_DIR or pass --data-dir)")
    df = pd.read_csv(path, sep="\t", header=None, names=["user", "item", "rating", "ts"])
    df = df.drop(columns="ts")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(df))
    cut = round(0.8 * len(df))
    train, test = df.iloc[perm[:cut]].reset_index(drop=True), df.iloc[perm[cut:]]
    test = test.reset_index(drop=True)
    users, items = np.unique(train["user"]), np.unique(train["item"])

    def code(ids: np.ndarray, known: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        return np.where(known[pos] == ids, pos, -1)

    csr = sp.csr_matrix(
        (
            train["rating"].to_numpy(np.float32),
            (code(train["user"].to_numpy(), users), code(train["item"].to_numpy(), items)),
        ),
        shape=(len(users), len(items)),
    )
    return Split(
        train,
        test,
        csr,
        code(test["user"].to_numpy(), users),
        code(test["item"].to_numpy(), items),
    )


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, dtype=np.float64) - truth) ** 2)))


# --------------------------------------------------------------------------- systems


def make_ours(name: str, seed: int):
    from mfstudy.models.explicit import ALSMF, SGDMF, Baseline

    params = dict(OURS[name])
    cls = {"SGDMF": SGDMF, "ALSMF": ALSMF, "Baseline": Baseline}[params.pop("cls")]
    return cls(seed=seed, **params)


def run_ours(name: str, split: Split, seed: int) -> tuple[float, float]:
    model = make_ours(name, seed)
    t = time.perf_counter()
    model.fit(split.csr)
    elapsed = time.perf_counter() - t
    return elapsed, rmse(model.score(split.test_u, split.test_i), split.test["rating"].to_numpy())


def _mf_frames(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    # matrix-factorization breaks on pandas 3 with integer ids (it writes mapped codes back into
    # the id columns in place); float ids work.
    x = pd.DataFrame({"user_id": df["user"].astype(float), "item_id": df["item"].astype(float)})
    return x, df["rating"].astype(float)


def run_package(kind: str, split: Split, seed: int) -> tuple[float, float]:
    from matrix_factorization import BaselineModel, KernelMF

    np.random.seed(seed)  # noqa: NPY002 - the package draws from NumPy's global state
    if kind == "kmf":
        model = KernelMF(n_factors=100, n_epochs=20, lr=0.001, reg=0.005, min_rating=LO,
                         max_rating=HI, verbose=0)  # fmt: skip
    else:
        method, lr, reg = ("sgd", 0.01, 0.005) if kind == "bl-sgd" else ("als", 0.01, 0.5)
        model = BaselineModel(method=method, lr=lr, reg=reg, n_epochs=20, min_rating=LO,
                              max_rating=HI, verbose=0)  # fmt: skip
    x, y = _mf_frames(split.train)
    t = time.perf_counter()
    model.fit(x, y)
    elapsed = time.perf_counter() - t
    xt, yt = _mf_frames(split.test)
    return elapsed, rmse(model.predict(xt), yt.to_numpy())


def run_surprise(split: Split, seed: int) -> tuple[float, float]:
    from surprise import SVD, Dataset, Reader

    data = Dataset.load_from_df(
        split.train[["user", "item", "rating"]], Reader(rating_scale=(1, 5))
    )
    trainset = data.build_full_trainset()
    algo = SVD(n_factors=100, n_epochs=20, random_state=seed)
    t = time.perf_counter()
    algo.fit(trainset)
    elapsed = time.perf_counter() - t
    preds = [
        algo.predict(u, i).est for u, i in zip(split.test["user"], split.test["item"], strict=True)
    ]
    return elapsed, rmse(np.array(preds), split.test["rating"].to_numpy())


@dataclass
class Result:
    first: float
    warm: float
    rmse: float
    rmse_sd: float


Run = Callable[[int], tuple[float, float]]


def measure(runs: list[Run], seeds: int) -> list[Result]:
    """First call of each system, then warm fits per seed, interleaved across the systems so
    that load on a shared machine hits all of them alike."""
    firsts = [run(0)[0] for run in runs]
    out: list[list[tuple[float, float]]] = [[] for _ in runs]
    for s in range(seeds):
        for k, run in enumerate(runs):
            out[k].append(run(s))
    results = []
    for first, rows in zip(firsts, out, strict=True):
        times, errs = zip(*rows, strict=True)
        results.append(
            Result(first, float(np.median(times)), float(np.mean(errs)), float(np.std(errs)))
        )
    return results


# --------------------------------------------------------------------------- compile probe


def compile_probe(folder: Path, name: str) -> None:
    """Child process: first vs second fit of one of our models (run with an empty numba cache)."""
    split = load_split(folder)
    first, _ = run_ours(name, split, 0)
    second, _ = run_ours(name, split, 0)
    print(json.dumps({"first": first, "second": second}))


def compile_times(folder: Path) -> dict[str, dict[str, float]]:
    """Per model, in its own process with its own empty NUMBA_CACHE_DIR (no shared kernels)."""
    out = {}
    for name in OURS:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            cmd = [sys.executable, __file__, "--compile-probe", name, "--data-dir", str(folder)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------- report


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=None, help="model seeds per system (default 3)")
    ap.add_argument("--quick", action="store_true", help="1 seed, no compile probe: smoke run")
    ap.add_argument("--json", action="store_true", help="print the rows as a last JSON line")
    ap.add_argument("--compile-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    folder = data_dir(args.data_dir)
    if args.compile_probe:
        compile_probe(folder, args.compile_probe)
        return []

    import numba

    split = load_split(folder)
    print(f"MovieLens 100k: {len(split.train):,} train / {len(split.test):,} test ratings "
          f"(split seed {SPLIT_SEED}), {split.csr.shape[0]} x {split.csr.shape[1]} train matrix; "
          f"{args.seeds} model seeds; numba threads {numba.config.NUMBA_NUM_THREADS}")  # fmt: skip
    print("versions: " + ", ".join(
        f"{d} {version(d)}" for d in ("numpy", "numba", "pandas", "matrix-factorization",
                                      "scikit-surprise")))  # fmt: skip

    nan = {"first": float("nan"), "second": float("nan")}
    compile_info = {n: nan for n in OURS} if args.quick else compile_times(folder)
    pairs = {
        "kmf": "SGDMF kmf",
        "svd": "SGDMF surprise",
        "bl-sgd": "Baseline sgd",
        "bl-als": "Baseline als",
    }
    ours: dict[str, Result] = {}
    theirs: dict[str, Result | str] = {}
    for key, mine in pairs.items():
        mine_run: Run = lambda s, n=mine: run_ours(n, split, s)  # noqa: E731
        if key == "svd":
            try:
                import surprise  # noqa: F401
            except ImportError as exc:  # e.g. scikit-surprise failed to build
                theirs[key] = f"unavailable: {exc}"
                (ours[mine],) = measure([mine_run], args.seeds)
                continue
            their_run: Run = lambda s: run_surprise(split, s)  # noqa: E731
        else:
            their_run = lambda s, k=key: run_package(k, split, s)  # noqa: E731
        theirs[key], ours[mine] = measure([their_run, mine_run], args.seeds)
    (ours["ALSMF"],) = measure([lambda s: run_ours("ALSMF", split, s)], args.seeds)

    rows = [
        ("KernelMF lr=.001 reg=.005", "kmf", "SGDMF kmf"),
        ("Surprise SVD (defaults)", "svd", "SGDMF surprise"),
        ("BaselineModel sgd", "bl-sgd", "Baseline sgd"),
        ("BaselineModel als reg=.5", "bl-als", "Baseline als"),
        ("-", None, "ALSMF"),
    ]
    head = (f"{'theirs':<26}{'ours':<16}{'RMSE th':>9}{'RMSE us':>9}{'fit th':>9}"
            f"{'fit us':>9}{'th/us':>7}{'1st th':>9}{'1st us':>8}{'compile':>9}")  # fmt: skip
    print("\n" + head + "\n" + "-" * len(head))
    for label, key, mine in rows:
        o = ours[mine]
        comp = compile_info[mine]["first"] - compile_info[mine]["second"]
        t = theirs.get(key) if key else None
        if isinstance(t, Result):
            cells = (f"{t.rmse:>9.4f}{o.rmse:>9.4f}{t.warm:>9.3f}{o.warm:>9.3f}"
                     f"{t.warm / o.warm:>7.1f}{t.first:>9.2f}{o.first:>8.2f}")  # fmt: skip
        else:
            cells = f"{'-':>9}{o.rmse:>9.4f}{'-':>9}{o.warm:>9.3f}{'-':>7}{'-':>9}{o.first:>8.2f}"
        print(f"{label:<26}{mine:<16}{cells}{comp:>9.2f}")
        if isinstance(t, str):
            print(f"    {label}: {t}")
    print("\nRMSE: test, mean over seeds (sd: " + ", ".join(
        f"{n} {r.rmse_sd:.4f}" for n, r in ours.items()) + ")")  # fmt: skip
    print("fit: median warm fit seconds; 1st: first fit in this process (package numba code "
          "compiles here; ours loads its on-disk cache); compile: our first minus second fit "
          "with an empty NUMBA_CACHE_DIR")  # fmt: skip
    out = headline(ours, theirs, args.seeds, args.quick)
    if args.json:
        emit(out)
    return out


def headline(
    ours: dict[str, Result], theirs: dict[str, Result | str], seeds: int, quick: bool
) -> list[dict]:
    """Fit-time ratios with the issue's goals, and RMSE ours / theirs (see bench/run_all.py)."""
    prefix = "quick: smoke run, not a result; " if quick else ""
    pairs = [
        ("KernelMF", "kmf", "SGDMF kmf", ">= 5", "100 factors, 20 epochs, lr .001, reg .005"),
        ("Surprise SVD", "svd", "SGDMF surprise", ">= 5", "100 factors, 20 epochs, defaults"),
        ("BaselineModel als", "bl-als", "Baseline als", ">= 1", "reg .5, 20 epochs"),
        ("BaselineModel sgd", "bl-sgd", "Baseline sgd", None, "lr .01, reg .005, 20 epochs"),
    ]
    out = []
    for label, key, mine, goal, settings in pairs:
        t, o = theirs.get(key), ours[mine]
        if not isinstance(t, Result):
            out.append(row("explicit_speed", f"{label} / {mine} fit time", None, label,
                           goal, None, f"{prefix}{label}: {t}"))  # fmt: skip
            continue
        out.append(
            row(
                "explicit_speed",
                f"{label} fit / {mine} fit (median warm)",
                t.warm / o.warm,
                f"{label}, same settings ({settings}), ML-100k 80/20",
                goal,
                note=f"{prefix}{t.warm:.3f} s vs {o.warm:.3f} s",
            )
        )
        # "Equal or better" within seed noise: ours may exceed theirs by at most the larger sd.
        slack = max(o.rmse_sd, t.rmse_sd)
        out.append(
            row(
                "explicit_speed",
                f"RMSE {mine} / {label}",
                o.rmse / t.rmse,
                f"{label}'s test RMSE, same split and settings",
                "<= 1 (within seed sd)",
                met=o.rmse <= t.rmse + slack,
                note=f"{prefix}{o.rmse:.4f} vs {t.rmse:.4f}, mean of {seeds} seed(s), "
                f"sd {slack:.4f}",
            )
        )
    return out


def run(quick: bool = False) -> list[dict]:
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
