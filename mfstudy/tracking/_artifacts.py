"""The study's summary artifacts on the parent run: trials table, best trial, figures.

The two figures of the blog post (the best trial's learning curve, every trial's test
precision@k per epoch) are drawn from the per-epoch metrics read back from MLflow, so they show
exactly what was tracked. Drawing uses matplotlib's object API with an Agg canvas: no pyplot, no
global backend switch, safe in headless workers.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag, ViewType
from mlflow.exceptions import MlflowException

from mfstudy.tracking._errors import TrackingError
from mfstudy.tracking._params import clip_param_key
from mfstudy.tracking._transport import short_reason

__all__ = [
    "MSE_METRICS",
    "TEST_METRIC",
    "TRAIN_METRIC",
    "History",
    "learning_curve_figure",
    "log_study_artifacts",
    "read_trial_histories",
    "trial_traces_figure",
]

#: Metric names the tuning package logs per epoch (override in `log_study_artifacts`).
TEST_METRIC = "test_precision_at_k"
TRAIN_METRIC = "train_precision_at_k"
MSE_METRICS = ("train_mse", "test_mse")

#: metric name -> [(epoch, value), ...] in epoch order
History = dict[str, list[tuple[int, float]]]


def read_trial_histories(
    uri: str, parent_run_id: str, metrics: Sequence[str]
) -> dict[int, History]:
    """Per-epoch values of `metrics` for every trial run nested under `parent_run_id`."""
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    out: dict[int, History] = {}
    token: str | None = None
    while True:
        page = client.search_runs(
            [exp_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        for run in page:
            number = run.data.tags.get("mfstudy.trial_number")
            if number is None:
                continue
            hist: History = {}
            for key in metrics:
                if key in run.data.metrics:
                    points = client.get_metric_history(run.info.run_id, key)
                    hist[key] = sorted((int(m.step), float(m.value)) for m in points)
            out[int(number)] = hist
        token = page.token
        if not token:
            return out


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def learning_curve_figure(
    history: History,
    title: str = "best trial",
    pk_metrics: Sequence[str] = (TRAIN_METRIC, TEST_METRIC),
    mse_metrics: Sequence[str] = MSE_METRICS,
) -> Any:
    """Train and test precision@k per epoch (left) and MSE per epoch (right, if logged)."""
    has_mse = any(history.get(m) for m in mse_metrics)
    fig = _new_figure(11 if has_mse else 6, 4)
    axes = fig.subplots(1, 2 if has_mse else 1, squeeze=False)[0]
    for key in pk_metrics:
        if history.get(key):
            steps, values = zip(*history[key], strict=True)
            axes[0].plot(steps, values, marker="o", markersize=3, label=key)
    axes[0].set(xlabel="epoch", ylabel="precision@k", title=f"{title}: precision@k")
    axes[0].legend(loc="best")
    if has_mse:
        for key in mse_metrics:
            if history.get(key):
                steps, values = zip(*history[key], strict=True)
                axes[1].plot(steps, values, marker="o", markersize=3, label=key)
        axes[1].set(xlabel="epoch", ylabel="MSE", title=f"{title}: MSE")
        axes[1].legend(loc="best")
    return fig


def trial_traces_figure(
    traces: Mapping[int, Sequence[tuple[int, float]]],
    best_trial: int | None = None,
    metric: str = TEST_METRIC,
) -> Any:
    """Every trial's `metric` per epoch; the best trial drawn on top and labelled."""
    fig = _new_figure(7, 4.5)
    ax = fig.subplots()
    for number, points in sorted(traces.items()):
        if not points or number == best_trial:
            continue
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=1)
    if best_trial is not None and traces.get(best_trial):
        steps, values = zip(*traces[best_trial], strict=True)
        ax.plot(steps, values, color="tab:red", linewidth=2.2, label=f"best (trial {best_trial})")
        ax.legend(loc="best")
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch, {len(traces)} trials")
    return fig


def _save_figure(obj: Any, folder: Path, name: str) -> Path:
    """A matplotlib Figure (or Axes, as Optuna's matplotlib plots return) or an image path."""
    if isinstance(obj, str | Path):
        path = Path(obj)
        if not path.is_file():
            raise TrackingError(f"figure {name!r}: file {path} does not exist")
        return path
    fig = obj if hasattr(obj, "savefig") else getattr(obj, "figure", None)
    if fig is None and hasattr(obj, "__len__") and len(obj):  # array of Axes
        fig = getattr(next(iter(getattr(obj, "flat", obj))), "figure", None)
    if fig is None or not hasattr(fig, "savefig"):
        raise TypeError(f"figure {name!r}: expected a matplotlib Figure/Axes or a path")
    if fig.canvas is None or type(fig.canvas).__name__ == "FigureCanvasBase":
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110)
    return path


def log_study_artifacts(
    uri: str,
    parent_run_id: str,
    trials: list[dict[str, Any]],
    figures: Mapping[str, Any],
    best: dict[str, Any],
    *,
    test_metric: str = TEST_METRIC,
    train_metric: str = TRAIN_METRIC,
    mse_metrics: Sequence[str] = MSE_METRICS,
) -> list[str]:
    """Log `trials.csv`, `best.json` and the figures under `figures/`; return artifact paths.

    `best` names the best trial by `number` (or `trial_number`) and may carry `value`,
    `best_epoch`, `metric` (the objective's metric key) and `params`. The best trial's number,
    value and epoch are logged as the parent run's metrics `best_trial`, `best_<metric>`
    (`best_value` without a `metric`) and `best_epoch`, as the trial runs carry theirs; and
    tag `mfstudy.best_trial`. The learning curve and traces figures are built from the metric
    histories of the nested trial runs; `figures` adds others (e.g. Optuna's optimisation
    history). `trials` is the trials table (`mfstudy.tuning.trials_table`), as `trials.csv`.
    """
    client = MlflowClient(tracking_uri=uri)
    best_number = best.get("number", best.get("trial_number"))
    logged: list[str] = []
    try:
        histories = read_trial_histories(
            uri, parent_run_id, [train_metric, test_metric, *mse_metrics]
        )
        client.log_text(
            parent_run_id, pd.json_normalize(trials, sep=".").to_csv(index=False), "trials.csv"
        )
        client.log_text(
            parent_run_id, json.dumps(best, indent=2, default=str, sort_keys=True), "best.json"
        )
        logged += ["trials.csv", "best.json"]
        tags = []
        # Stamped with the time, not 0: a study closed again (resumed with a larger budget,
        # or closed by several processes) logs another best, and two values of one key at the
        # same (timestamp, step) make MLflow's copy of the run's metrics into the logged model
        # fail (UNIQUE constraint), so nothing registers. Step 0 always: the runs table shows
        # the value of the highest step, then the latest, so the last summary's best wins.
        now = int(time.time() * 1000)
        metrics = []
        if best_number is not None:
            tags.append(RunTag("mfstudy.best_trial", str(int(best_number))))
            metrics.append(Metric("best_trial", float(int(best_number)), now, 0))
        if best.get("value") is not None:
            key = clip_param_key(f"best_{best['metric']}") if best.get("metric") else "best_value"
            metrics.append(Metric(key, float(best["value"]), now, 0))
        if best.get("best_epoch") is not None:
            metrics.append(Metric("best_epoch", float(int(best["best_epoch"])), now, 0))
        if tags or metrics:
            client.log_batch(parent_run_id, metrics=metrics, tags=tags, synchronous=True)

        all_figures: dict[str, Any] = {}
        if best_number is not None and int(best_number) in histories:
            all_figures["learning_curve_best"] = learning_curve_figure(
                histories[int(best_number)],
                title=f"trial {int(best_number)}",
                pk_metrics=(train_metric, test_metric),
                mse_metrics=mse_metrics,
            )
        traces = {n: h.get(test_metric, []) for n, h in histories.items()}
        if any(traces.values()):
            all_figures[f"trials_{test_metric}"] = trial_traces_figure(
                traces, None if best_number is None else int(best_number), test_metric
            )
        all_figures.update(figures)
        with tempfile.TemporaryDirectory(prefix="mfstudy-fig-") as tmp:
            for name, obj in all_figures.items():
                path = _save_figure(obj, Path(tmp), name)
                client.log_artifact(parent_run_id, str(path), "figures")
                logged.append(f"figures/{path.name}")
    except MlflowException as exc:
        raise TrackingError(
            f"could not log study artifacts to run {parent_run_id}: {short_reason(exc)}"
        ) from exc
    return logged
