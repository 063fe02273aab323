"""What orchestration costs: the Prefect study flow against a bare Optuna loop, same trials.

Run from the repo root:  python bench/orchestration_overhead.py [--trials 30] [--repeats 2]

The same trials of the shipped lastfm-2k study (`configs/lastfm-2k.yaml`, data from
$MFSTUDY_DATA_DIR/lastfm-2k, default ../shared/data) run two ways, one worker each:

(a) flow: `flows/study.py:study_flow(workers=1)` against a real Prefect server (`prefect server
    start` on 127.0.0.1, its own PREFECT_HOME, started here) with MLflow tracking to a real
    `mlflow server` (127.0.0.1, SQLite, started here): data preparation as cached tasks, each
    trial a task run (with one worker the trial runs in the flow's own process, as
    `mfstudy study` does), per-epoch metrics logged to MLflow, then summary artifacts,
    retraining, registration. Both servers share the machine's cores with the trials.
(b) bare: `optuna.create_study(...).optimize(objective, n_trials)` in-process, in-memory
    storage, no tracking, no Prefect, no pruner, warmed up first as the flow's trial worker is
    (`mfstudy.study.warm_up`); the objective builds the same model
    (`mfstudy.tuning.build_model`) and evaluates it the same way (`evaluate_model` every
    `study.eval_every` epochs and at the last, `trial.report`), returning the best epoch's
    value, as the study's trials do.

Same trials: `--trials` parameter sets drawn once from the shipped search space by a seeded
random sampler (as bench/parallel_scaling.py does) are enqueued (`enqueue_trial`) into both
studies (for the flow, into its journal before the flow starts); pruning is off in both, so
every trial trains its 38 epochs. Both use the shipped thread count for one worker
(`cores // 1`). Parameters and objective values of both are checked to be equal. Each run is a
fresh subprocess; runs alternate order over `--repeats`, the best of each side is kept.

The flow's phases come from its task runs as recorded by the Prefect server: the trial phase
runs from the end of the `open-study` task to the start of `summarize` (it includes waiting for
the trial workers' warm-up); the bare trial phase is `optimize()`. The CPU seconds the Prefect
and MLflow servers used during each run are read from /proc and printed. The headline ratio is
flow trial phase / bare trial phase. Goal: <= 1.05 (at most 5% more wall time). The whole
flow (call to return, with data preparation, retraining, registration) is reported against the
bare loop plus its data preparation, without a goal: it does more work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
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
sys.path.insert(0, str(REPO))

from parallel_scaling import data_dir, draw_params  # noqa: E402
from run_all import emit, row  # noqa: E402

CONFIG = REPO / "configs" / "lastfm-2k.yaml"
NAME = "orchestration_overhead"


# As tests/prefect_flows/conftest.py: no telemetry, no UI, mfstudy's log lines in Prefect.
def overrides(workdir: Path, trials: int, quick: bool, uri: str | None) -> list[str]:
    out = [
        f"workdir={workdir}",
        "study.workers=1",
        f"study.n_trials={trials}",
        "study.pruner.kind=none",
    ]
    if quick:
        out.append("search_space.wrmf.iterations=8")
    if uri is not None:
        out.append(f"tracking.uri={uri}")
    return out


# ----------------------------------------------------------------------------- (a) the flow


def _task_runs(flow_run_id: Any, expected: int, timeout: float = 60.0) -> list[Any]:
    """The flow run's task runs once the server has recorded at least `expected`, `end-study`
    among them, in a final state (task run states reach the server as events, a moment after
    the flow returns)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
            )
            final = [r for r in runs if r.state is not None and r.state.is_final()]
            if len(final) >= expected and any(r.name.startswith("end-study") for r in final):
                return final
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server recorded {len(final)} of {expected} task runs as finished"
                )
            time.sleep(0.5)


def flow_child(trials: int, quick: bool, uri: str) -> dict[str, Any]:
    from flows.study import study_flow
    from mfstudy.config import load_config
    from mfstudy.tuning import create_study, quiet

    quiet()
    with tempfile.TemporaryDirectory(prefix="mf-orch-flow-") as tmp:
        over = overrides(Path(tmp), trials, quick, uri)
        cfg = load_config(CONFIG, over)
        planned = draw_params(cfg, trials)
        study, _ = create_study(cfg)  # the journal the flow's open-study task resumes
        for params in planned:
            study.enqueue_trial(params)

        start = time.perf_counter()
        state = study_flow(config=str(CONFIG), overrides=over, return_state=True)
        whole = time.perf_counter() - start
        result = state.result()
        # prepare (3) + open-study + trials + at least one budget-exhausted trial task +
        # summarize, retrain, similarities, register, end-study
        tasks = _task_runs(state.state_details.flow_run_id, trials + 10)

        def first(name: str) -> Any:
            return min((t for t in tasks if t.name.startswith(name)), key=lambda t: t.start_time)

        trial_tasks = [t for t in tasks if t.name.startswith("trial-")]
        phases = {
            "prepare": _span([t for t in tasks if t.name.split("-")[0] in _PREP]),
            "open_study": _span([first("open-study")]),
            "trials": (first("summarize").start_time - first("open-study").end_time),
            "summarize": _span([first("summarize")]),
            "retrain": _span([first("retrain")]),
            "similarities": _span([first("similarities")]),
            "register": _span([first("register")]),
            "end_study": _span([first("end-study")]),
        }
        trial_start = min(t.start_time for t in trial_tasks)
        study, _ = create_study(cfg)
        return {
            "side": "flow",
            "whole_seconds": whole,
            "trial_seconds": phases["trials"].total_seconds(),
            "phases": {k: v.total_seconds() for k, v in phases.items()},
            # From the trial phase's start to the first trial task's start: waiting for the
            # trial workers' warm-up (imports, numba's cache) where it outlasted preparation.
            "pool_start_seconds": (trial_start - first("open-study").end_time).total_seconds(),
            "trial_tasks": len(trial_tasks),
            "results": _results(study),
            "busy_seconds": _busy(study),
            "planned": sorted(sorted(p.items()) for p in planned),
            "model_version": result.model_version,
        }


_PREP = {"ingest", "threshold", "split"}


def _span(tasks: list[Any]) -> dt.timedelta:
    """From the first start to the last end of `tasks` (cached task runs have no times)."""
    timed = [t for t in tasks if t.start_time is not None and t.end_time is not None]
    if not timed:
        return dt.timedelta(0)
    return max(t.end_time for t in timed) - min(t.start_time for t in timed)


def _results(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return sorted(
        [sorted(t.params.items()), t.value, t.user_attrs.get("best_epoch")]
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE
    )


def _busy(study: Any) -> float:
    """Seconds inside trials (Optuna's start to complete), summed: the time a trial itself
    took, apart from the time spent between trials."""
    return sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False)
        if t.datetime_complete is not None and t.datetime_start is not None
    )


# ----------------------------------------------------------------------------- (b) bare Optuna


def bare_child(trials: int, quick: bool) -> dict[str, Any]:
    import optuna

    from mfstudy.config import load_config
    from mfstudy.evaluation import evaluate_model
    from mfstudy.prepare import prepare
    from mfstudy.study import warm_up
    from mfstudy.threads import limit_threads
    from mfstudy.tuning import (
        build_model,
        make_sampler,
        quiet,
        suggest,
        threads_per_worker,
    )

    quiet()
    with tempfile.TemporaryDirectory(prefix="mf-orch-bare-") as tmp:
        cfg = load_config(CONFIG, overrides(Path(tmp), trials, quick, None))
    planned = draw_params(cfg, trials)
    threads = threads_per_worker(cfg, 1)
    every = cfg.study.eval_every
    maximize = cfg.direction == "maximize"

    def objective(trial: optuna.Trial) -> float:
        family, params = suggest(trial, cfg.search_space)
        model = build_model(cfg, family, params, threads)
        total = int(params.get("iterations", 0)) or None
        best: list[tuple[float, int]] = []

        def on_epoch(epoch: int, m: Any) -> None:
            if epoch % every and epoch != total:
                return
            metrics = evaluate_model(m, data.train, data.test, data.users, cfg.evaluation)
            value = metrics[cfg.metric]
            if not math.isfinite(value):
                raise RuntimeError(f"{cfg.metric} is {value} at epoch {epoch}")
            if not best or (value > best[0][0] if maximize else value < best[0][0]):
                best[:] = [(value, epoch)]
            trial.report(value, epoch)

        model.fit(data.train, callback=on_epoch)
        trial.set_user_attr("best_epoch", best[0][1])
        return best[0][0]

    # Warm as the flow's trial worker is when its trials start (imports, numba's cache, a tiny
    # fit): otherwise the bare loop's first trial would pay for that and flatter the flow.
    warm_up(cfg)
    start = time.perf_counter()
    data = prepare(cfg)
    prepared = time.perf_counter()
    study = optuna.create_study(
        direction=cfg.direction,
        sampler=make_sampler(cfg.study.sampler, cfg),
        pruner=optuna.pruners.NopPruner(),
    )
    for params in planned:
        study.enqueue_trial(params)
    handle = limit_threads(threads)
    try:
        t0 = time.perf_counter()
        study.optimize(objective, n_trials=trials)
        t1 = time.perf_counter()
    finally:
        del handle
    return {
        "side": "bare",
        "whole_seconds": t1 - start,
        "trial_seconds": t1 - t0,
        "phases": {"prepare": prepared - start, "trials": t1 - t0},
        "results": _results(study),
        "busy_seconds": _busy(study),
        "planned": sorted(sorted(p.items()) for p in planned),
    }


# ----------------------------------------------------------------------------- driver


def spawn(side: str, args: argparse.Namespace, env: dict[str, str], uri: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", side, "--trials", str(args.trials), "--uri", uri]
    if args.quick:
        cmd.append("--quick")
    res = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-5000:] + res.stderr[-20000:])
        raise SystemExit(f"{side} run failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def group_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of `pid`'s process group
    (a server and the workers it forked), read from /proc; 0.0 where there is no /proc."""
    pgid = os.getpgid(pid)
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measure(args: argparse.Namespace, root: Path) -> dict[str, list[dict[str, Any]]]:
    from servers import MlflowServer, PrefectServer

    mlflow_server = MlflowServer(root / "mlflow").launch()
    (root / "prefect-home").mkdir()
    prefect = PrefectServer(root / "prefect-home")
    runs: dict[str, list[dict[str, Any]]] = {"flow": [], "bare": []}
    try:
        prefect.start(timeout=180.0)
        mlflow_server.wait_healthy()
        for r in range(args.repeats):
            # Alternate the order so warm file caches and machine noise fall on both sides.
            for side in ("flow", "bare") if r % 2 == 0 else ("bare", "flow"):
                before = [group_cpu_seconds(s.proc.pid) for s in (prefect, mlflow_server)]
                out = spawn(side, args, prefect.env, mlflow_server.uri)
                after = [group_cpu_seconds(s.proc.pid) for s in (prefect, mlflow_server)]
                out["server_cpu"] = {
                    "prefect": after[0] - before[0],
                    "mlflow": after[1] - before[1],
                }
                runs[side].append(out)
                phases = ", ".join(f"{k} {v:.1f}s" for k, v in out["phases"].items())
                cpu = out["server_cpu"]
                print(
                    f"{side}: whole {out['whole_seconds']:.1f}s ({phases}); server CPU during "
                    f"the run: Prefect {cpu['prefect']:.1f}s, MLflow {cpu['mlflow']:.1f}s",
                    flush=True,
                )
    finally:
        prefect.stop()
        mlflow_server.stop()
    return runs


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=None, help="budget (default 30; quick 3)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per side (default 2, quick 1)")
    ap.add_argument("--quick", action="store_true", help="3 trials x 8 epochs, once: smoke run")
    ap.add_argument("--json", action="store_true", help="print the rows as a last JSON line")
    ap.add_argument("--child", choices=("flow", "bare"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--uri", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trials is None:
        args.trials = 3 if args.quick else 30
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    os.environ.setdefault("MFSTUDY_DATA_DIR", str(data_dir()))
    if not (data_dir() / "lastfm-2k" / "user_artists.dat").is_file():
        raise SystemExit(f"{data_dir() / 'lastfm-2k'}: lastfm-2k not found (set MFSTUDY_DATA_DIR)")
    if args.child == "flow":
        print(json.dumps(flow_child(args.trials, args.quick, args.uri), default=str))
        return []
    if args.child == "bare":
        print(json.dumps(bare_child(args.trials, args.quick)))
        return []

    print(
        f"cores {os.cpu_count()}; {args.trials} trials of configs/lastfm-2k.yaml, "
        f"{'8' if args.quick else '38'} epochs each evaluated every 2, no pruning, 1 worker "
        f"with {os.cpu_count()} threads; best of {args.repeats}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="mf-orch-") as root:
        runs = measure(args, Path(root))
    flow, bare = runs["flow"], runs["bare"]
    for out in flow + bare:
        if [r[0] for r in out["results"]] != out["planned"]:
            raise SystemExit(f"{out['side']} did not complete the planned trials: {out}")
    fv = {json.dumps(r[0]): (r[1], r[2]) for r in flow[0]["results"]}
    bv = {json.dumps(r[0]): (r[1], r[2]) for r in bare[0]["results"]}
    diff = max(abs(fv[k][0] - bv[k][0]) for k in fv)
    same = "yes" if fv == bv else f"NO (max |value difference| {diff:.2g})"

    tf = min(o["trial_seconds"] for o in flow)
    tb = min(o["trial_seconds"] for o in bare)
    wf = min(o["whole_seconds"] for o in flow)
    wb = min(o["whole_seconds"] for o in bare)
    pool = statistics.median(o["pool_start_seconds"] for o in flow)
    per_trial = (tf - pool - tb) / args.trials
    best_flow = min(flow, key=lambda o: o["whole_seconds"])
    busy_f = min(o["busy_seconds"] for o in flow)
    busy_b = min(o["busy_seconds"] for o in bare)
    # Each repeat ran one flow and one bare run back to back: their ratio sees the same
    # machine state, and the median over repeats shows the spread best-of hides.
    pairs = [f["trial_seconds"] / b["trial_seconds"] for f, b in zip(flow, bare, strict=True)]
    print(
        "trial phase flow / bare per repeat: "
        + ", ".join(f"{r:.3f}" for r in pairs)
        + f"; median {statistics.median(pairs):.3f}"
    )
    print(
        f"inside the trials (Optuna start to complete, summed): flow {busy_f:.1f} s, bare "
        f"{busy_b:.1f} s; between trials: flow {tf - busy_f:.1f} s, bare {tb - busy_b:.1f} s"
    )
    print()
    print("| | trial phase | whole |")
    print("|---|---|---|")
    print(f"| bare Optuna loop | {tb:.1f} s | {wb:.1f} s (with data preparation) |")
    print(f"| Prefect flow + MLflow server | {tf:.1f} s | {wf:.1f} s |")
    print(
        f"\nflow / bare, trial phase: {tf / tb:.3f} ({100 * (tf / tb - 1):+.1f}%); whole: "
        f"{wf / wb:.3f}. Of the flow's extra trial time: warm-up wait {pool:.1f}s, "
        f"then {1000 * per_trial:.0f} ms per trial. Same parameters, values and best epochs: "
        f"{same}.\nflow phases (best whole run): "
        + ", ".join(f"{k} {v:.1f}s" for k, v in best_flow["phases"].items())
    )
    quick = "quick: smoke run, not a result; " if args.quick else ""
    rows = [
        row(
            NAME,
            "Prefect flow + MLflow / bare Optuna loop, trial phase wall time",
            tf / tb,
            f"the same {args.trials} lastfm-2k trials in optimize(), in-process, no tracking",
            "<= 1.05",
            note=f"{quick}{tf:.1f} s vs {tb:.1f} s, best of {args.repeats}, 1 worker; per "
            f"repeat {' '.join(f'{r:.3f}' for r in pairs)} (median "
            f"{statistics.median(pairs):.3f}); warm-up wait {pool:.1f} s, "
            f"{1000 * per_trial:.0f} ms per trial",
        ),
        row(
            NAME,
            "whole flow / bare loop with data preparation",
            wf / wb,
            "the bare loop plus prepare(); the flow also retrains, registers, logs artifacts",
            None,
            note=f"{quick}{wf:.1f} s vs {wb:.1f} s",
        ),
    ]
    if args.json:
        emit(rows)
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    return main(["--quick"] if quick else [])


if __name__ == "__main__":
    main()
