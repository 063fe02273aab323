"""The `mfstudy` command line.

User mistakes (`MFStudyError`) are printed as one line on stderr with exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mfstudy import __version__
from mfstudy.errors import MFStudyError

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
            sys.stderr.write(f"mfstudy: error: {err}\n")
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
    from mfstudy.prepare import prepare as run_prepare
    from mfstudy.prepare import write_prepared

    cfg = load_config(config, set_ or [])
    start = time.perf_counter()
    with console.status(f"preparing [bold]{cfg.name}[/] ({cfg.data.source})"):
        prepared = run_prepare(cfg)
        dest = write_prepared(prepared, out or Path("runs") / cfg.name / "data")
    _print_stats(prepared.stats, time.perf_counter() - start)
    typer.echo(str(dest))


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
    app()
