"""The architecture rules: which layer may import which orchestration library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

HEAVY = {"prefect", "optuna", "mlflow", "optuna_integration", "prefect_dask"}
# Only these places may import each library (package folders, relative to the repo).
ALLOWED = {
    "optuna": ("mfstudy/tuning",),
    "optuna_integration": ("mfstudy/tuning",),
    "mlflow": ("mfstudy/tracking",),
    "prefect": ("tasks", "flows"),
    "prefect_dask": ("tasks", "flows"),
}
CORE = [
    "mfstudy.data",
    "mfstudy.thresholding",
    "mfstudy.split",
    "mfstudy.metrics",
    "mfstudy.models",
    "mfstudy.config",
    "mfstudy.prepare",
    "mfstudy.workdir",
    "mfstudy.threads",
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _sources() -> list[Path]:
    return [p for d in ("mfstudy", "tasks", "flows") for p in (REPO / d).rglob("*.py")]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_orchestration_imports_stay_in_their_layer(path: Path) -> None:
    rel = path.relative_to(REPO).as_posix()
    for lib in _imports(path) & HEAVY:
        assert rel.startswith(ALLOWED[lib]), f"{rel} imports {lib}; only {ALLOWED[lib]} may"


@pytest.mark.slow  # a fresh interpreter imports the whole core: seconds
def test_core_import_pulls_in_no_orchestration_library(tmp_path: Path) -> None:
    # Run in a fresh interpreter (and an empty cwd) so nothing else has imported them already,
    # and check that importing creates no files: imports have no side effects.
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE)
        + f"bad = sorted(set({sorted(HEAVY)!r}) & {{m.split('.')[0] for m in sys.modules}})\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
