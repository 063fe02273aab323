"""Credentials: `${NAME}` references resolved only when connecting, URIs redacted when shown.

The end-to-end proof (a planted secret found nowhere the study or the flow wrote) is in
tests/prefect_flows/test_secrets.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import EXE, cli_sets, tiny_data
from mfstudy.config import load_config
from mfstudy.errors import ConfigError
from mfstudy.secrets import public_config, redact_uri, resolve_env, scrub
from mfstudy.tuning._factories import make_storage


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://optuna:s3cret@db:5432/optuna", "postgresql://db:5432/optuna"),
        ("http://user:s3cret@127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://mlflow.example/path?token=s3cret#frag", "https://mlflow.example/path"),
        ("sqlite:////tmp/x.db?password=s3cret", "sqlite:////tmp/x.db"),
        ("postgresql://optuna:${PW}@db/optuna", "postgresql://db/optuna"),
        ("/shared/optuna.journal", "/shared/optuna.journal"),
        ("http://user:pw@host:notaport", "http://host:notaport"),
        ("postgresql://optuna:1234/s3cret@127.0.0.1:1/db", "postgresql://127.0.0.1:1/db"),
        ("http://u:99/s3cret@127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("http://alice:s3cret@mlflow.example:5000", "http://mlflow.example:5000"),
        ("https://token@host/prefix?api_key=s3cret#x", "https://host/prefix"),
        ("postgresql://u:s3cret@db-host/mlflow?password=s3cret", "postgresql://db-host/mlflow"),
        ("sqlite:////srv/runs/mlflow.db", "sqlite:////srv/runs/mlflow.db"),
        ("http://[::1]:5000", "http://[::1]:5000"),
        ("databricks", "databricks"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_references_resolve_from_the_environment_only_on_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("MFSTUDY_TEST_PW", "s3cret")
    assert resolve_env("a:${MFSTUDY_TEST_PW}@b", "study.storage") == "a:s3cret@b"
    monkeypatch.delenv("MFSTUDY_TEST_PW")
    with pytest.raises(ConfigError) as err:
        resolve_env("a:${MFSTUDY_TEST_PW}@b", "study.storage")
    assert str(err.value) == "study.storage: environment variable MFSTUDY_TEST_PW is not set"

    # The config keeps the reference; only opening the storage fills it in.
    monkeypatch.setenv("MFSTUDY_TEST_DIR", str(tmp_path))
    cfg = load_config(None, ["study.storage=sqlite:///${MFSTUDY_TEST_DIR}/optuna.db"])
    assert cfg.study.storage == "sqlite:///${MFSTUDY_TEST_DIR}/optuna.db"
    make_storage(cfg.study.storage)
    assert (tmp_path / "optuna.db").is_file()


def test_public_config_redacts_both_locations() -> None:
    cfg = load_config(
        None,
        ["study.storage=postgresql://u:s3cret@db/o", "tracking.uri=http://u:s3cret@h:5000"],
    )
    dumped = cfg.model_dump(mode="json")
    shown = public_config(dumped)
    assert "s3cret" not in repr(shown)
    assert shown["study"]["storage"] == "postgresql://db/o"
    assert dumped["study"]["storage"] == "postgresql://u:s3cret@db/o"  # the input is untouched


def test_scrub_removes_credentials_a_library_quotes() -> None:
    text = "Invalid url: http://u:1234/s3cret@127.0.0.1:99999/api/x?token=s3cret&x=1"
    assert scrub(text) == "Invalid url: http://127.0.0.1:99999/api/x?token=***&x=1"


@pytest.mark.slow  # runs the `mfstudy` command twice
def test_no_password_in_an_error_line_or_a_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hostile cases from a review: a URL no parser accepts (bad port) quoted by the HTTP
    library in its error, and a whole storage URL held by a referenced variable (it was taken
    for a journal path: a lock file named after the URL, password included, in the cwd)."""
    tiny = [*cli_sets(tiny_data()), "--n-trials", "1"]
    bad = subprocess.run(
        [EXE, "study", *tiny, "--set", "tracking.uri=http://u:s3cret@127.0.0.1:99999"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "s3cret" not in bad.stdout + bad.stderr, bad.stderr

    monkeypatch.setenv("MFSTUDY_TEST_DBURL", f"sqlite:///{tmp_path / 'opt.db'}?password=s3cret")
    ok = subprocess.run(
        [EXE, "study", *tiny, "--set", "study.storage=${MFSTUDY_TEST_DBURL}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ.copy(),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "opt.db").is_file()  # the variable was used as the URL it holds
    leaked = [p for p in tmp_path.rglob("*") if "s3cret" in p.name]
    leaked += [p for p in tmp_path.rglob("*") if p.is_file() and b"s3cret" in p.read_bytes()]
    assert leaked == [] and "s3cret" not in ok.stdout + ok.stderr
