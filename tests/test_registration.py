"""Registering a study's model: the champion alias moves only under the model's champion lock.

One lock per registered model, `<workdir>/registry/<model>.lock` (`mfstudy.workdir`): the
studies of one config (`<name>`, and `<name>-<fingerprint>` after a data change) hold different
study locks but register to the same model, so they must share this one.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from helpers import lock_held
from mfstudy import registration, tracking
from mfstudy.config import StudyConfig, load_config
from mfstudy.prepare import prepare
from mfstudy.registration import refit_best, register_model
from mfstudy.tuning import BestTrial
from mfstudy.workdir import champion_lock

SMALL = ["data.n_users=200", "data.n_items=100", "data.n_interactions=4000"]
#: Generous: a thread that should get on does so in well under a second.
WAIT = 120.0


def _cfg(tmp_path: Path, *sets: str) -> StudyConfig:
    return load_config(None, [*SMALL, f"workdir={tmp_path}", *sets])


def test_one_champion_lock_per_registered_model(tmp_path: Path) -> None:
    base = _cfg(tmp_path, "name=movies")
    # The continuation after a data change (`mfstudy.study._continuation`): its own study,
    # the same registered model.
    grown = _cfg(tmp_path, "name=movies-0123abcd", "study.register_as=movies")
    other = _cfg(tmp_path, "name=books")
    odd = _cfg(tmp_path, "name=x", "study.register_as=team model")
    registry = tmp_path.resolve() / "registry"
    with champion_lock(base):
        assert lock_held(registry / "movies.lock")
        assert not lock_held(registry / "books.lock")
    with champion_lock(grown):
        assert lock_held(registry / "movies.lock")
    with champion_lock(other):
        assert lock_held(registry / "books.lock")
        assert not lock_held(registry / "movies.lock")
    with champion_lock(odd):
        (path,) = registry.glob("team_model-*.lock")  # a file name, and not another model's
        assert lock_held(path)


def test_the_study_moves_the_champion_only_holding_the_lock(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """register_model waits for the champion lock before it reads and moves the alias."""
    name = "reg-lock"
    cfg = _cfg(tmp_path, f"name={name}", f"tracking.uri={tracking_uri}")
    prepared = prepare(cfg)
    best = BestTrial(0, "wrmf", {"factors": 4, "regularization": 1.0, "iterations": 2}, 0.5, 2)
    model = refit_best(best, prepared, cfg, threads=1)
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment(name)).info.run_id
    lock = tmp_path.resolve() / "registry" / f"{name}.lock"

    reached, moving = threading.Event(), threading.Event()
    held_while_moving: list[bool] = []
    real_lock, real_move = registration.champion_lock, tracking.set_champion_if_better

    def lock_spy(c: StudyConfig) -> Any:
        reached.set()  # the model is logged and registered; next: the lock
        return real_lock(c)

    def move_spy(*args: Any, **kwargs: Any) -> bool:
        moving.set()
        held_while_moving.append(lock_held(lock))
        return real_move(*args, **kwargs)

    monkeypatch.setattr(registration, "champion_lock", lock_spy)
    monkeypatch.setattr(tracking, "set_champion_if_better", move_spy)
    results: list[Any] = []

    def register() -> None:
        try:
            results.append(register_model(cfg, best, model, prepared, run_id, tracking_uri))
        except BaseException as exc:  # re-raised in the test's thread
            results.append(exc)

    thread = threading.Thread(target=register)
    with champion_lock(cfg):
        thread.start()
        assert reached.wait(WAIT), "register_model did not take the champion lock"
        assert not moving.wait(1.0), "the champion was read and moved without the lock"
        with pytest.raises(MlflowException):
            client.get_model_version_by_alias(name, "champion")
    assert moving.wait(WAIT), "the move did not go on once the lock was released"
    thread.join(WAIT)
    assert not thread.is_alive()
    (result,) = results
    if isinstance(result, BaseException):
        raise result
    assert result == (name, "1", True)
    assert held_while_moving == [True]
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert not lock_held(lock)
