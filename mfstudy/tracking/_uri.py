"""Where the study tracks to: a URI string, resolved without touching MLflow's global state."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from mfstudy.secrets import redact_uri

__all__ = ["is_http_uri", "local_artifact_root", "redact_uri", "run_url", "tracking_uri_for"]


def tracking_uri_for(uri: str | None, root: Path) -> str:
    """The tracking URI the study uses: `uri` if given, else a SQLite store under `root`.

    SQLite is MLflow 3's default backend (the plain file store is deprecated). The path is made
    absolute because worker processes may run from another working directory and receive the
    URI as a plain string.
    """
    if uri is None or not uri.strip():
        db = (Path(root).expanduser().resolve() / "mlflow.db").as_posix()
        return f"sqlite:///{db}"
    return uri.strip()


def is_http_uri(uri: str) -> bool:
    """True for a tracking server reached over HTTP(S) (as opposed to a local database)."""
    return uri.lower().startswith(("http://", "https://"))


def local_artifact_root(uri: str) -> str | None:
    """For a `sqlite:///` store, the `artifacts` folder beside the database (as a file URI).

    Without it, MLflow puts artifacts of new experiments under `./mlruns` of whatever the
    current directory is; next to the database they stay with the study's other output.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    db = Path(uri[len(prefix) :])
    if not db.is_absolute():
        db = db.resolve()
    return (db.parent / "artifacts").as_uri()


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The browser URL of a run, `<server>/#/experiments/<experiment>/runs/<run>`, when `uri` is
    an HTTP(S) tracking server (without its password: :func:`redact_uri`); None for a local
    store (SQLite, files), which has no address to open (`mlflow ui` serves it anywhere)."""
    if not is_http_uri(uri):
        return None
    base = redact_uri(uri.strip()).rstrip("/")
    exp, run = quote(str(experiment_id), safe=""), quote(str(run_id), safe="")
    return f"{base}/#/experiments/{exp}/runs/{run}"
