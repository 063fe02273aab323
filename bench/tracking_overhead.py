"""Cost of logging per-epoch metrics: batched `TrialRun` vs one `log_metric` call per value.

Not a test (no timing assertions anywhere): run it by hand against a real local server,

    python bench/tracking_overhead.py

It starts `mlflow server` on a temporary SQLite store, logs 3 runs x 5 metrics x 20 epochs
both ways (each way timed from run creation to run end, on fresh runs), and prints wall times.
The batched way is a `TrialRun` opened as a study opens it (`mfstudy.tracking.MlflowTrialLogs`:
created at the first flush, after `tracking.flush_seconds`, or at the end).
`--quick`: 5 epochs, one repeat (a smoke run); `--json`: the headline ratio as a last JSON line
(see bench/run_all.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

# The server helper of the tests starts and stops a real `mlflow server`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import emit, row
from servers import MlflowServer

from mfstudy.config import TrackingSettings
from mfstudy.tracking import MlflowTrialLogs, start_study

RUNS, METRICS, EPOCHS, REPEATS = 3, 5, 20, 3
SPOOL = Path(tempfile.gettempdir())  # used only if the server failed, which fails the bench


def metrics_at(epoch: int) -> dict[str, float]:
    return {f"metric_{j}": 1.0 / (epoch + j) for j in range(METRICS)}


def batched(uri: str, exp_id: str, parent: str) -> float:
    t0 = time.perf_counter()
    for n in range(RUNS):
        logs = MlflowTrialLogs(uri, exp_id, parent, SPOOL, TrackingSettings().flush_seconds)
        tr = logs(n, {"n": n})
        for epoch in range(1, EPOCHS + 1):
            tr.log_epoch(epoch, metrics_at(epoch))
        assert tr.end("complete").delivered
    return time.perf_counter() - t0


def naive(uri: str, exp_id: str, parent: str) -> float:
    client = MlflowClient(uri)
    t0 = time.perf_counter()
    for n in range(RUNS):
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent}, run_name=f"n{n}")
        client.log_param(run.info.run_id, "n", n)
        for epoch in range(1, EPOCHS + 1):
            for key, value in metrics_at(epoch).items():
                client.log_metric(run.info.run_id, key, value, step=epoch)
        client.set_terminated(run.info.run_id)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> list[dict]:
    global EPOCHS, REPEATS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 epochs, one repeat: smoke run")
    ap.add_argument("--json", action="store_true", help="print the rows as a last JSON line")
    args = ap.parse_args(argv)
    if args.quick:
        EPOCHS, REPEATS = 5, 1
    with tempfile.TemporaryDirectory() as tmp:
        server = MlflowServer(Path(tmp)).start()
        try:
            st = start_study(server.uri, "bench", "bench", {}, {}, None)
            batched(server.uri, st.experiment_id, st.run_id)  # warm-up (connections, imports)
            naive(server.uri, st.experiment_id, st.run_id)
            b = [batched(server.uri, st.experiment_id, st.run_id) for _ in range(REPEATS)]
            n = [naive(server.uri, st.experiment_id, st.run_id) for _ in range(REPEATS)]
        finally:
            server.stop()
    values = RUNS * METRICS * EPOCHS
    print(
        f"{RUNS} runs x {METRICS} metrics x {EPOCHS} epochs = {values} values, median of {REPEATS}"
    )
    print(f"batched TrialRun (as a study opens it): {statistics.median(b):.3f} s  {b}")
    print(f"naive log_metric per value:             {statistics.median(n):.3f} s  {n}")
    print(f"speed-up: {statistics.median(n) / statistics.median(b):.1f}x")
    quick = "quick: smoke run, not a result; " if args.quick else ""
    rows = [
        row(
            "tracking_overhead",
            "one log_metric call per value / batched TrialRun (wall time)",
            statistics.median(n) / statistics.median(b),
            f"the same {values} values logged to a local mlflow server one call each",
            None,
            note=f"{quick}{RUNS} runs x {METRICS} metrics x {EPOCHS} epochs, median of "
            f"{REPEATS}: {statistics.median(n):.3f} s vs {statistics.median(b):.3f} s",
        )
    ]
    if args.json:
        emit(rows)
    return rows


def run(quick: bool = False) -> list[dict]:
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
