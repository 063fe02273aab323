"""The tested set of versions: `constraints.txt` is what the README's commands install.

A fresh install once resolved SQLAlchemy 2.1, on which Prefect 3.8's scheduler never creates a
run; any release of any dependency can do that again. So both README commands and CI install
with `pip install -c constraints.txt`, and these tests show that the environment the suite runs
in is exactly the locked one: every locked version installed, nothing installed unlocked.
"""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from helpers import REPO

#: Installers and the project itself: not part of the lock (pip freeze leaves them out too).
UNLOCKED = {"pip", "setuptools", "wheel", "mfstudy"}

#: Packages whose releases broke, or could break, a fresh install: each needs an upper bound.
BOUNDED = ["prefect", "sqlalchemy", "fastapi", "mlflow", "optuna", "implicit", "numba", "numpy",
           "pandas"]  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin"
        pins[_norm(name)] = version
    return pins


def test_every_locked_version_is_the_installed_one() -> None:
    wrong = {}
    for name, version in _lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"locked vs installed: {wrong}"


def test_nothing_is_installed_outside_the_lock() -> None:
    lock = _lock()
    extra = {
        _norm(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if _norm(d.metadata["Name"]) not in lock and _norm(d.metadata["Name"]) not in UNLOCKED
    }
    assert not extra, f"installed but not in constraints.txt: {extra}"


def test_the_lock_holds_the_scheduler_safe_sqlalchemy() -> None:
    major, minor = (int(x) for x in _lock()["sqlalchemy"].split(".")[:2])
    assert (major, minor) == (2, 0)


@pytest.mark.parametrize("name", BOUNDED)
def test_fragile_dependencies_have_an_upper_bound(name: str) -> None:
    # The installed project's own metadata: the `dependencies` of pyproject.toml.
    deps = [r for r in metadata.requires("mfstudy") or [] if "extra ==" not in r]
    (spec,) = [d for d in deps if _norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) == name]
    assert "<" in spec, f"{spec!r} has no upper bound"


def test_installs_use_the_lock() -> None:
    head = (REPO / "README.md").read_text().split("\n## ", 1)[0]
    installs = re.findall(r"pip install [^&]+", head)
    assert len(installs) == 2 and all("-c constraints.txt" in c for c in installs), installs
