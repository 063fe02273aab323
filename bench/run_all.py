"""Run every benchmark, each in a fresh process, and print one table of their headline ratios.

Run from the repo root:

    python bench/run_all.py                      # full settings (those of bench/RESULTS.md)
    python bench/run_all.py --quick              # smoke run of everything at small sizes
    python bench/run_all.py --only eval_speed,scale --save results.json

Each benchmark runs as `python bench/<name>.py --json [--quick] [its full-size arguments]` in its
own process (and process group), so none shares thread pools, JIT state, imports or servers with
another. Its output is echoed to stderr as it runs; the table (and the machine: cores, date,
versions, commit, the command) goes to stdout, as Markdown ready to paste.

Protocol of a benchmark script: with `--json` it prints, as the LAST line of its stdout, one JSON
object `{"rows": [row, ...]}`; with `--quick` it runs at small sizes (numbers are then only a
smoke test, not results). A row is one headline ratio:

    {
      "benchmark": "eval_speed",      # the script's name, bench/<benchmark>.py
      "measure": "recipe / ours, lastfm-2k",   # what the ratio is: <numerator> / <denominator>
      "value": 27.3,                  # the measured ratio (float); null if it was not measured
      "against": "the blog's evaluation (dense scores, argsort per user)",   # the reference
      "goal": ">= 20",                # "<op> <number>" (op: >=, <=, >, <), optionally followed
                                      #   by a note in parentheses; null when there is no goal
      "met": true,                    # whether the goal is met; null when there is no goal
      "note": "worst of 1 and 15 epochs",  # optional free text
      "unit": "x"                     # optional: "x" (a ratio, the default) or e.g. "GiB", "s"
    }

Ratios are dimensionless: speed-ups are `reference time / ours` with goals `>= x`, overheads are
`ours / reference` with goals `<= 1.05` (5% more wall time); a row that is not a ratio names its
unit. Rows spelled with `bench` and `name` instead of `benchmark` and `measure` are accepted
too, and a goal that is not "<op> <number>" (e.g. "report") is shown as written with the
script's `met`. `row()` below builds a row and
computes `met` from the goal unless the script passes it (when the goal has more conditions
than the ratio, e.g. search_efficiency also needs the better score). Scripts in this folder
import it (`from run_all import row`); any other script can write the dict itself.

Exit status: 0 when every benchmark ran (whether or not goals were met), 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# As every bench script: tests/servers.py holds the process helpers the tests use too.
sys.path.insert(0, str(REPO / "tests"))
from servers import stop_group  # noqa: E402

# name -> (arguments for the full run as recorded in bench/RESULTS.md, arguments for --quick).
# Each script's defaults are its full settings unless listed here.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "eval_speed": (["--reps", "9"], ["--quick"]),
    "wrmf_overhead": ([], ["--quick"]),
    "explicit_speed": ([], ["--quick"]),
    "tracking_overhead": ([], ["--quick"]),
    "study_overhead": ([], ["--quick"]),
    "search_efficiency": ([], ["--quick"]),
    "parallel_scaling": ([], ["--quick"]),
    "orchestration_overhead": ([], ["--quick"]),
    "scale": ([], ["--quick"]),
}

VERSIONS = (
    "numpy",
    "scipy",
    "pandas",
    "numba",
    "implicit",
    "optuna",
    "mlflow",
    "prefect",
    "matrix-factorization",
    "scikit-surprise",
)

_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


def goal_met(value: float | None, goal: str | None) -> bool | None:
    """Whether `value` meets `goal` ("<op> <number> [(note)]"); None without a goal or value,
    or when the goal is not of that form (e.g. "report")."""
    if goal is None or value is None:
        return None
    parts = goal.split()
    if len(parts) < 2 or parts[0] not in _OPS:
        return None
    try:
        target = float(parts[1])
    except ValueError:
        return None
    return bool(_OPS[parts[0]](value, target))


def row(
    benchmark: str,
    measure: str,
    value: float | None,
    against: str,
    goal: str | None = None,
    met: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One headline ratio in the format above; `met` defaults to `value` checked against `goal`."""
    if met is None:
        met = goal_met(value, goal)
    return {
        "benchmark": benchmark,
        "measure": measure,
        "value": None if value is None else float(value),
        "against": against,
        "goal": goal,
        "met": met,
        "note": note,
    }


def emit(rows: list[dict[str, Any]]) -> None:
    """The `--json` protocol: the rows as the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps({"rows": rows}), flush=True)


# ----------------------------------------------------------------------------- running


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _git(*args: str) -> str:
    try:
        res = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "?"
    return res.stdout.strip() if res.returncode == 0 else "?"


def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in VERSIONS},
        "commit": commit,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "data_dir": os.environ.get("MFSTUDY_DATA_DIR", ""),
    }


def run_one(name: str, args: list[str], timeout: float | None) -> tuple[list[dict], float, str]:
    """Run bench/<name>.py --json <args> in its own process group; (rows, seconds, command)."""
    cmd = [sys.executable, str(BENCH / f"{name}.py"), "--json", *args]
    shown = shlex.join(["python", f"bench/{name}.py", *args])
    print(f"\n=== {shown}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    # Its own session: on a timeout or Ctrl-C the whole group (servers, workers) is stopped.
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            sys.stderr.write(f"[{name}] {line}")
            sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, term_wait=15)
        reader.join(timeout=5)
        return [_failed(name, f"still running after {timeout:.0f}s")], timeout or 0.0, shown
    except BaseException:
        stop_group(proc, term_wait=15)
        raise
    reader.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return [_failed(name, f"exit status {proc.returncode}")], seconds, shown
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                rows = [normalise(r, name) for r in json.loads(line)["rows"]]
            except (ValueError, KeyError, TypeError, AttributeError):
                break
            return rows, seconds, shown
    return [_failed(name, "no JSON rows on the last line of its output")], seconds, shown


def _failed(name: str, why: str) -> dict[str, Any]:
    note = f"FAILED: {why} (see its output above)"
    return normalise(row(name, "-", None, "-", None, None, note), name)


# ----------------------------------------------------------------------------- report


def fmt_value(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def fmt_met(m: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[m]


def normalise(r: dict[str, Any], script: str) -> dict[str, Any]:
    """A row in the format above, whichever of the accepted spellings the script used."""
    value = r.get("value")
    return {
        "benchmark": r.get("benchmark") or r.get("bench") or script,
        "measure": r.get("measure") or r.get("name") or "-",
        "value": None if value is None else float(value),
        "unit": r.get("unit") or "x",
        "against": r.get("against") or "-",
        "goal": r.get("goal"),
        "met": r.get("met"),
        "note": r.get("note") or "",
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| benchmark | measured | value | against | goal | met? | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        unit = "" if r["unit"] == "x" or r["value"] is None else f" {r['unit']}"
        cells = [
            r["benchmark"],
            r["measure"],
            fmt_value(r["value"]) + unit,
            r["against"],
            r["goal"] or "-",
            fmt_met(r["met"]),
            r["note"],
        ]
        out.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not results")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    ap.add_argument("--save", type=Path, default=None, help="also write rows + machine as JSON")
    args = ap.parse_args(argv)

    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            known = ", ".join(BENCHMARKS)
            ap.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; known: {known}")
    # Children find the real datasets the way the tests do.
    os.environ.setdefault("MFSTUDY_DATA_DIR", str(REPO.parent / "shared" / "data"))
    info = machine()

    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for name in names:
        full, quick = BENCHMARKS[name]
        got, seconds, shown = run_one(name, quick if args.quick else full, args.timeout)
        rows.extend(got)
        runs.append({"benchmark": name, "command": shown, "seconds": round(seconds, 1)})

    v = info["versions"]
    print(f"\n# Benchmarks{' (--quick: smoke run, not results)' if args.quick else ''}\n")
    print(
        f"{info['date']}; {info['cores']} cores ({info['usable_cores']} usable); "
        f"{info['platform']}; Python {info['python']}; "
        + ", ".join(f"{d} {x}" for d, x in v.items())
    )
    print(f"commit {info['commit']}; MFSTUDY_DATA_DIR={info['data_dir']}")
    print(f"command: `{info['command']}`\n")
    print(table(rows))
    print("\n| benchmark | command | wall time |\n|---|---|---|")
    for r in runs:
        print(f"| {r['benchmark']} | `{r['command']}` | {r['seconds']:.0f} s |")
    if args.save is not None:
        args.save.write_text(json.dumps({"machine": info, "runs": runs, "rows": rows}, indent=2))
    failed = any(r["note"].startswith("FAILED") for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
