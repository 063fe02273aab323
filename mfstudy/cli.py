"""The `mfstudy` command line.

User mistakes (`MFStudyError`) are printed as one line on stderr with exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mfstudy import __version__
from mfstudy.errors import MFStudyError
from mfstudy.secrets import scrub

app = typer.Typer(
    name="mfstudy",
    help="Hyperparameter studies for matrix-factorization recommenders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MFStudyError as err:
            # Plain write, not rich: a one-line message must not be re-wrapped to the terminal.
            # scrub: a library's message may quote the URL it failed on, password and all.
            sys.stderr.write(f"mfstudy: error: {scrub(str(err))}\n")
            raise typer.Exit(err.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mfstudy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Hyperparameter studies for matrix-factorization recommenders."""


ConfigArg = Annotated[
    Path | None,
    typer.Argument(help="Study config (YAML). Omitted: the embedded synthetic quickstart."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set split.k=5 (repeatable)."),
]


@app.command()
@_user_errors
def prepare(
    config: ConfigArg = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default runs/<name>/data).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Ingest, de-duplicate, threshold and split; write matrices, id maps and stats.json."""
    from mfstudy.config import load_config
    from mfstudy.prepare import check_output_folder, write_prepared
    from mfstudy.prepare import prepare as run_prepare

    cfg = load_config(config, set_ or [])
    dest = out or Path("runs") / cfg.name / "data"
    check_output_folder(dest)  # before the data is read, not after minutes of work
    start = time.perf_counter()
    with console.status(f"preparing [bold]{cfg.name}[/] ({cfg.data.source})"):
        prepared = run_prepare(cfg)
        dest = write_prepared(prepared, dest)
    _print_stats(prepared.stats, time.perf_counter() - start)
    typer.echo(str(dest))


@app.command()
@_user_errors
def study(
    config: ConfigArg = None,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", min=1, help="Trials to finish (study.n_trials).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Parallel trial processes.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Seconds before no new trial starts.")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Prepare the data, run the Optuna study in parallel, retrain the best and register it."""
    from mfstudy.config import load_config
    from mfstudy.study import run_study
    from mfstudy.tuning import quiet

    quiet()
    cfg = load_config(config, set_ or [], n_trials=n_trials, workers=workers, timeout=timeout)
    with _progress_bar(cfg.metric) as on_progress:
        result = run_study(cfg, on_progress=on_progress)
    _print_result(cfg, result)


@contextmanager
def _progress_bar(metric: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A trials progress bar, fed by the study's progress callback (`run_study`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    # The bar starts with the first trial, after every check passed: an error is then the
    # only line printed.
    with ExitStack() as stack:
        bars: list[tuple[Progress, Any]] = []

        def on_progress(p: dict[str, Any]) -> None:
            if not bars:
                bar = stack.enter_context(Progress(*columns, console=console))
                desc = f"{p['study']} trials"  # the study for this data, see run_study
                bars.append((bar, bar.add_task(desc, total=p["total"], info="")))
            bar, task = bars[0]
            best = "-" if p["best"] is None else f"{p['best']:.4f}"
            info = f"best {metric} {best} | pruned {p['pruned']} | failed {p['fail']}"
            bar.update(task, completed=p["finished"], info=info)

        yield on_progress


@app.command()
@_user_errors
def retrain(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """The nightly retraining, without a server: refit the champion's recipe on today's data,
    gate it and register it; with no champion yet, run a short study instead
    (`retrain.fallback_trials`). A failed data gate exits 2 with one line, nothing registered.
    """
    from mfstudy.config import load_config
    from mfstudy.nightly import nightly
    from mfstudy.study import run_study
    from mfstudy.tuning import quiet

    quiet()
    cfg = load_config(config, set_ or [])
    with _progress_bar(cfg.metric) as on_progress:
        result = nightly(
            cfg, study=lambda c, prepared: run_study(c, on_progress=on_progress, prepared=prepared)
        )
    console.print(result.summary(), soft_wrap=True)
    if result.study is not None:
        _print_result(cfg, result.study)  # ends with the registered version's URI
        return
    r = result.retrain
    assert r is not None  # no study: a retraining result
    version = r.new_version if r.promoted else r.champion_version
    typer.echo(f"models:/{result.model_name}/{version}")  # the champion after this night


def _print_result(cfg: Any, result: Any) -> None:
    b = result.best
    table = Table(title=f"best trial #{b.number} ({b.family})", title_justify="left")
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for k, v in b.params.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    table.add_row("best epoch", str(b.best_epoch))
    console.print(table)
    c = result.counts
    console.print(
        f"{cfg.metric} = [bold]{b.value:.5f}[/] | trials: {c['complete']} complete, "
        f"{c['pruned']} pruned, {c['fail']} failed | {result.seconds:.0f}s"
    )
    verdict = "now [bold]champion[/]" if result.promoted else "champion unchanged"
    console.print(
        f"registered {result.model_name} v{result.model_version} from study "
        f"{result.study_name}: {verdict}",
        soft_wrap=True,
    )
    from mfstudy.tracking import redact_uri

    uri = redact_uri(result.tracking_uri)  # never print a password given in the URI
    ui = uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    console.print(
        f"MLflow: {ui} (experiment {cfg.tracking.experiment or cfg.name})", soft_wrap=True
    )
    typer.echo(f"models:/{result.model_name}/{result.model_version}")


@app.command()
@_user_errors
def recommend(
    model: Annotated[
        str, typer.Option("--model", help="Model URI, e.g. models:/lastfm-2k@champion.")
    ],
    user: Annotated[str | None, typer.Option("--user", help="Raw user id.")] = None,
    similar_to: Annotated[
        str | None, typer.Option("--similar-to", help="Raw item id: its most similar items.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many items.")] = 10,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            envvar="MLFLOW_TRACKING_URI",
            help="MLflow tracking URI (default: the SQLite store under ./runs).",
        ),
    ] = None,
) -> None:
    """Top-k items for a user, or the items most similar to an item, from a registered model."""
    from mfstudy import tracking
    from mfstudy.errors import ConfigError

    if (user is None) == (similar_to is None):
        raise ConfigError("recommend: give exactly one of --user or --similar-to")
    uri = tracking.tracking_uri_for(tracking_uri, Path("runs").resolve())
    # Seconds, not MLflow's minutes of retries; and no empty store left in a wrong folder.
    tracking.check_reachable(uri, must_exist=True)
    loaded = tracking.load_recommender(model, uri)
    if user is not None:
        frame = loaded.recommend(user, k=k)
    else:
        frame = loaded.similar_to(similar_to, k=k)
    typer.echo(frame.to_string(index=False))


def _print_stats(stats: dict[str, Any], seconds: float) -> None:
    table = Table(title=f"{stats['name']}: {stats['source']}", title_justify="left")
    table.add_column("")
    table.add_column("users", justify="right")
    table.add_column("items", justify="right")
    table.add_column("interactions", justify="right")
    table.add_column("sparsity %", justify="right")
    for label, key in (("before threshold", "before_threshold"), ("after", "after_threshold")):
        s = stats[key]
        table.add_row(
            label,
            f"{s['users']:,}",
            f"{s['items']:,}",
            f"{s['interactions']:,}",
            f"{s['sparsity_pct']:.3f}",
        )
    console.print(table)
    sp = stats["split"]
    extra = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sp.items() if k != "kind")
    console.print(
        f"rows read {stats['rows_read']:,}, duplicates dropped {stats['duplicates_dropped']:,}; "
        f"split {sp['kind']}: {extra}; seed {stats['seed']}; {seconds:.1f}s"
    )


def main() -> None:
    # Set here, not at import: MLflow's per-file download bars and INFO lines (database
    # migrations) would drown the study's own progress bar.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    app()
