"""Credentials: `${NAME}` references resolved only when connecting, URIs redacted when shown.

The end-to-end proof (a planted secret found nowhere the study or the flow wrote) is in
tests/prefect_flows/test_secrets.py.
"""

from __future__ import annotations

import pytest

from mfstudy.config import load_config
from mfstudy.errors import ConfigError
from mfstudy.secrets import public_config, redact_uri, resolve_env
from mfstudy.tuning import make_storage


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://optuna:s3cret@db:5432/optuna", "postgresql://db:5432/optuna"),
        ("http://user:s3cret@127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://mlflow.example/path?token=s3cret#frag", "https://mlflow.example/path"),
        ("sqlite:////tmp/x.db?password=s3cret", "sqlite:////tmp/x.db"),
        ("postgresql://optuna:${PW}@db/optuna", "postgresql://db/optuna"),
        ("/shared/optuna.journal", "/shared/optuna.journal"),
        ("http://user:pw@host:notaport", "http://<redacted>"),
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
