"""A screenshot of the MLflow runs table sorted by a metric, in real headless Chromium, checked.

Starts a real `mlflow server` (SQLite, on 127.0.0.1, as the tests start it), runs a small
`mfstudy study` against it (8 trials on small synthetic data, one worker), opens the
experiment's runs table in headless Chromium sorted by `--metric`, descending, and saves a PNG.
Then it checks what the page shows, not only that a file was written: the DOM Chromium rendered
for the same URL is parsed (`--dump-dom`) and its trial runs, in the order of their rows, must
be the trial runs `MlflowClient.search_runs(order_by=["metrics.`<metric>` DESC"])` returns, and
the metric's column must be there with the client's value in every trial's row. The same is
checked for the ascending sort (a deliberately different order, so a sort that was not applied
cannot pass), and for the plain URL parameters `?orderByKey=metrics.`<metric>`&orderByAsc=false`
(the order only: with them MLflow does not show the column). Exit status 1 if any check fails.

    apt-get install -y chromium      # Debian's Chromium; nothing else is needed
    python bench/screenshot.py [--metric best_test_precision_at_5] [--out PATH]

`--metric test_precision_at_5` for trial runs that do not log `best_<metric>` yet.

How the page is sorted and shows the column. MLflow 3.17's runs table reads its sort from the
URL (`orderByKey`, `orderByAsc`), but which columns it shows only from the browser's local
storage (a fresh browser shows none of the metrics), or from a saved view: an experiment tag
`mlflow.sharedViewState.<key>` holding the view state, opened with `?viewStateShareKey=<key>`
(the page's "Views" menu; MLflow ignores the view when sort parameters are in the URL too). So
the script saves two views on the experiment, sorted by the metric descending and ascending, each
showing the metric column and the trial's state tag, and screenshots the descending one. The
experiment also gets the tag `mlflow.experimentKind=custom_model_development` (if it has no kind
yet), without which MLflow may open it on its GenAI (traces) pages.

Not part of the test suite: it needs Chromium, which CI does not install.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from servers import MlflowServer  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "screenshots" / "mlflow-runs-by-best.png"
STUDY = [
    "--n-trials",
    "8",
    "--workers",
    "1",
    "--set",
    "name=screenshot",
    "--set",
    "data.n_users=600",
    "--set",
    "data.n_items=300",
    "--set",
    "data.n_interactions=20000",
]
KIND_TAG = "mlflow.experimentKind"
STATE_TAG = "mfstudy.state"
VIEW_TAG = "mlflow.sharedViewState."
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


def metric_col(metric: str) -> str:
    """The runs table's column id (and sort key) of a metric."""
    return f"metrics.`{metric}`"


def find_chromium(given: str | None) -> str:
    for name in [given] if given else ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: apt-get install -y chromium (or pass --chromium PATH)")


def mfstudy_exe() -> str:
    exe = Path(sys.executable).with_name("mfstudy")
    return str(exe) if exe.exists() else "mfstudy"


def run_study(uri: str, tmp: Path) -> None:
    cmd = [mfstudy_exe(), "study", *STUDY, "--set", f"tracking.uri={uri}"]
    cmd += ["--set", f"workdir={tmp / 'runs'}"]
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        sys.exit(f"mfstudy study failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")


@dataclass
class Trial:
    run_id: str
    name: str
    value: float | None


def client_order(client, exp_id: str, metric: str, direction: str) -> list[Trial]:
    """The experiment's trial runs as MlflowClient orders them by `metric` (`direction`)."""
    runs = client.search_runs(
        [exp_id],
        filter_string="tags.`mfstudy.role` = 'trial'",
        order_by=[f"metrics.`{metric}` {direction}"],
        max_results=1000,
    )
    return [Trial(r.info.run_id, r.info.run_name, r.data.metrics.get(metric)) for r in runs]


def save_view(client, exp_id: str, key: str, name: str, metric: str, ascending: bool) -> None:
    """A saved view of the runs table (MLflow's "Views" menu): sorted by `metric`, showing its
    column (wide enough for the whole value) and each trial's state."""
    state = {
        "orderByKey": metric_col(metric),
        "orderByAsc": ascending,
        "selectedColumns": [metric_col(metric), f"tags.`{STATE_TAG}`"],
        # MLflow applies a width only to a column listed in columnOrder.
        "columnOrder": [metric_col(metric), f"tags.`{STATE_TAG}`"],
        "columnWidths": {metric_col(metric): 260, f"tags.`{STATE_TAG}`": 130},
    }
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(exp_id, VIEW_TAG + key, json.dumps(envelope))


@dataclass
class Row:
    run_id: str
    cells: dict[str, str] = field(default_factory=dict)


class RunsTable(HTMLParser):
    """The runs table's rows (ag-grid: `role=row` with `row-index` and `row-id`, the run's id;
    its cells carry `col-id`) and header column ids, from the DOM Chromium dumped."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, Row] = {}
        self.header: set[str] = set()
        self._stack: list[tuple[str, int | None, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "ag-header-cell" in (a.get("class") or "").split() and a.get("col-id"):
            self.header.add(a["col-id"] or "")
        if tag in VOID:
            return
        row = None
        if a.get("role") == "row" and a.get("row-index") is not None and a.get("row-id"):
            row = int(a["row-index"] or 0)
            known = self.rows.setdefault(row, Row(a["row-id"] or ""))
            # The pinned and the scrolled part of a row are two elements with the same ids.
            assert known.run_id == a["row-id"], f"row {row}: {known.run_id} vs {a['row-id']}"
        self._stack.append((tag, row, a.get("col-id")))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        row = next((r for _, r, _ in reversed(self._stack) if r is not None), None)
        col = next((c for _, _, c in reversed(self._stack) if c is not None), None)
        if row is not None and col is not None:
            cells = self.rows[row].cells
            cells[col] = cells.get(col, "") + data
            # A run's name is its link's text (the cell also holds its color's hex code).
            if any(tag == "a" for tag, _, _ in self._stack):
                cells[col + " link"] = cells.get(col + " link", "") + data

    def ordered(self) -> list[Row]:
        return [self.rows[i] for i in sorted(self.rows)]


class Browser:
    def __init__(self, exe: str, tmp: Path, size: str, budget_ms: int) -> None:
        self.exe, self.tmp, self.size, self.budget_ms = exe, tmp, size, budget_ms
        self.calls = 0

    def run(self, url: str, *mode: str) -> str:
        """Chromium on `url` with a fresh profile; the SPA gets `budget_ms` of virtual time."""
        self.calls += 1
        cmd = [
            self.exe,
            "--headless",
            "--no-sandbox",  # root
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--force-device-scale-factor=1",
            f"--user-data-dir={self.tmp / f'chromium-{self.calls}'}",
            f"--window-size={self.size}",
            f"--virtual-time-budget={self.budget_ms}",
            *mode,
            url,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            sys.exit(f"chromium failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}")
        return res.stdout

    def screenshot(self, url: str, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.run(url, f"--screenshot={out}")
        if not out.is_file() or out.stat().st_size == 0:
            sys.exit(f"chromium wrote no screenshot to {out}")

    def table(self, url: str) -> RunsTable:
        parser = RunsTable()
        parser.feed(self.run(url, "--dump-dom"))
        return parser


def check(
    label: str, table: RunsTable, expected: list[Trial], metric: str, column: bool
) -> list[str]:
    """What is wrong with the page's trial rows against the client's order (empty if none)."""
    want = [t.run_id for t in expected]
    by_id = {t.run_id: t for t in expected}
    rows = [r for r in table.ordered() if r.run_id in by_id]
    got = [r.run_id for r in rows]
    names = [by_id[i].name for i in got]
    print(f"{label}: page {' '.join(names) or '(no trial rows)'}")
    problems = []
    if got != want:
        problems.append(
            f"{label}: the page's trial order {names} is not the client's "
            f"{[t.name for t in expected]}"
        )
    for r in rows:
        name = r.cells.get("attributes.`Run Name` link", "").strip()
        if name != by_id[r.run_id].name:
            problems.append(f"{label}: row of {by_id[r.run_id].name} shows run name {name!r}")
    if not column:
        return problems
    col = metric_col(metric)
    if col not in table.header:
        return [*problems, f"{label}: no column {col} in the table (columns: {table.header})"]
    for r in rows:
        trial = by_id[r.run_id]
        shown = r.cells.get(col, "").strip()
        if trial.value is None:
            ok = shown in ("", "-")
        else:
            try:
                ok = float(shown) == trial.value
            except ValueError:
                ok = False
        if not ok:
            problems.append(f"{label}: {trial.name} shows {metric} {shown!r}, not {trial.value}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metric", default="best_test_precision_at_5", help="the metric to sort by")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to save the PNG")
    ap.add_argument("--chromium", help="the Chromium executable (default: chromium on PATH)")
    ap.add_argument("--window", default="1600,1000", help="window size W,H")
    ap.add_argument("--budget-ms", type=int, default=15000, help="virtual time for the page")
    args = ap.parse_args(argv)
    exe = find_chromium(args.chromium)
    metric = args.metric

    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="mfstudy-shot-") as td:
        tmp = Path(td)
        server = MlflowServer(tmp / "mlflow").start()
        try:
            run_study(server.uri, tmp)
            client = MlflowClient(server.uri)
            exp = client.get_experiment_by_name("screenshot")
            assert exp is not None, "the study made no experiment 'screenshot'"
            if KIND_TAG not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, KIND_TAG, "custom_model_development")
            desc = client_order(client, exp.experiment_id, metric, "DESC")
            asc = client_order(client, exp.experiment_id, metric, "ASC")
            if not any(t.value is not None for t in desc):
                print(f"no trial run has the metric {metric!r}", file=sys.stderr)
                return 1
            save_view(client, exp.experiment_id, "by-metric-desc", f"{metric} desc", metric, False)
            save_view(client, exp.experiment_id, "by-metric-asc", f"{metric} asc", metric, True)

            base = f"{server.uri}/#/experiments/{exp.experiment_id}/runs"
            url_desc = f"{base}?viewStateShareKey=by-metric-desc"
            url_asc = f"{base}?viewStateShareKey=by-metric-asc"
            key = urllib.parse.quote(metric_col(metric), safe=".")
            url_params = f"{base}?orderByKey={key}&orderByAsc=false"

            browser = Browser(exe, tmp, args.window, args.budget_ms)
            browser.screenshot(url_desc, args.out)
            print(f"screenshot: {args.out} ({args.out.stat().st_size} bytes) of {url_desc}")
            print(f"client, {metric} DESC: " + " ".join(f"{t.name}={t.value}" for t in desc))
            print(f"client, {metric} ASC:  " + " ".join(t.name for t in asc))
            problems = check("view desc", browser.table(url_desc), desc, metric, column=True)
            problems += check("view asc", browser.table(url_asc), asc, metric, column=True)
            problems += check("URL params desc", browser.table(url_params), desc, metric, False)
            if [t.run_id for t in desc] == [t.run_id for t in asc]:
                problems.append("ascending and descending give the same order: nothing to tell")
        finally:
            server.stop()
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"ok: the page's {len(desc)} trial runs are in the client's order by {metric}, both ways")
    return 0


if __name__ == "__main__":
    sys.exit(main())
