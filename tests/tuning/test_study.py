"""Studies on a real Optuna journal storage: budget, parallel workers, resume, failures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from optuna.trial import TrialState

from helpers import tiny_data
from mfstudy.config import StudyConfig, load_config
from mfstudy.prepare import prepare, write_prepared
from mfstudy.tuning import (
    TrialContext,
    best_trial,
    create_study,
    fail_stale_trials,
    run_local,
    trials_table,
)

SMALL = [
    *tiny_data(300, 150, 9_000),
    "search_space={wrmf: {factors: {type: int, low: 4, high: 16}, "
    "regularization: {type: float, low: 0.01, high: 10, log: true}, iterations: 6}}",
    "study.pruner.kind=none",
]

pytestmark = pytest.mark.slow  # real studies with worker processes: seconds each


def _setup(tmp_path: Path, extra: list[str] = ()) -> tuple[StudyConfig, TrialContext]:
    cfg = load_config(None, [*SMALL, f"workdir={tmp_path}", *extra])
    prepared_dir = write_prepared(prepare(cfg), tmp_path / cfg.name / "data")
    study, spec = create_study(cfg)
    ctx = TrialContext(
        config=cfg,
        storage=spec,
        study_name=study.study_name,
        prepared_dir=prepared_dir,
        n_trials=cfg.study.n_trials,
    )
    return cfg, ctx


def test_parallel_workers_finish_exactly_the_budget_and_resume(tmp_path: Path) -> None:
    cfg, ctx = _setup(tmp_path, ["study.n_trials=5"])
    outcomes = run_local(ctx, workers=2)
    assert len(outcomes) == 5
    assert {o.state for o in outcomes} == {"complete"}
    study, _ = create_study(cfg)
    trials = study.get_trials()
    assert len(trials) == 5
    for t in trials:
        assert t.state == TrialState.COMPLETE
        assert sorted(t.intermediate_values) == list(range(1, 7))
        best_epoch = t.user_attrs["best_epoch"]
        assert t.value == max(t.intermediate_values.values())
        assert t.intermediate_values[best_epoch] == t.value
    # Re-running resumes: three more trials to reach a budget of eight, none repeated.
    more = run_local(replace(ctx, n_trials=8), workers=2)
    assert len(more) == 3
    assert len(study.get_trials()) == 8
    best = best_trial(study, cfg)
    assert best.value == max(t.value for t in study.get_trials())
    assert best.params["iterations"] == 6 and 4 <= best.params["factors"] <= 16
    assert len(trials_table(study)) == 8


def test_crashed_trials_are_failed_on_resume(tmp_path: Path) -> None:
    cfg, ctx = _setup(tmp_path, ["study.n_trials=2"])
    study, _ = create_study(cfg)
    orphan = study.ask()
    orphan.set_user_attr("mfstudy.worker", "not-this-host-nor-any:1:1")
    dead = study.ask()
    dead.set_user_attr("mfstudy.worker", f"{__import__('socket').gethostname()}:999999999:1")
    stale = fail_stale_trials(study)
    assert [t.number for t in stale] == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == TrialState.FAIL
    assert states[orphan.number] == TrialState.RUNNING  # another host: maybe still alive
    # The crashed trial does not use up the budget: two results still get made, besides the
    # orphan that may still be running elsewhere.
    study.tell(orphan.number, state=TrialState.FAIL)  # that host is gone after all
    outcomes = run_local(ctx, workers=1)
    assert len(outcomes) == 1  # the orphan's own failure counts; the crashed one does not


def test_grid_budget_larger_than_grid_is_an_error(tmp_path: Path) -> None:
    from mfstudy.errors import ConfigError

    cfg = load_config(
        None,
        [
            *SMALL,
            f"workdir={tmp_path}",
            "search_space={wrmf: {factors: {type: categorical, choices: [4, 8]}}}",
            "study.sampler.kind=grid",
            "study.n_trials=3",
        ],
    )
    with pytest.raises(ConfigError, match="exceeds the grid's 2 points"):
        create_study(cfg)


def test_rdb_url_storage_works_the_same(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg, ctx = _setup(tmp_path, ["study.n_trials=3", f"study.storage={url}"])
    assert ctx.storage == url
    outcomes = run_local(ctx, workers=2)
    assert len(outcomes) == 3
    study, _ = create_study(cfg)
    assert len(study.get_trials()) == 3
    assert all(t.user_attrs["best_epoch"] >= 1 for t in study.get_trials())
