"""A study's working folder and the locks that keep processes sharing it out of each other's way.

Everything a study keeps on this machine is under `<workdir>/<name>/` (:func:`study_dir`): the
prepared data its workers read (:func:`prepared_dir`), trial records spooled while the tracking
server is away (:func:`spool_dir`) and its locks. The registered model's `champion` alias has a
lock of its own under `<workdir>/registry/` (:func:`champion_lock`): several studies can register
to one model. Core module: no Optuna, MLflow or Prefect.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import AbstractContextManager
from pathlib import Path

from mfstudy._fs import file_lock
from mfstudy.config import StudyConfig
from mfstudy.secrets import resolve_env

__all__ = [
    "champion_lock",
    "prepared_dir",
    "reservation_lock",
    "spool_dir",
    "study_dir",
    "study_lock",
]


def study_dir(cfg: StudyConfig) -> Path:
    """The study's working folder, `<workdir>/<name>` (absolute)."""
    return cfg.workdir.resolve() / cfg.name


def prepared_dir(cfg: StudyConfig) -> Path:
    """Where the study's prepared data is written for its workers, `<workdir>/<name>/data`."""
    return study_dir(cfg) / "data"


def spool_dir(cfg: StudyConfig) -> Path:
    """Where trial records wait while the tracking server is away,
    `<workdir>/<name>/mlflow-spool`."""
    return study_dir(cfg) / "mlflow-spool"


def study_lock(cfg: StudyConfig, shared: bool = False) -> AbstractContextManager[None]:
    """The lock of a study's working folder, `<workdir>/<name>/study.lock`.

    Held exclusively while a process opens the study (rewrites the prepared data, creates or
    finds the parent run, fails crashed trials, replays the tracking spool) and while it
    replays the spool at the end; held shared while a worker reads the prepared data, so it
    never sees the folder being swapped. Studies started at the same time on one machine would
    otherwise race: two parent runs, spooled runs sent twice. The champion alias is moved under
    :func:`champion_lock` instead.
    """
    return file_lock(study_dir(cfg) / "study.lock", shared=shared)


def reservation_lock(cfg: StudyConfig, storage: str) -> AbstractContextManager[None]:
    """The lock under which a worker counts the trials and asks for a new one."""
    # Counting the trials and asking for a new one must be one step, or two workers seeing
    # n_trials - 1 finished trials would both start one. A journal lives on a file system all
    # its workers share, so an flock beside it serialises them; for an RDB URL, workers on one
    # machine share a lock in the working folder (across machines a trial may overshoot by at
    # most the number of machines minus one).
    storage = resolve_env(storage, "study.storage")  # a variable may hold a whole URL
    if "://" in storage:  # an RDB URL (`mfstudy.tuning` reads it the same way)
        lock_path = study_dir(cfg) / "reserve.lock"
    else:
        lock_path = Path(storage + ".reserve.lock")
    return file_lock(lock_path)


def champion_lock(cfg: StudyConfig) -> AbstractContextManager[None]:
    """The lock of the registered model's `champion` alias, `<workdir>/registry/<model>.lock`.

    Reading the champion, comparing with it and moving the alias is not atomic in the registry:
    two processes registering at once could both read the old champion and the worse one move
    the alias last. So every read-compare-move holds this lock. It is one per registered model
    (`study.register_as`, else the study's name), not per study: the studies of one config
    (`<name>` and `<name>-<fingerprint>` after a data change) hold different study locks but
    register to the same model. Like the study lock it serialises processes of one machine
    (one working folder).
    """
    name = cfg.study.register_as or cfg.name
    return file_lock(cfg.workdir.resolve() / "registry" / f"{_slug(name)}.lock")


def _slug(name: str) -> str:
    """`name` as a file name: itself when it is one already; otherwise its safe characters and
    a short hash, so distinct model names never share a lock file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if safe == name and not name.startswith("."):
        return name
    return f"{safe.lstrip('.')}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
