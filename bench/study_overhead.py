"""What tracking costs a study: the same trials with and without MLflow logging.

Runs one study on lastfm-2k (the blog's data preparation) twice through the study's own worker
loop, the same sampler seed so both propose the same trials, pruning off so both train the same
epochs: once with every trial logging per-epoch metrics to a real local MLflow tracking server
(`mlflow server` on 127.0.0.1, SQLite backend, started here), once without tracking. Prints both
wall times and the overhead ratio. Goal: tracking adds at most 5% to the study's wall time.

    python bench/study_overhead.py [--trials 12] [--repeats 2]
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
from servers import MlflowServer  # noqa: E402

OVERRIDES = [
    "evaluation.exclude_seen=true",
    "study.pruner.kind=none",
    "study.eval_every=1",
    "search_space={wrmf: {factors: {type: int, low: 16, high: 64, log: true},"
    " regularization: {type: float, low: 0.01, high: 10, log: true},"
    " alpha: {type: float, low: 1, high: 50, log: true}, iterations: 15}}",
]


def one_study(tmp: Path, trials: int, uri: str | None) -> float:
    from mfstudy.config import load_config
    from mfstudy.prepare import prepare, write_prepared
    from mfstudy.study import MlflowTrialLogs
    from mfstudy.tuning import TrialContext, create_study, quiet, run_workers

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
        tracker = MlflowTrialLogs(uri, parent.experiment_id, parent.run_id, tmp / "spool")
    ctx = TrialContext(cfg, spec, cfg.name, data, trials, threads=2, tracker=tracker)
    start = time.perf_counter()
    run_workers(ctx, 1)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
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
    print(f"\ncores {os.cpu_count()}, {args.trials} trials x 15 epochs, evaluated every epoch")
    print(f"bare {b:.2f}s | with MLflow {t:.2f}s | overhead {100 * (t / b - 1):+.1f}%")


if __name__ == "__main__":
    main()
