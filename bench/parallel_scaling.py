"""Parallel trials: trials per hour with 2 workers against 1 worker on the shipped lastfm-2k study.

Run from the repo root:  python bench/parallel_scaling.py [--trials 30] [--repeats 2] [--quick]

Both runs go through the study's real entry, `mfstudy.study.run_study` (prepare, open the Optuna
journal and the MLflow parent run, `workers` trial processes, retrain and register the best),
on `configs/lastfm-2k.yaml` (data from $MFSTUDY_DATA_DIR/lastfm-2k, default ../shared/data),
with three changes so that both do the same work:

- pruning off (`study.pruner.kind=none`): every trial trains its 38 epochs, evaluated every 2;
- `study.threads_per_worker=1` in both: 1 worker uses 1 core, 2 workers use 2 (the ratio is
  then the scaling of the worker pool, not of BLAS threads);
- the trials are fixed in advance: `--trials` parameter sets drawn once from the shipped search
  space by a seeded random sampler (`RandomSampler(seed=config seed)`) are enqueued
  (`study.enqueue_trial`) into the study's journal before `run_study` starts, so both runs
  train exactly the same trials whichever worker picks which (samplers are seeded per trial
  number, but with 2 workers a proposal also depends on which trials had finished, so without
  this the proposals would depend on the number of workers).
  Equal parameters and equal objective values in both runs are checked and printed.

Tracking is on as shipped: the default MLflow store `sqlite:///<workdir>/mlflow.db` (or, with
`--mlflow-server`, a local `mlflow server` started here). Each run is a fresh subprocess (its
own imports, caches and workdir); runs alternate order over `--repeats`, the best of each is
kept.

The budget is the shipped one, 30 trials: each worker process pays a fixed start-up (Python
imports, MLflow's store opened in the process, numba caches loaded), which a short study does
not amortise; the per-process cost is printed (when its first trial started, how much longer
the first trial took than the median later one).

The trial phase is timed from `run_study`'s first progress callback (made before the worker
processes are started) to its last (made once every trial has finished), so it includes
starting the 2 worker processes; the whole study (data preparation, retrain, register) is timed
too. Reported: trials per hour each way and the ratio. Goal: >= 1.7x on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from run_all import emit, row  # noqa: E402

CONFIG = REPO / "configs" / "lastfm-2k.yaml"
NAME = "parallel_scaling"


def data_dir() -> Path:
    return Path(os.environ.get("MFSTUDY_DATA_DIR", REPO.parent / "shared" / "data"))


def overrides(workdir: Path, workers: int, trials: int, quick: bool, uri: str | None) -> list[str]:
    out = [
        f"workdir={workdir}",
        f"study.workers={workers}",
        f"study.n_trials={trials}",
        "study.threads_per_worker=1",
        "study.pruner.kind=none",
    ]
    if quick:
        out.append("search_space.wrmf.iterations=8")
    if uri is not None:
        out.append(f"tracking.uri={uri}")
    return out


def draw_params(cfg: Any, n: int) -> list[dict[str, Any]]:
    """`n` parameter sets from the config's search space, by a random sampler seeded by the
    config seed: the same list for every run."""
    import optuna

    from mfstudy.tuning import quiet, suggest

    quiet()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        suggest(trial, cfg.search_space)
        out.append(dict(trial.params))
    return out


def child(workers: int, trials: int, quick: bool, uri: str | None) -> dict[str, Any]:
    """One study in this process; its timings and trials as a dict."""
    from optuna.trial import TrialState

    from mfstudy.config import load_config
    from mfstudy.study import run_study
    from mfstudy.tuning import create_study, quiet

    quiet()
    with tempfile.TemporaryDirectory(prefix="mf-scaling-") as tmp:
        cfg = load_config(CONFIG, overrides(Path(tmp), workers, trials, quick, uri))
        planned = draw_params(cfg, trials)
        study, _ = create_study(cfg)
        for params in planned:
            study.enqueue_trial(params)

        polls: list[float] = []
        phase_start: list[dt.datetime] = []

        def on_progress(info: dict[str, Any]) -> None:
            if not polls:
                phase_start.append(dt.datetime.now())
            polls.append(time.perf_counter())

        start = time.perf_counter()
        result = run_study(cfg, on_progress=on_progress)
        whole = time.perf_counter() - start

        study, _ = create_study(cfg)
        done = study.get_trials(deepcopy=False)
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        busy = sum(_seconds(t) for t in complete)
        # Per worker process: how long until its first trial started, and what its first trial
        # cost beyond a typical one (imports, tracking store, JIT caches load there).
        by_proc: dict[str, list[Any]] = {}
        for t in sorted(complete, key=lambda t: t.datetime_start):
            by_proc.setdefault(t.user_attrs.get("mfstudy.worker", "?"), []).append(t)
        firsts = [ts[0] for ts in by_proc.values()]
        rest = [_seconds(t) for ts in by_proc.values() for t in ts[1:]]
        typical = statistics.median(rest) if rest else float("nan")
        return {
            "workers": workers,
            "threads_per_worker": cfg.study.threads_per_worker,
            "trials": len(done),
            "complete": len(complete),
            "trial_seconds": polls[-1] - polls[0],
            "study_seconds": whole,
            "busy_seconds": busy,
            "processes": len(by_proc),
            "first_trial_wait": max(
                (t.datetime_start - phase_start[0]).total_seconds() for t in firsts
            ),
            "first_trial_extra": statistics.mean(_seconds(t) for t in firsts) - typical,
            "typical_trial": typical,
            "results": sorted(
                [sorted(t.params.items()), t.value, t.user_attrs.get("best_epoch")]
                for t in complete
            ),
            "planned": sorted(sorted(p.items()) for p in planned),
            "model_version": result.model_version,
        }


def _seconds(t: Any) -> float:
    return float((t.datetime_complete - t.datetime_start).total_seconds())


def spawn(workers: int, args: argparse.Namespace, uri: str | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(workers), "--trials", str(args.trials)]
    if args.quick:
        cmd.append("--quick")
    if uri is not None:
        cmd += ["--uri", uri]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"{workers}-worker study failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, uri: str | None) -> dict[int, list[dict[str, Any]]]:
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for r in range(args.repeats):
        # Alternate the order so warm file caches and machine noise fall on both sides.
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            out = spawn(workers, args, uri)
            runs[workers].append(out)
            print(
                f"{workers} worker(s): {out['complete']}/{out['trials']} trials complete, "
                f"trial phase {out['trial_seconds']:.1f}s, whole study {out['study_seconds']:.1f}s,"
                f" trial busy time {out['busy_seconds']:.1f}s; per worker process: first trial "
                f"started after {out['first_trial_wait']:.1f}s and took "
                f"{out['first_trial_extra']:+.1f}s more than the median later trial "
                f"({out['typical_trial']:.1f}s)",
                flush=True,
            )
    return runs


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=None, help="budget (default 30; quick 4)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per side (default 2, quick 1)")
    ap.add_argument("--quick", action="store_true", help="4 trials x 8 epochs, once: smoke run")
    ap.add_argument("--mlflow-server", action="store_true", help="track to a local mlflow server")
    ap.add_argument("--json", action="store_true", help="print the rows as a last JSON line")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--uri", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trials is None:
        args.trials = 4 if args.quick else 30
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    os.environ.setdefault("MFSTUDY_DATA_DIR", str(data_dir()))
    if not (data_dir() / "lastfm-2k" / "user_artists.dat").is_file():
        raise SystemExit(f"{data_dir() / 'lastfm-2k'}: lastfm-2k not found (set MFSTUDY_DATA_DIR)")
    if args.child is not None:
        print(json.dumps(child(args.child, args.trials, args.quick, args.uri)))
        return []

    print(
        f"cores {os.cpu_count()}; {args.trials} trials of configs/lastfm-2k.yaml, "
        f"{'8' if args.quick else '38'} epochs each evaluated every 2, no pruning, "
        f"1 thread per worker; best of {args.repeats}",
        flush=True,
    )
    if args.mlflow_server:
        from servers import MlflowServer

        with tempfile.TemporaryDirectory(prefix="mf-scaling-mlflow-") as root:
            server = MlflowServer(Path(root)).start()
            try:
                runs = measure(args, server.uri)
            finally:
                server.stop()
        tracking = "a local mlflow server"
    else:
        runs = measure(args, None)
        tracking = "the default sqlite store"

    one, two = runs[1], runs[2]
    for out in one + two:
        if out["complete"] != args.trials or [r[0] for r in out["results"]] != out["planned"]:
            raise SystemExit(f"{out['workers']} worker(s) did not train the planned trials: {out}")
    values1 = {json.dumps(r[0]): (r[1], r[2]) for r in one[0]["results"]}
    values2 = {json.dumps(r[0]): (r[1], r[2]) for r in two[0]["results"]}
    same = values1 == values2
    diff = max(abs(values1[k][0] - values2[k][0]) for k in values1)

    t1 = min(o["trial_seconds"] for o in one)
    t2 = min(o["trial_seconds"] for o in two)
    w1 = min(o["study_seconds"] for o in one)
    w2 = min(o["study_seconds"] for o in two)
    tph1, tph2 = 3600 * args.trials / t1, 3600 * args.trials / t2
    print()
    print("| workers | trial phase | trials/hour | whole study | busy share of cores |")
    print("|---|---|---|---|---|")
    for workers, outs in ((1, one), (2, two)):
        t = min(o["trial_seconds"] for o in outs)
        best = min(outs, key=lambda o: o["trial_seconds"])
        util = best["busy_seconds"] / (workers * best["trial_seconds"])
        print(
            f"| {workers} | {t:.1f} s | {3600 * args.trials / t:.0f} | "
            f"{min(o['study_seconds'] for o in outs):.1f} s | {util:.0%} |"
        )
    print(
        f"\ntrials/hour 2 workers / 1 worker: {tph2 / tph1:.2f}x (trial phase); whole study "
        f"{w1 / w2:.2f}x. Same parameters and best epochs in both: "
        f"{'yes' if same else 'NO'} (max |value difference| {diff:.2g}). Tracking: {tracking}."
    )
    quick = "quick: smoke run, not a result; " if args.quick else ""
    rows = [
        row(
            NAME,
            "trials/hour, 2 workers / 1 worker (trial phase)",
            tph2 / tph1,
            f"the same {args.trials} lastfm-2k trials with 1 worker",
            ">= 1.7",
            note=f"{quick}{tph1:.0f} vs {tph2:.0f} trials/h, 1 thread per worker, "
            f"{os.cpu_count()} cores, tracking to {tracking}",
        ),
        row(
            NAME,
            "whole study throughput, 2 workers / 1 worker",
            w1 / w2,
            "the same study with 1 worker (prepare, trials, retrain, register)",
            None,
            note=f"{quick}{w1:.1f} s vs {w2:.1f} s",
        ),
    ]
    if args.json:
        emit(rows)
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
