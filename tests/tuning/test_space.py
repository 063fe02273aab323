"""Search spaces from config to `trial.suggest_*`, and the blog's grid."""

from __future__ import annotations

import itertools

import optuna
import pytest

from helpers import REPO
from mfstudy.config import load_config
from mfstudy.errors import ConfigError
from mfstudy.tuning import check_space, suggest
from mfstudy.tuning._factories import BudgetGridSampler
from mfstudy.tuning._space import grid_size, grid_space

BLOG_GRID = {
    "factors": [10, 20, 40, 80, 120],
    "regularization": [0.0, 1e-5, 1e-3, 0.1, 10.0, 100.0],
    "alpha": [1, 10, 50, 100, 500, 1000],
}


def _space(yaml_space: str):
    return load_config(None, [f"search_space={yaml_space}"]).search_space


def test_suggest_draws_inside_the_declared_ranges() -> None:
    space = _space(
        "{wrmf: {factors: {type: int, low: 8, high: 64, log: true},"
        " regularization: {type: float, low: 0.001, high: 10, log: true},"
        " confidence: {type: categorical, choices: [linear, log]}, iterations: 12}}"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        family, params = suggest(trial, space)
        assert family == "wrmf"
        assert 8 <= params["factors"] <= 64 and isinstance(params["factors"], int)
        assert 0.001 <= params["regularization"] <= 10
        assert params["iterations"] == 12
        assert "iterations" not in trial.params  # fixed values are not searched
        seen.add(params["confidence"])
        study.tell(trial, 0.0)
    assert seen == {"linear", "log"}


def test_several_families_make_the_family_a_choice_and_prefix_names() -> None:
    space = _space(
        "{wrmf: {factors: {type: int, low: 8, high: 16}},"
        " sgd: {factors: {type: int, low: 50, high: 100}, learning_rate: 0.01}}"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    families = set()
    for _ in range(30):
        trial = study.ask()
        family, params = suggest(trial, space)
        families.add(family)
        assert trial.params["model"] == family
        assert f"{family}.factors" in trial.params
        low = 8 if family == "wrmf" else 50
        assert low <= params["factors"] <= low * 2
        study.tell(trial, 0.0)
    assert families == {"wrmf", "sgd"}


def test_recipe_grid_is_the_blogs_180_points() -> None:
    cfg = load_config(REPO / "configs" / "recipe.yaml")
    grid = grid_space(cfg.search_space)
    assert {k: sorted(v) for k, v in grid.items()} == {k: sorted(v) for k, v in BLOG_GRID.items()}
    assert grid_size(cfg.search_space) == 180
    assert cfg.search_space["wrmf"]["iterations"] == 38
    assert cfg.study.eval_every == 2
    # The grid sampler visits every combination exactly once in 180 trials.
    study = optuna.create_study(sampler=BudgetGridSampler(grid, seed=0))
    points = set()
    for _ in range(180):
        trial = study.ask()
        _, params = suggest(trial, cfg.search_space)
        points.add((params["factors"], params["regularization"], params["alpha"]))
        study.tell(trial, 0.0)
    assert points == set(itertools.product(*BLOG_GRID.values()))


def test_grid_units_with_their_own_samplers_cover_every_point_once() -> None:
    # Every trial unit (on any worker, command or flow) builds its own sampler; trial n must
    # still get a distinct grid point whichever unit asks.
    from mfstudy.tuning import make_sampler

    cfg = load_config(REPO / "configs" / "recipe.yaml")
    storage = optuna.storages.InMemoryStorage()
    name = optuna.create_study(storage=storage).study_name
    points = []
    for number in range(180):
        # Each trial is asked of the study as a trial unit opens it, with a sampler of its own
        # (never the one the study was created with).
        sampler = make_sampler(cfg.study.sampler, cfg)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        trial = study.ask()
        assert trial.number == number
        _, params = suggest(trial, cfg.search_space)
        points.append((params["factors"], params["regularization"], params["alpha"]))
        study.tell(trial, 0.0)
    assert len(set(points)) == 180


def test_grid_needs_categorical_choices() -> None:
    with pytest.raises(ConfigError, match=r"search_space\.wrmf\.factors: the grid sampler"):
        grid_space(_space("{wrmf: {factors: {type: int, low: 8, high: 16}}}"))


def test_check_space_names_unknown_parameters_and_empty_spaces() -> None:
    known = {"wrmf": ["factors", "regularization", "alpha", "iterations"]}
    check_space(_space("{wrmf: {factors: {type: int, low: 8, high: 16}}}"), known)
    with pytest.raises(ConfigError, match=r"search_space\.wrmf\.factorz: not a parameter"):
        check_space(_space("{wrmf: {factorz: {type: int, low: 8, high: 16}}}"), known)
    with pytest.raises(ConfigError, match="empty search space"):
        check_space(_space("{wrmf: {factors: 8}}"), known)
