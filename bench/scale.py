"""Scale: prepare and one WRMF trial on the synthetic generator at up to 50M interactions.

Issue 6: at 1M users x 200k items x 50M interactions, the data preparation (threshold + split)
and one WRMF trial at 64 factors for 10 epochs with per-epoch evaluation must fit in this
machine's 24 GiB, with wall time and peak memory reported per stage, no users x items dense
matrix at any point, and the growth of time from 1M to 10M to 50M interactions reported.

Every size keeps 50 interactions per user and 5 users per item: 1M = 20k users x 4k items,
10M = 200k x 40k, 50M = 1M x 200k (any `<n>k` / `<n>M` size is derived the same way). The
generator's defaults are kept (rank 8, popularity exponent 0.8, affinity 2, binary likes), plus
1% verbatim duplicate rows so de-duplication has work to do; threshold 5/5, user-holdout split
(20% of users, 5 test items each), evaluation at k = 5 with training items excluded: the
embedded default config (`configs/quickstart.yaml`) at a larger size.

Each size runs in a fresh child process (its own memory high-water mark, no leftovers of the
previous size), which first runs the whole pipeline once at a tiny size so imports, numba's
cached kernels and implicit's start-up are not charged to the first stage. Stages, through the
library's own entry points:

- generate: `mfstudy.data.load` (the synthetic generator);
- clean: `mfstudy.data.clean` (drop duplicate rows, merge pairs, encode), as `prepare.ingest`;
- threshold: `mfstudy.prepare.threshold_stage` (iterative 5/5 k-core);
- split: `mfstudy.prepare.split_stage` (CSR, user-holdout split, statistics);
- trial: `mfstudy.tuning.run_trial` -- what `mfstudy.tuning.one_trial` runs once it has the
  prepared data: build the model, fit with the per-epoch callback that evaluates
  (`mfstudy.evaluation.evaluate_model`: train/test precision@5, recall, nDCG, MAP, train/test
  all-cells MSE over the held-out users) and reports to Optuna. The study is an in-memory
  Optuna study, the search space is fixed (factors 64, regularization 1, alpha 10, iterations
  10), pruning is off and there is no tracker (no MLflow); threads = os.cpu_count(), capped
  with `limit_threads` as `one_trial` does. To split the trial into fit and evaluation time,
  `evaluate_model` is wrapped (a pass-through that only takes timestamps and memory readings)
  inside `mfstudy.tuning._worker` for the duration of the trial; the model and metrics are
  untouched.

Memory: before a stage the process's RSS high-water mark is reset (writing "5" to
/proc/self/clear_refs; checked to work at start-up, otherwise a thread samples VmRSS every
5 ms) and VmHWM is read after it, so a stage's peak includes the data earlier stages still
hold. "+peak" is that peak minus the RSS at the stage's start: what the stage itself
allocated at most. Dense check: for every stage, +peak < 5% of n_users x n_items x 8 bytes
(the generator's dimensions) is asserted where that bound is at least 1 GiB (smaller dense
matrices are not distinguishable from ordinary working memory); the growth of +peak with
size (against 10x/5x more interactions and 100x/25x more cells) is the discriminating test.

    python bench/scale.py [--sizes 1M,10M,50M] [--epochs 10] [--factors 64] [--quick] [--json]

`--quick`: 1M only, 2 epochs. `--json`: the last stdout line is `{"rows": [...]}` in the
run_all format. Measured: the 50M size takes ~25 minutes on this 2-core machine while other
work shares it, and peaks at ~6 GiB (the clean stage).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GIB = 1 << 30
MIB = 1 << 20
ITEMS_PER_USER = 50
USERS_PER_ITEM = 5
DUPLICATE_FRACTION = 0.01
DENSE_SHARE = 0.05
"""A stage may allocate at most this share of the dense users x items float64 matrix."""
DENSE_CHECK_MIN = GIB
"""The dense check is asserted only where DENSE_SHARE of the dense matrix is at least this."""
MEMORY_GOAL_GIB = 24.0
STAGES = ("generate", "clean", "threshold", "split", "trial")
WARMUP_SIZE = "20k"


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    label: str
    n_users: int
    n_items: int
    n_interactions: int

    @property
    def dense_bytes(self) -> int:
        return self.n_users * self.n_items * 8


def parse_size(label: str) -> Size:
    """`1M`, `10M`, `50M`, `200k`, `2500000`: interactions, with 50 per user and 5 per item."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", label)
    if not m:
        raise SystemExit(f"bench/scale.py: bad size {label!r} (expected e.g. 1M, 10M, 200k)")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    nnz = round(float(m.group(1)) * scale)
    n_users = max(1, nnz // ITEMS_PER_USER)
    n_items = max(1, n_users // USERS_PER_ITEM)
    if nnz < 1_000:
        raise SystemExit(f"bench/scale.py: size {label!r} too small (at least 1k interactions)")
    return Size(label.strip(), n_users, n_items, nnz)


# --------------------------------------------------------------------------- memory


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def rss() -> int:
    """Current resident set size in bytes."""
    return _status_kib("VmRSS") * 1024


class PeakMeter:
    """Peak RSS since the last `reset()`: the kernel's VmHWM when it can be reset, otherwise a
    sampling thread (which can miss a peak shorter than its 5 ms period)."""

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs" if self._hwm_reset_works() else "sampled VmRSS"
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.method == "sampled VmRSS":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    @staticmethod
    def _clear() -> None:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    def _hwm_reset_works(self) -> bool:
        import numpy as np

        try:
            a = np.ones(128 * MIB // 8)  # touched: raises the high-water mark by 128 MiB
            del a  # large numpy buffers are unmapped on release, so RSS drops back
            before = _status_kib("VmHWM") * 1024
            self._clear()
            after = _status_kib("VmHWM") * 1024
        except OSError:
            return False
        return before - after > 64 * MIB and after <= rss() + 16 * MIB

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, rss())

    def reset(self) -> None:
        if self._thread is None:
            self._clear()
        else:
            self._sampled = rss()

    def peak(self) -> int:
        if self._thread is None:
            return _status_kib("VmHWM") * 1024
        return max(self._sampled, rss())


@dataclass
class Measure:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak: int = 0
    start_rss: int = 0
    end_rss: int = 0
    load1: float = 0.0
    """1-minute load average when the phase ended (other processes competing for the cores)."""

    @property
    def increment(self) -> int:
        return self.peak - self.start_rss


class Stopwatch:
    """Wall time, CPU time (all threads) and peak RSS of consecutive phases."""

    def __init__(self, meter: PeakMeter) -> None:
        self.meter = meter
        self.overall_peak = 0

    def start(self) -> tuple[float, float, int]:
        self.meter.reset()
        return time.perf_counter(), time.process_time(), rss()

    def stop(self, started: tuple[float, float, int]) -> Measure:
        t0, c0, r0 = started
        peak = self.meter.peak()
        self.overall_peak = max(self.overall_peak, peak)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Measure(wall, cpu, peak, r0, rss(), load1())

    @contextlib.contextmanager
    def phase(self, out: dict[str, Measure], name: str) -> Iterator[None]:
        started = self.start()
        yield
        out[name] = self.stop(started)


# --------------------------------------------------------------------------- one size


@dataclass
class EpochRecord:
    epoch: int
    fit: Measure
    evaluation: Measure
    metrics: dict[str, float]


@dataclass
class SizeResult:
    size: Size
    threads: int
    meter: str
    stages: dict[str, Measure]
    epochs: list[EpochRecord]
    overall_peak: int
    data: dict[str, Any]
    loadavg_before: str
    loadavg_after: str
    trial_state: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class _NoTracking:
    """A TrialLog that keeps nothing: the trial runs without MLflow."""

    run_id: str | None = None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        return None

    def end(
        self, state: str, best_epoch: int | None, best_value: float | None, error: str | None = None
    ) -> None:
        return None


def _no_tracking(number: int, params: dict[str, Any]) -> _NoTracking:
    return _NoTracking()


def study_config(size: Size, epochs: int, factors: int, threads: int) -> Any:
    from mfstudy.config import load_config

    return load_config(
        None,
        [
            f"name=scale-{size.label}",
            f"data.n_users={size.n_users}",
            f"data.n_items={size.n_items}",
            f"data.n_interactions={size.n_interactions}",
            f"data.duplicate_fraction={DUPLICATE_FRACTION}",
            "search_space.wrmf.factors=" + str(factors),
            "search_space.wrmf.regularization=1.0",
            "search_space.wrmf.alpha=10.0",
            f"search_space.wrmf.iterations={epochs}",
            "study.eval_every=1",
            "study.pruner.kind=none",
            "study.n_trials=1",
            f"study.threads_per_worker={threads}",
        ],
    )


@contextlib.contextmanager
def _timed_evaluation(watch: Stopwatch, records: list[EpochRecord]) -> Iterator[None]:
    """Wrap the evaluation a trial calls after each epoch to time fit and evaluation apart.

    The wrapper calls the real `evaluate_model` with the same arguments and returns its result;
    it only closes the running fit phase before and opens the next one after.
    """
    from mfstudy.tuning import _worker

    real = _worker.evaluate_model
    state = {"fit": watch.start()}

    def timed(*args: Any, **kwargs: Any) -> dict[str, float]:
        fit = watch.stop(state["fit"])
        started = watch.start()
        metrics = real(*args, **kwargs)
        evaluation = watch.stop(started)
        records.append(EpochRecord(len(records) + 1, fit, evaluation, dict(metrics)))
        state["fit"] = watch.start()
        return metrics

    _worker.evaluate_model = timed
    try:
        yield
    finally:
        _worker.evaluate_model = real


def run_trial_once(prepared: Any, cfg: Any, threads: int) -> Any:
    """One study trial on `prepared` through `run_trial`, without MLflow."""
    import optuna

    from mfstudy.threads import limit_threads
    from mfstudy.tuning import TrialContext, make_pruner, make_sampler, run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=cfg.name,
        direction=cfg.direction,
        sampler=make_sampler(cfg.study.sampler, cfg),
        pruner=make_pruner(cfg.study.pruner),
    )
    ctx = TrialContext(
        config=cfg,
        storage="in-memory",  # run_trial never opens it; the study object is passed in
        study_name=cfg.name,
        prepared_dir=Path(tempfile.gettempdir()),
        n_trials=1,
        threads=threads,
        tracker=_no_tracking,
    )
    handle = limit_threads(threads)
    try:
        return run_trial(study.ask(), study, prepared, ctx)
    finally:
        del handle


def run_size(size: Size, epochs: int, factors: int, watch: Stopwatch | None = None) -> SizeResult:
    import gc

    from mfstudy.data import clean, load
    from mfstudy.prepare import Ingested, split_stage, threshold_stage

    meter = PeakMeter() if watch is None else watch.meter
    watch = watch or Stopwatch(meter)
    threads = os.cpu_count() or 1
    cfg = study_config(size, epochs, factors, threads)
    stages: dict[str, Measure] = {}
    records: list[EpochRecord] = []
    load_before = Path("/proc/loadavg").read_text().strip()

    with watch.phase(stages, "generate"):
        raw = load(cfg.data, seed=cfg.seed)
    rows_generated = raw.rows_read
    with watch.phase(stages, "clean"):
        inter, cstats = clean(raw, cfg.data.weighting)
        ingested = Ingested(inter, raw.source, cstats)
        del raw, inter  # `prepare.ingest` returns only the cleaned interactions
        gc.collect()
    with watch.phase(stages, "threshold"):
        thresholded = threshold_stage(ingested, cfg)
    with watch.phase(stages, "split"):
        prepared = split_stage(thresholded, cfg)
        del thresholded, ingested  # `prepare` keeps only the Prepared
        gc.collect()
    with watch.phase(stages, "trial"), _timed_evaluation(watch, records):
        outcome = run_trial_once(prepared, cfg, threads)
    # The per-epoch phases reset the high-water mark; the trial's peak is the largest of them.
    trial = stages["trial"]
    trial.peak = max([trial.peak] + [max(r.fit.peak, r.evaluation.peak) for r in records])

    st = prepared.stats
    data = {
        "rows_generated": rows_generated,
        "duplicates_dropped": st["duplicates_dropped"],
        "before_threshold": st["before_threshold"],
        "after_threshold": st["after_threshold"],
        "threshold_passes": st["threshold"]["passes"],
        "split": st["split"],
    }
    return SizeResult(
        size=size,
        threads=threads,
        meter=meter.method,
        stages=stages,
        epochs=records,
        overall_peak=watch.overall_peak,
        data=data,
        loadavg_before=load_before,
        loadavg_after=Path("/proc/loadavg").read_text().strip(),
        trial_state=outcome.state,
        extra={"error": outcome.error, "best_epoch": outcome.best_epoch, "value": outcome.value},
    )


def child(label: str, epochs: int, factors: int, out: Path) -> None:
    """Run one size in this (fresh) process and write its result as JSON to `out`."""
    import numpy as np  # noqa: F401  (imported before the meter checks itself)

    meter = PeakMeter()
    watch = Stopwatch(meter)
    # Warm-up at a tiny size: imports, numba's on-disk kernels, implicit's first fit.
    run_size(parse_size(WARMUP_SIZE), 1, factors, watch)
    watch.overall_peak = 0
    msg = f"[{label}] meter: {meter.method}; warm-up done, RSS {rss() / MIB:.0f} MiB"
    print(msg, file=sys.stderr, flush=True)
    res = run_size(parse_size(label), epochs, factors, watch)
    out.write_text(json.dumps(asdict(res)))


# --------------------------------------------------------------------------- parent


def _measure(d: dict[str, Any]) -> Measure:
    return Measure(**d)


def load_result(d: dict[str, Any]) -> SizeResult:
    return SizeResult(
        size=Size(**d["size"]),
        threads=d["threads"],
        meter=d["meter"],
        stages={k: _measure(v) for k, v in d["stages"].items()},
        epochs=[
            EpochRecord(e["epoch"], _measure(e["fit"]), _measure(e["evaluation"]), e["metrics"])
            for e in d["epochs"]
        ],
        overall_peak=d["overall_peak"],
        data=d["data"],
        loadavg_before=d["loadavg_before"],
        loadavg_after=d["loadavg_after"],
        trial_state=d["trial_state"],
        extra=d["extra"],
    )


def run_child(label: str, epochs: int, factors: int) -> SizeResult:
    with tempfile.TemporaryDirectory(prefix="mfstudy-scale-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            label,
            "--epochs",
            str(epochs),
            "--factors",
            str(factors),
            "--child-out",
            str(out),
        ]
        # Child output goes to our stderr, so --json keeps stdout for the table and the rows.
        proc = subprocess.Popen(cmd, stdout=sys.stderr, start_new_session=True)
        try:
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if rc != 0:
            raise SystemExit(f"bench/scale.py: size {label} failed (exit {rc})")
        return load_result(json.loads(out.read_text()))


def _gib(b: float) -> str:
    return f"{b / GIB:.2f}"


def _ratio(a: float, b: float, floor: float = 1e-9) -> str:
    return f"{a / b:.1f}x" if b > floor else "-"


def trial_parts(r: SizeResult) -> dict[str, tuple[float, float]]:
    """(wall, cpu) seconds of the trial's fit and evaluation phases, in total and per epoch."""
    n = max(len(r.epochs), 1)
    out = {}
    for key, pick in (("fit", lambda e: e.fit), ("eval", lambda e: e.evaluation)):
        wall = sum(pick(e).wall_s for e in r.epochs)
        cpu = sum(pick(e).cpu_s for e in r.epochs)
        out[key] = (wall, cpu)
        out[f"{key}/epoch"] = (wall / n, cpu / n)
    return out


def total_time(r: SizeResult) -> float:
    return sum(m.wall_s for m in r.stages.values())


def print_report(results: list[SizeResult], epochs: int, factors: int) -> None:
    labels = [r.size.label for r in results]
    first = results[0]
    print(
        f"\nscale: {factors} factors, {epochs} epochs evaluated every epoch, "
        f"{first.threads} threads (os.cpu_count), memory by {first.meter}"
    )
    print("\n## Sizes\n")
    print(
        "| size | generator users x items | rows generated | after 5/5 k-core "
        "(users x items, interactions) | held-out users | dense users x items float64 |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        s, d = r.size, r.data
        a = d["after_threshold"]
        print(
            f"| {s.label} | {s.n_users:,} x {s.n_items:,} | {d['rows_generated']:,} "
            f"({d['duplicates_dropped']:,} dup.) | {a['users']:,} x {a['items']:,}, "
            f"{a['interactions']:,} ({d['threshold_passes']} passes) | "
            f"{d['split']['heldout_users']:,} | {s.dense_bytes / GIB:,.1f} GiB |"
        )

    print("\n## Time per stage: wall s (cpu s, all threads); growth: wall (cpu)\n")
    growth_hdr = [f"{b}/{a}" for a, b in itertools.pairwise(labels)]
    print("| stage | " + " | ".join(labels + growth_hdr) + " |")
    print("|---|" + "---|" * (len(labels) + len(growth_hdr)))
    rows: list[tuple[str, list[float], list[float]]] = []
    for st in STAGES:
        ms = [r.stages[st] for r in results]
        rows.append((st, [m.wall_s for m in ms], [m.cpu_s for m in ms]))
    parts = [trial_parts(r) for r in results]
    for key in ("fit", "eval", "fit/epoch", "eval/epoch"):
        rows.append((f"  trial: {key}", [p[key][0] for p in parts], [p[key][1] for p in parts]))
    prep = [("threshold", "split")] * len(results)
    rows.append(
        (
            "prepare (threshold + split)",
            [sum(r.stages[s].wall_s for s in pr) for r, pr in zip(results, prep, strict=True)],
            [sum(r.stages[s].cpu_s for s in pr) for r, pr in zip(results, prep, strict=True)],
        )
    )
    rows.append(
        (
            "total",
            [total_time(r) for r in results],
            [sum(m.cpu_s for m in r.stages.values()) for r in results],
        )
    )
    for name, walls, cpus in rows:
        cells = [f"{w:.2f} ({c:.1f})" for w, c in zip(walls, cpus, strict=True)]
        cells += [
            f"{_ratio(w1, w0)} ({_ratio(c1, c0)})"
            for (w0, c0), (w1, c1) in itertools.pairwise(zip(walls, cpus, strict=True))
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    pad = " |" * (len(growth_hdr) + 1)
    for st in STAGES:
        loads = [f"{r.stages[st].load1:.2f}" for r in results]
        if st == STAGES[0]:
            print("| 1-min load average at the end of: | " + " | ".join([""] * len(labels)) + pad)
        print(f"| - {st} | " + " | ".join(loads) + pad)
    grow = [
        f"{b.size.label}/{a.size.label}: interactions "
        f"{b.size.n_interactions / a.size.n_interactions:.0f}x, "
        f"users x items cells {b.size.dense_bytes / a.size.dense_bytes:.0f}x"
        for a, b in itertools.pairwise(results)
    ]
    if grow:
        print("\ndata growth: " + "; ".join(grow))

    print("\n## Peak RSS per stage, GiB: peak / +peak over the stage's starting RSS")
    print("(growth: of +peak; - when the smaller +peak is under 16 MiB)\n")
    print("| stage | " + " | ".join(labels + growth_hdr) + " |")
    print("|---|" + "---|" * (len(labels) + len(growth_hdr)))
    for st in STAGES:
        ms = [r.stages[st] for r in results]
        cells = [f"{_gib(m.peak)} / +{_gib(m.increment)}" for m in ms]
        cells += [
            _ratio(b.increment, a.increment, floor=16 * MIB) for a, b in itertools.pairwise(ms)
        ]
        print(f"| {st} | " + " | ".join(cells) + " |")
    fit_peaks = [max(e.fit.peak for e in r.epochs) for r in results]
    ev_peaks = [max(e.evaluation.peak for e in r.epochs) for r in results]
    pad = " |" * (len(growth_hdr) + 1)
    print("| trial: fit phases | " + " | ".join(_gib(p) for p in fit_peaks) + pad)
    print("| trial: evaluation phases | " + " | ".join(_gib(p) for p in ev_peaks) + pad)
    print("| process overall | " + " | ".join(_gib(r.overall_peak) for r in results) + pad)

    print("\n## Dense-matrix check (+peak of the worst stage against n_users x n_items x 8)\n")
    print("| size | dense | 5% bound | worst stage +peak | share of dense | checked |")
    print("|---|---|---|---|---|---|")
    for r in results:
        bound = DENSE_SHARE * r.size.dense_bytes
        worst = max(r.stages.items(), key=lambda kv: kv[1].increment)
        checked = "asserted" if bound >= DENSE_CHECK_MIN else "too small to tell, not asserted"
        print(
            f"| {r.size.label} | {r.size.dense_bytes / GIB:,.1f} GiB | {bound / GIB:,.2f} GiB | "
            f"{worst[0]} +{_gib(worst[1].increment)} GiB | "
            f"{100 * worst[1].increment / r.size.dense_bytes:.3f}% | {checked} |"
        )

    for r in results:
        print(f"\n## Per epoch at {r.size.label} (trial {r.trial_state})\n")
        print("| epoch | fit s | eval s | fit peak GiB | eval peak GiB | test p@5 | test MSE |")
        print("|---|---|---|---|---|---|---|")
        for e in r.epochs:
            m = e.metrics
            print(
                f"| {e.epoch} | {e.fit.wall_s:.2f} | {e.evaluation.wall_s:.2f} | "
                f"{_gib(e.fit.peak)} | {_gib(e.evaluation.peak)} | "
                f"{m.get('test_precision_at_5', float('nan')):.4f} | "
                f"{m.get('test_mse', float('nan')):.3e} |"
            )
        print(f"\nload average before: {r.loadavg_before}; after: {r.loadavg_after}")


def check(results: list[SizeResult]) -> list[str]:
    """The assertions: each trial completes; no stage allocates a dense users x items matrix."""
    problems = []
    for r in results:
        if r.trial_state != "complete":
            problems.append(f"{r.size.label}: trial {r.trial_state}: {r.extra.get('error')}")
        bound = DENSE_SHARE * r.size.dense_bytes
        if bound < DENSE_CHECK_MIN:
            continue
        for st, m in r.stages.items():
            if m.increment >= bound:
                problems.append(
                    f"{r.size.label}: stage {st} allocated {_gib(m.increment)} GiB, "
                    f">= {100 * DENSE_SHARE:.0f}% of the dense matrix ({_gib(bound)} GiB)"
                )
    return problems


def json_rows(results: list[SizeResult]) -> list[dict[str, Any]]:
    big = results[-1]
    label = big.size.label
    rows: list[dict[str, Any]] = [
        {
            "bench": "scale",
            "name": f"peak memory at {label} (prepare + WRMF trial)",
            "value": round(big.overall_peak / GIB, 3),
            "unit": "GiB",
            "against": "this machine's RAM",
            "goal": f"<= {MEMORY_GOAL_GIB:g} GiB",
            "met": big.overall_peak / GIB <= MEMORY_GOAL_GIB,
        },
        {
            "bench": "scale",
            "name": f"total time at {label} (generate to trial end)",
            "value": round(total_time(big), 2),
            "unit": "s",
            "against": "",
            "goal": "report",
            "met": None,
        },
    ]
    for a, b in itertools.pairwise(results):
        data = b.size.n_interactions / a.size.n_interactions
        rows.append(
            {
                "bench": "scale",
                "name": f"time growth {a.size.label} -> {b.size.label}",
                "value": round(total_time(b) / total_time(a), 2),
                "unit": "x",
                "against": f"{data:g}x more interactions",
                "goal": "report (linear in interactions would be "
                f"{data:g}x; cells grow {b.size.dense_bytes / a.size.dense_bytes:g}x)",
                "met": None,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,50M", help="comma-separated, e.g. 1M,10M,50M")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="1M only, 2 epochs")
    ap.add_argument("--json", action="store_true", help="last stdout line: the run_all rows")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs < 1 or args.factors < 1:
        raise SystemExit("bench/scale.py: --epochs and --factors must be positive")

    if args.child is not None:
        child(args.child, args.epochs, args.factors, Path(args.child_out))
        return

    labels, epochs = [s for s in args.sizes.split(",") if s.strip()], args.epochs
    if args.quick:
        labels, epochs = ["1M"], 2
    sizes = [parse_size(s) for s in labels]
    results = []
    for s in sizes:
        load = Path("/proc/loadavg").read_text().strip()
        print(
            f"running {s.label}: {s.n_users:,} users x {s.n_items:,} items x "
            f"{s.n_interactions:,} interactions; load {load}",
            file=sys.stderr,
            flush=True,
        )
        results.append(run_child(s.label, epochs, args.factors))
    print_report(results, epochs, args.factors)
    problems = check(results)
    for p in problems:
        print(f"FAILED: {p}")
    if args.json:
        print(json.dumps({"rows": json_rows(results)}))
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
