"""The two test tiers: `pytest -m "not slow"` (the fast tier) starts no server.

tests/conftest.py marks `slow` every test that uses one of its `SLOW_FIXTURES`, directly or
through another fixture. This collects the fast tier as a developer runs it (`--setup-plan`
lists every test with the fixtures it would set up, running none) and checks that no test in
it uses a fixture that starts a real server, or starts one itself. Which fixtures and tests
start one is read from the tests' source: those that construct `MlflowServer` or
`PrefectServer` (tests/servers.py), and every fixture that uses such a fixture.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

TESTS = REPO / "tests"
SERVERS = {"MlflowServer", "PrefectServer"}


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "fixture"


def _starts_a_server(fn: ast.FunctionDef) -> bool:
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SERVERS
        for node in ast.walk(fn)
    )


def _functions() -> list[tuple[Path, ast.FunctionDef]]:
    return [
        (path, node)
        for path in sorted(TESTS.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.FunctionDef)
    ]


def _server_fixtures() -> tuple[set[str], set[str]]:
    """(fixtures that start a server themselves, those and every fixture using one of them)."""
    fixtures = {fn.name: fn for _, fn in _functions() if any(map(_is_fixture, fn.decorator_list))}
    starting = {name for name, fn in fixtures.items() if _starts_a_server(fn)}
    using = set(starting)
    while True:
        more = {
            name
            for name, fn in fixtures.items()
            if {a.arg for a in fn.args.args + fn.args.kwonlyargs} & using
        } - using
        if not more:
            return starting, using
        using |= more


def _fast_tier() -> dict[str, set[str]]:
    """Every test of `pytest -m "not slow"`, with the fixtures it uses (pytest's closure)."""
    plan = ["--setup-plan", "-q", "-p", "no:cacheprovider", "-m", "not slow", "tests"]
    res = subprocess.run(
        [sys.executable, "-m", "pytest", *plan],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    planned = {}
    for line in res.stdout.splitlines():
        m = re.fullmatch(r"\s*(tests/\S+?::.+?)(?: \(fixtures used: (.*)\))?", line)
        if m:
            planned[m.group(1)] = set((m.group(2) or "").split(", ")) - {""}
    return planned


@pytest.mark.slow  # collects the whole suite in another pytest: seconds (CI runs it)
def test_the_fast_tier_starts_no_server() -> None:
    starting, using = _server_fixtures()
    # The source scan finds them (the session and per-test MLflow servers, the Prefect one).
    assert {"mlflow_server", "new_mlflow_server", "prefect_server"} <= starting

    fast = _fast_tier()
    assert len(fast) > 100, "the fast tier was not read (pytest's --setup-plan output changed?)"
    # No fast test uses a server fixture, however indirectly ...
    users = {test: sorted(fixtures & using) for test, fixtures in fast.items() if fixtures & using}
    assert users == {}, "fast tests using a server: add the fixture to conftest's SLOW_FIXTURES"
    # ... or starts a server in its own body.
    starters = {
        f"{path.relative_to(REPO).as_posix()}::{fn.name}"
        for path, fn in _functions()
        if fn.name.startswith("test_") and _starts_a_server(fn)
    }
    inline = sorted(t for t in fast if re.sub(r"\[.*\]$", "", t) in starters)
    assert inline == [], "tests in the fast tier that start a server (mark them slow)"
