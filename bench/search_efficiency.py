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
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_search(config: Path, overrides: list[str], workers: int) -> dict[str, float]:
    import optuna

    from mfstudy.config import load_config
    from mfstudy.prepare import prepare, write_prepared
    from mfstudy.study import holdout_fingerprint
    from mfstudy.tuning import TrialContext, create_study, quiet, run_workers, threads_per_worker

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
        run_workers(ctx, workers)
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
            "pruned": int(pruned),
            "seconds": seconds,
            "holdout": holdout_fingerprint(prepared),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tpe-trials", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("MFSTUDY_DATA_DIR", str(REPO.parent / "shared" / "data"))
    common = ["evaluation.exclude_seen=true"]

    print(f"cores: {os.cpu_count()}, workers: {args.workers}", flush=True)
    grid = run_search(REPO / "configs" / "recipe.yaml", common, args.workers)
    print(
        f"grid: best p@5 {grid['best']:.4f} ({grid['best_params']}, epoch {grid['best_epoch']})"
        f", {grid['epochs']} epochs, {grid['trials']} trials, {grid['seconds']:.0f}s",
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
        f"| grid (180 points x 38 epochs) | {grid['best']:.4f} | {grid['epochs']} | 100% | "
        f"{grid['seconds']:.0f}s |"
    )
    for seed, r in zip(args.seeds, rows, strict=True):
        print(
            f"| TPE + hyperband, seed {seed} | {r['best']:.4f} | {r['epochs']} | "
            f"{r['epochs'] / grid['epochs']:.1%} | {r['seconds']:.0f}s |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
