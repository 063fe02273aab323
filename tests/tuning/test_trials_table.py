"""The trials table's `value`: the metric at each trial's best epoch, whatever its state."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from mfstudy.tuning import trials_table


def _trial(study: optuna.Study, curve: dict[int, float], best_epoch: int | None) -> optuna.Trial:
    trial = study.ask()
    for epoch, value in curve.items():
        trial.report(value, epoch)
    if best_epoch is not None:
        trial.set_user_attr("best_epoch", best_epoch)
    return trial


def test_value_is_the_metric_at_the_best_epoch_for_pruned_and_failed_trials_too() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    complete = _trial(study, {1: 0.2, 2: 0.4, 3: 0.3}, best_epoch=2)
    study.tell(complete, 0.4)
    pruned = _trial(study, {1: 0.1, 2: 0.35, 3: 0.15}, best_epoch=2)
    study.tell(pruned, state=TrialState.PRUNED)
    diverged = _trial(study, {1: 0.25, 2: 0.05}, best_epoch=1)
    study.tell(diverged, state=TrialState.FAIL)
    crashed = _trial(study, {}, best_epoch=None)
    study.tell(crashed, state=TrialState.FAIL)

    frozen = {t.number: t for t in study.get_trials()}
    # What the table must not show: Optuna gives a pruned trial its last value.
    assert frozen[pruned.number].value == 0.15

    rows = {r["number"]: r for r in trials_table(study)}
    assert (rows[complete.number]["value"], rows[complete.number]["best_epoch"]) == (0.4, 2)
    assert rows[complete.number]["value"] == frozen[complete.number].value
    assert (rows[pruned.number]["state"], rows[pruned.number]["value"]) == ("pruned", 0.35)
    assert rows[pruned.number]["best_epoch"] == 2
    assert (rows[diverged.number]["state"], rows[diverged.number]["value"]) == ("fail", 0.25)
    assert rows[crashed.number]["value"] is None and rows[crashed.number]["best_epoch"] is None
    assert [r["epochs_reported"] for r in rows.values()] == [3, 3, 2, 0]
