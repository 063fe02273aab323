"""What tracking costs a study: the same trials with and without MLflow logging.

Runs the shipped lastfm-2k study (`configs/lastfm-2k.yaml`: the blog's data preparation and
ranges) twice through the study's own worker loop, the same sampler seed so both propose the
same trials, pruning off so both train the same epochs: once with every trial logging its
per-epoch metrics to a real local MLflow tracking server (`mlflow server` on 127.0.0.1, SQLite
backend, started here), once without tracking. Prints both wall times and the overhead ratio.
Goal: tracking adds at most 5% to the study's wall time.

    python bench/study_overhead.py [--trials 8] [--repeats 3]

`--quick`: 2 trials, once (a smoke run); `--json`: the headline ratio as a last JSON line (see
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
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from run_all import emit, row  # noqa: E402
from servers import MlflowServer  # noqa: E402

# The shipped lastfm-2k study (its search space, 38 epochs evaluated every 2) with pruning off,
# so both runs train exactly the same trials for the same epochs.
OVERRIDES = ["study.pruner.kind=none"]


def one_study(tmp: Path, trials: int, uri: str | None) -> float:
    from mfstudy.config import load_config
    from mfstudy.prepare import prepare, write_prepared
    from mfstudy.tracking import MlflowTrialLogs
    from mfstudy.tuning import TrialContext, create_study, quiet, run_local

    quiet()
    cfg = load_config(
        REPO / "configs" / "lastfm-2k.yaml",
        [*OVERRIDES, f"workdir={tmp}", f"study.n_trials={trials}", "study.workers=1"],
    )
    data = write_prepared(prepare(cfg), tmp / cfg.name / "data")
    _, spec = create_study(cfg)
    tracker = None
    if uri is not None:
        from mfstudy import tracking

        parent = tracking.start_study(uri, f"overhead-{tmp.name}", cfg.name, {}, {}, None)
        tracker = MlflowTrialLogs(
            uri, parent.experiment_id, parent.run_id, tmp / "spool", cfg.tracking.flush_seconds
        )
    ctx = TrialContext(cfg, spec, cfg.name, data, trials, threads=2, tracker=tracker)
    start = time.perf_counter()
    run_local(ctx, 1)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=None, help="default 8, quick 2")
    ap.add_argument("--repeats", type=int, default=None, help="default 3, quick 1")
    ap.add_argument("--quick", action="store_true", help="2 trials, once: smoke run")
    ap.add_argument("--json", action="store_true", help="print the rows as a last JSON line")
    args = ap.parse_args(argv)
    if args.trials is None:
        args.trials = 2 if args.quick else 8
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    os.environ.setdefault("MFSTUDY_DATA_DIR", str(REPO.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory() as root:
        server = MlflowServer(Path(root) / "server").start()
        try:
            bare, tracked = [], []
            for r in range(args.repeats):
                # Alternate the order so warm-up and machine noise fall on both sides.
                for kind in ("bare", "tracked") if r % 2 == 0 else ("tracked", "bare"):
                    tmp = Path(tempfile.mkdtemp(dir=root))
                    uri = server.uri if kind == "tracked" else None
                    t = one_study(tmp, args.trials, uri)
                    (tracked if uri else bare).append(t)
                    print(f"{kind}: {t:.2f}s", flush=True)
        finally:
            server.stop()
    b, t = min(bare), min(tracked)
    print(f"\ncores {os.cpu_count()}, {args.trials} trials x 38 epochs, evaluated every 2")
    print(f"bare {b:.2f}s | with MLflow {t:.2f}s | overhead {100 * (t / b - 1):+.1f}%")
    quick = "quick: smoke run, not a result; " if args.quick else ""
    rows = [
        row(
            "study_overhead",
            "study with MLflow tracking / without (wall time, best of each)",
            t / b,
            f"the same {args.trials} lastfm-2k trials (38 epochs, no pruning, 1 worker) untracked",
            "<= 1.05",
            note=f"{quick}{t:.2f} s vs {b:.2f} s, best of {args.repeats}; runs: tracked "
            + " ".join(f"{x:.1f}" for x in tracked)
            + ", bare "
            + " ".join(f"{x:.1f}" for x in bare),
        )
    ]
    if args.json:
        emit(rows)
    return rows


def run(quick: bool = False) -> list[dict]:
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
