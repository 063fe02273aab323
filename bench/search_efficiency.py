"""Search efficiency: the blog's full grid against TPE with pruning, on lastfm-2k.

Both searches run on the same data (lastfm-2k as binary likes, the blog's 5/5 thresholds and
its user-holdout split: 20% of users, 5 likes each) and the same metric (test precision@5,
training items excluded from the ranking), through the study's own tuning layer (journal
storage, parallel workers, no MLflow so only search cost is measured).

- grid: `configs/recipe.yaml`, factors {10,20,40,80,120} x regularization {0,1e-5,1e-3,0.1,10,
  100} x alpha {1,10,50,100,500,1000}, 38 epochs each, evaluated every 2: 180 trials.
- TPE: `configs/lastfm-2k.yaml`, the same ranges as continuous (log) intervals, hyperband
  pruning, run once per seed.

Reported: best test p@5 and the epochs trained (a pruned trial counts the epochs it ran). The
goal: TPE with pruning reaches the grid's best p@5 with at most 20% of the grid's epochs.

    python bench/search_efficiency.py [--tpe-trials 50] [--seeds 0 1 2] [--workers 2]

`--quick`: the first 12 grid points and 6 TPE trials of seed 0 (a smoke run: the share of
epochs then means nothing); `--json`: the headline ratios as a last JSON line (see
bench/run_all.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from run_all import emit, row  # noqa: E402


def run_search(config: Path, overrides: list[str], workers: int) -> dict[str, float]:
    import optuna

    from mfstudy.config import load_config
    from mfstudy.prepare import holdout_fingerprint, prepare, write_prepared
    from mfstudy.tuning import TrialContext, create_study, quiet, run_local, threads_per_worker

    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [*overrides, f"workdir={tmp}", f"study.workers={workers}"])
        prepared = prepare(cfg)
        data = write_prepared(prepared, Path(tmp) / cfg.name / "data")
        study, spec = create_study(cfg)
        ctx = TrialContext(
            config=cfg,
            storage=spec,
            study_name=cfg.name,
            prepared_dir=data,
            n_trials=cfg.study.n_trials,
            threads=threads_per_worker(cfg, workers),
        )
        start = time.perf_counter()
        run_local(ctx, workers)
        seconds = time.perf_counter() - start
        trials = study.get_trials(deepcopy=False)
        epochs = sum(max(t.intermediate_values) for t in trials if t.intermediate_values)
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
        best = study.best_trial
        return {
            "best": float(best.value),
            "best_params": best.params,
            "best_epoch": best.user_attrs["best_epoch"],
            "epochs": int(epochs),
            "trials": len(trials),
            # A grid must visit each point once; fewer distinct points means repeats.
            "distinct": len({tuple(sorted(t.params.items())) for t in trials}),
            "pruned": int(pruned),
            "seconds": seconds,
            "holdout": holdout_fingerprint(prepared),
        }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tpe-trials", type=int, default=None, help="default 50, quick 6")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2, quick 0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--grid-trials", type=int, default=None, help="default: all 180 points")
    ap.add_argument("--quick", action="store_true", help="12 grid points, 6 TPE trials, 1 seed")
    ap.add_argument("--json", action="store_true", help="print the rows as a last JSON line")
    args = ap.parse_args(argv)
    if args.tpe_trials is None:
        args.tpe_trials = 6 if args.quick else 50
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    if args.grid_trials is None and args.quick:
        args.grid_trials = 12
    os.environ.setdefault("MFSTUDY_DATA_DIR", str(REPO.parent / "shared" / "data"))
    common = ["evaluation.exclude_seen=true"]
    grid_over = [] if args.grid_trials is None else [f"study.n_trials={args.grid_trials}"]

    print(f"cores: {os.cpu_count()}, workers: {args.workers}", flush=True)
    grid = run_search(REPO / "configs" / "recipe.yaml", [*common, *grid_over], args.workers)
    print(
        f"grid: best p@5 {grid['best']:.4f} ({grid['best_params']}, epoch {grid['best_epoch']})"
        f", {grid['epochs']} epochs, {grid['trials']} trials ({grid['distinct']} distinct points)"
        f", {grid['seconds']:.0f}s",
        flush=True,
    )
    rows = []
    for seed in args.seeds:
        tpe = run_search(
            REPO / "configs" / "lastfm-2k.yaml",
            [*common, f"study.sampler.seed={seed}", f"study.n_trials={args.tpe_trials}"],
            args.workers,
        )
        assert tpe["holdout"] == grid["holdout"], "both searches must score the same split"
        rows.append(tpe)
        print(
            f"tpe seed {seed}: best p@5 {tpe['best']:.4f} (epoch {tpe['best_epoch']}), "
            f"{tpe['epochs']} epochs = {tpe['epochs'] / grid['epochs']:.1%} of the grid's, "
            f"{tpe['trials']} trials ({tpe['pruned']} pruned), {tpe['seconds']:.0f}s",
            flush=True,
        )
    print()
    print("| search | best test p@5 | epochs trained | share of grid epochs | wall time |")
    print("|---|---|---|---|---|")
    print(
        f"| grid ({grid['trials']} points x 38 epochs) | {grid['best']:.4f} | {grid['epochs']} | "
        "100% | "
        f"{grid['seconds']:.0f}s |"
    )
    for seed, r in zip(args.seeds, rows, strict=True):
        print(
            f"| TPE + hyperband, seed {seed} | {r['best']:.4f} | {r['epochs']} | "
            f"{r['epochs'] / grid['epochs']:.1%} | {r['seconds']:.0f}s |"
        )
    sys.stdout.flush()
    quick = "quick: smoke run, not a result; " if args.quick else ""
    out = [
        row(
            "search_efficiency",
            f"epochs trained, TPE + hyperband (seed {seed}) / grid",
            r["epochs"] / grid["epochs"],
            f"the blog's grid ({grid['trials']} points x 38 epochs) on the same lastfm-2k split",
            "<= 0.20 (and best p@5 >= the grid's)",
            met=r["epochs"] / grid["epochs"] <= 0.20 and r["best"] >= grid["best"],
            note=f"{quick}best test p@5 {r['best']:.4f} vs grid {grid['best']:.4f}; "
            f"{r['seconds']:.0f} s vs {grid['seconds']:.0f} s",
        )
        for seed, r in zip(args.seeds, rows, strict=True)
    ]
    if args.json:
        emit(out)
    return out


def run(quick: bool = False) -> list[dict]:
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
