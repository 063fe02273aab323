"""What the tuning layer can check in a config before any data is read or any trial runs.

Each of these used to fail late: a bad storage URL or an unknown metric after the data was
prepared (a traceback from SQLAlchemy or a worker), a parameter range the model rejects as one
failed trial per sampled value. Each is now one line naming the key, before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfstudy._fs import why_not_creatable
from mfstudy.config import StudyConfig
from mfstudy.errors import ConfigError
from mfstudy.models import model_class
from mfstudy.secrets import redact_uri, resolve_env
from mfstudy.tuning._factories import is_url, storage_spec

__all__ = ["check_metric", "check_range_ends", "check_storage", "check_tuning"]


def check_tuning(cfg: StudyConfig) -> None:
    """The storage, the objective metric and the ends of every searched range."""
    check_storage(storage_spec(cfg))
    check_metric(cfg)
    check_range_ends(cfg)


def check_storage(spec: str) -> None:
    """A database URL whose dialect and driver load, or a journal file path that can be
    created: otherwise a one-line :class:`ConfigError` naming `study.storage`."""
    # Resolved first: a referenced variable may hold a whole URL, not only a password.
    spec = resolve_env(spec, "study.storage")
    if is_url(spec):
        _check_database_url(spec)
        return
    path = Path(spec)
    if path.is_dir():
        raise ConfigError(f"study.storage: {spec} is a folder; give a journal file path")
    _check_creatable(path, spec)


def _check_database_url(spec: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = redact_uri(spec)
    try:
        url = make_url(spec)
        url.port  # noqa: B018 - parsed lazily: a malformed port raises only when read
    except (ArgumentError, ValueError):
        raise ConfigError(f"study.storage: {shown!r} is not a database URL") from None
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(
            f"study.storage: unknown database kind {url.drivername!r} in {shown!r} (e.g. "
            "sqlite:///path.db or postgresql://host/db; a file path for a journal)"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigError(
            f"study.storage: the database driver for {url.drivername!r} is not installed "
            f"({exc.name or exc}); install it or use another URL"
        ) from None
    if getattr(dialect, "is_async", False):
        # Optuna's RDB storage drives SQLAlchemy synchronously; an async driver fails mid-study.
        raise ConfigError(
            f"study.storage: {url.drivername!r} is an async driver; use a synchronous one "
            f"(e.g. {url.get_backend_name()}://...)"
        )
    if url.get_backend_name() == "sqlite":
        if url.host or url.username or url.password or url.port:
            raise ConfigError(
                f"study.storage: {shown!r} is not a SQLite URL (sqlite:////path/optuna.db)"
            )
        if url.database in (None, "", ":memory:"):
            # Each worker process would get its own empty in-memory database.
            raise ConfigError(
                f"study.storage: {shown!r} is an in-memory database, which worker processes "
                "cannot share; give a file (sqlite:////path/optuna.db)"
            )
        _check_creatable(Path(url.database), shown)


def _check_creatable(path: Path, shown: str) -> None:
    why = why_not_creatable(path)
    if why is not None:
        raise ConfigError(f"study.storage: cannot create {shown}: {why}")


def check_metric(cfg: StudyConfig) -> None:
    """`study.metric` must be logged by every model family the search space holds."""
    from mfstudy.tuning._worker import metric_keys

    for family in cfg.search_space:
        keys = metric_keys(cfg, family)
        if cfg.metric not in keys:
            raise ConfigError(
                f"study.metric: {cfg.metric!r} is not logged for {family} models (logged: "
                f"{', '.join(sorted(keys))})"
            )


def check_range_ends(cfg: StudyConfig) -> None:
    """Both ends of every searched range, every choice and every fixed value, each given to
    its model alone: a value the model rejects (a negative alpha) fails here, not as a failed
    trial each time the sampler draws it."""
    for family, params in cfg.search_space.items():
        cls = model_class(family)
        for name, spec in params.items():
            for value in _values(spec):
                try:
                    cls(**{name: value}).check_params()
                except ConfigError as exc:
                    raise ConfigError(f"search_space.{family}.{name}: {exc}") from None
                if name == "iterations" and isinstance(value, int) and value < 1:
                    # A model may be built untrained (WRMF(iterations=0)); a trial may not:
                    # with no epoch there is nothing to evaluate, and every trial would fail.
                    raise ConfigError(
                        f"search_space.{family}.iterations: a trial needs at least one epoch, "
                        f"got {value}"
                    )


def _values(spec: Any) -> list[Any]:
    if isinstance(spec, dict):
        spec_dict = spec
    elif hasattr(spec, "model_dump"):
        spec_dict = spec.model_dump()
    else:
        return [spec]
    if "choices" in spec_dict:
        return list(spec_dict["choices"])
    return [spec_dict["low"], spec_dict["high"]]
