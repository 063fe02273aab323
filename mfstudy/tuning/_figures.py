"""Optuna's own figures, rendered with matplotlib for the study's parent run."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

__all__ = ["optuna_figures"]


def optuna_figures(study: optuna.Study) -> dict[str, Any]:
    """`optimization_history` and, with two or more complete trials over a searched space,
    `param_importances`, as matplotlib figures keyed by file stem."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from optuna.visualization import matplotlib as ovm

    figs: dict[str, Any] = {}
    with warnings.catch_warnings():
        # Both plot functions are marked experimental; the warning says nothing actionable.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figs["optimization_history"] = ovm.plot_optimization_history(study).figure
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) >= 2:
            try:
                figs["param_importances"] = ovm.plot_param_importances(study).figure
            except (ValueError, RuntimeError):
                # Importances need variation in at least one parameter among complete trials.
                pass
    return figs
