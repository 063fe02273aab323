"""Search spaces declared in configs, turned into `trial.suggest_*` calls by one function."""

from __future__ import annotations

import inspect
import math
from typing import Any

import optuna

from mfstudy.config import CategoricalParam, FloatParam, IntParam, ParamSpec
from mfstudy.errors import ConfigError

__all__ = [
    "check_space",
    "constructor_params",
    "grid_size",
    "grid_space",
    "param_name",
    "suggest",
]

Space = dict[str, dict[str, ParamSpec]]
MODEL_PARAM = "model"


def param_name(family: str, name: str, space: Space) -> str:
    """Optuna's name for a parameter: bare with one family, `family.name` with several.

    Families may share a name (`factors`) with different ranges; Optuna refuses two
    distributions under one name, so several families need the prefix.
    """
    return name if len(space) == 1 else f"{family}.{name}"


def suggest(trial: optuna.Trial, space: Space) -> tuple[str, dict[str, Any]]:
    """Draw a model family and its hyperparameters for `trial`.

    Returns the family and the keyword arguments for its constructor (fixed values included).
    """
    families = list(space)
    family = families[0] if len(families) == 1 else trial.suggest_categorical(MODEL_PARAM, families)
    params: dict[str, Any] = {}
    for name, spec in space[family].items():
        key = param_name(family, name, space)
        if isinstance(spec, IntParam):
            step = 1 if spec.log else spec.step
            params[name] = trial.suggest_int(key, spec.low, spec.high, step=step, log=spec.log)
        elif isinstance(spec, FloatParam):
            params[name] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, CategoricalParam):
            params[name] = trial.suggest_categorical(key, spec.choices)
        else:
            params[name] = spec
    return family, params


def grid_space(space: Space) -> dict[str, list[Any]]:
    """The grid sampler's search space: every searched parameter must list its choices."""
    if len(space) > 1:
        # Optuna's grid is a product over all names; other families' parameters would multiply
        # it with combinations that are never used.
        raise ConfigError(
            f"search_space: the grid sampler takes one model family, got {', '.join(space)}"
        )
    grid: dict[str, list[Any]] = {}
    for family, params in space.items():
        for name, spec in params.items():
            if isinstance(spec, IntParam | FloatParam):
                raise ConfigError(
                    f"search_space.{family}.{name}: the grid sampler needs `type: categorical` "
                    "choices, not a range"
                )
            if isinstance(spec, CategoricalParam):
                grid[param_name(family, name, space)] = list(spec.choices)
    if not grid:
        raise ConfigError("search_space: nothing to search (every parameter is fixed)")
    return grid


def grid_size(space: Space) -> int:
    """Number of points of the full grid (the product over families of their choices)."""
    return sum(
        math.prod(len(s.choices) for s in params.values() if isinstance(s, CategoricalParam))
        for params in space.values()
    )


def check_space(space: Space, model_params: dict[str, list[str]]) -> None:
    """Every parameter must exist in its model's constructor; something must be searched.

    `model_params` maps family to its constructor's parameter names.
    """
    searched = 0
    for family, params in space.items():
        known = model_params[family]
        for name, spec in params.items():
            if name not in known:
                raise ConfigError(
                    f"search_space.{family}.{name}: not a parameter of the {family} model "
                    f"(known: {', '.join(known)})"
                )
            searched += not isinstance(spec, bool | int | float | str)
    if searched == 0 and len(space) == 1:
        raise ConfigError("search_space: empty search space (every parameter is fixed)")


def constructor_params(cls: type) -> list[str]:
    """Names of the keyword parameters of `cls.__init__`."""
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
