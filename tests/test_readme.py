"""The README's two commands are the contract with newcomers and with CI."""

from __future__ import annotations

import re

from helpers import REPO


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_readme_starts_with_exactly_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)
    assert len(blocks) == 2
    assert all("\n" not in b for b in blocks), "each must be one command line"
    run, test = blocks
    assert "mfstudy" in run and "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = _readme_commands()[1]
    commands = [
        line
        for line in ci.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd ", "export "))
    ]
    assert commands == [test_cmd]
    assert 'MFSTUDY_DATA_DIR="$PWD/../shared/data"' in ci
