"""The study flow: prepare (cached), trials as task runs, then retrain, register, report.

The same steps as `mfstudy study` (`mfstudy.study.run_study`), which runs them without any
server, through the same functions: `open_study`, the trial driver
(`mfstudy.tuning.drive_trials`, which decides which trials run; here on :class:`PrefectLanes`,
a task run per trial) and `close_study` (each step a task run). What the flow adds: cached
data tasks, a progress artifact following the budget, and a Markdown artifact with the trials
table and the best parameters.

Where trials run (`task_runner`):
- `process` (default), this machine: trial task runs are threads of the flow's process that
  hand each trial to the study's trial workers (`mfstudy.tuning.local_trials`): the flow's own
  process for one worker, else `workers` processes started once, warmed up while the data is
  prepared and kept for the whole study. A task run per trial then costs milliseconds, where
  Prefect's `ProcessPoolTaskRunner` re-created its context in the pool process for each one
  (about 0.3 s per trial, measured in `bench/orchestration_overhead.py`).
- `dask`: each trial task runs on a worker of a Dask cluster (`prefect-dask`).

Parameters are validated by Prefect (pydantic) before the run starts; the config file itself
is validated by `mfstudy.config.load_config`, whose error names the offending key.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import partial
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.exceptions import TerminationSignal
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import Field

from mfstudy.config import StudyConfig, load_config
from mfstudy.errors import ConfigError
from mfstudy.study import (
    CloseSteps,
    StudyResult,
    StudySession,
    check_study,
    close_study,
    interrupt_study,
    progress_info,
    warm_up,
)
from mfstudy.tracking import redact_uri
from mfstudy.tuning import (
    TrialContext,
    TrialExecutor,
    TrialOutcome,
    drive_trials,
    local_trials,
    threads_per_worker,
)
from tasks import (
    end_study_task,
    ingest_task,
    open_study_task,
    register_task,
    retrain_best_task,
    run_trial_task,
    similarities_task,
    split_task,
    summarize_task,
    threshold_task,
    warm_up_task,
)
from tasks.study import TrialFailed

__all__ = ["PrefectLanes", "artifact_key", "study_flow", "trial_runner", "trials_markdown"]

RunnerKind = Literal["process", "dask"]

#: :func:`~mfstudy.study.close_study`'s steps as task runs (retries where a step is safe to
#: repeat: see `tasks/study.py`).
CLOSE_STEPS = CloseSteps(
    summarize=summarize_task,
    retrain=retrain_best_task,
    similarities=similarities_task,
    register=register_task,
    end=end_study_task,
)


def trial_runner(kind: RunnerKind, workers: int, dask_address: str | None) -> TaskRunner[Any]:
    """Where trial task runs run: threads that wait for this machine's trial workers, or the
    Dask scheduler at an address.

    Threads: one per worker (:func:`run_trials` keeps one trial per worker in flight). With
    Dask, workers on other machines join the same study only if the Optuna storage is shared
    (`study.storage`: a PostgreSQL URL or a journal file on a shared file system).
    """
    if kind == "dask":
        if not dask_address:
            raise ConfigError("task_runner dask: give dask_address, e.g. tcp://10.0.0.5:8786")
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return ThreadPoolTaskRunner(max_workers=workers)


def artifact_key(prefix: str, name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return f"{prefix}-{slug}"


def prepare_data(cfg: StudyConfig) -> Any:
    """Ingest -> threshold -> split as three cached tasks; returns the `Prepared` data."""
    ingested = ingest_task(cfg)
    kept = threshold_task(ingested, cfg)
    return split_task(kept, cfg)


#: Seconds between updates of the progress artifact and the flow's progress line: each is a
#: request the Prefect server spends CPU on, next to the trials on a shared machine.
PROGRESS_EVERY = 5.0


class _Outcome:
    """A trial task run's future, read as its :class:`TrialOutcome`: a failed trial's task
    run ends Failed (with the trial's one line) yet still carries the outcome."""

    def __init__(self, future: PrefectFuture[Any]) -> None:
        self.future = future

    def result(self) -> TrialOutcome:
        got = self.future.result(raise_on_failure=False)
        if isinstance(got, TrialFailed):
            return got.outcome
        if isinstance(got, BaseException):  # a bug, or a cancelled trial
            raise got
        if isinstance(got, TrialOutcome):
            return got
        return self.future.result()  # a state without an outcome (cancelled) raises here


class PrefectLanes:
    """Trial units as task runs of `runner`, named `trial-<number>`
    (:func:`mfstudy.tuning.drive_trials` decides which and when): a thread each that hands the
    unit to `trials`, this machine's trial workers, or with `trials` None runs the unit itself
    on a Dask worker. `runner` (and `trials`) must already be entered."""

    def __init__(self, runner: TaskRunner[Any], trials: TrialExecutor | None) -> None:
        self.runner = runner
        self.trials = trials

    def submit(self, ctx: TrialContext, number: int) -> _Outcome:
        params = {"ctx": ctx, "number": number, "trials": self.trials}
        return _Outcome(self.runner.submit(run_trial_task, params))

    def wait(self, futures: list[Any], timeout: float) -> tuple[list[Any], list[Any]]:
        # The first one done, not all: the next trial starts the moment one ends. Others done
        # meanwhile come at once on the next call (no API read of each pending task run here).
        by_future = {f.future: f for f in futures}
        try:
            first = next(as_completed(list(by_future), timeout=timeout))
        except TimeoutError:
            return [], futures
        done = by_future[first]
        return [done], [f for f in futures if f is not done]


def progress_line(info: dict[str, Any], metric: str) -> str:
    """Trials done of the budget, the best so far, pruned and failed: the progress artifact's
    description and the flow's progress line."""
    best = "-" if info["best"] is None else f"{info['best']:.5f}"
    return (
        f"trials {info['finished']}/{info['total']} done, best {metric} {best}, "
        f"pruned {info['pruned']}, failed {info['fail']}"
    )


def run_trials(
    session: StudySession, runner: TaskRunner[Any], workers: int, trials: TrialExecutor | None
) -> list[TrialOutcome]:
    """The study's trials as task runs, `workers` at a time, with a progress artifact (trials
    done of the budget, best so far, pruned and failed) and a progress line."""
    cfg = session.cfg
    logger = get_run_logger()
    progress = create_progress_artifact(
        0.0, key=artifact_key("trials", cfg.name), description=f"{cfg.name}: starting"
    )
    reported = [time.monotonic()]

    def on_poll(study: Any, last: bool) -> None:
        # Each update is a request the server spends CPU on, next to the trials.
        if not last and time.monotonic() - reported[0] < PROGRESS_EVERY:
            return
        reported[0] = time.monotonic()
        info = progress_info(study, cfg)
        line = progress_line(info, cfg.metric)
        if progress is not None:
            update_progress_artifact(
                progress,
                100.0 * min(1.0, info["finished"] / max(1, info["total"])),
                description=f"{cfg.name}: {line}",
            )
        logger.info("%s", line)

    return drive_trials(session.ctx, PrefectLanes(runner, trials), workers, on_poll=on_poll)


def trials_markdown(
    cfg: StudyConfig, result: StudyResult, links: dict[str, str | None] | None = None
) -> str:
    """The study report: best trial, its parameters, registration, and every trial; with
    `links` (browser URLs of the MLflow runs `parent` and `best`), links to both."""
    links = links or {}
    table, best = result.trials, result.best
    param_cols = sorted({k for row in table for k in row if k.startswith("param.")})
    cols = ["number", "state", "value", "best_epoch", "duration_s", *param_cols]

    def cell(v: Any) -> str:
        if v is None:
            return ""
        return f"{v:.5g}" if isinstance(v, float) else str(v)

    header = "| " + " | ".join(c.removeprefix("param.") for c in cols) + " |"
    rule = "|" + "---|" * len(cols)
    rows = ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in table]
    params = "\n".join(f"| `{k}` | {cell(v)} |" for k, v in best.params.items())
    verdict = "now **champion**" if result.promoted else "champion unchanged"
    return (
        f"# Study `{result.study_name}`\n\n"
        f"Best trial **#{best.number}** ({best.family}): {cfg.metric} = **{best.value:.5f}** "
        f"at epoch {best.best_epoch}.\n\n"
        f"| parameter | value |\n|---|---|\n{params}\n| epochs | {best.best_epoch} |\n\n"
        f"Registered `{result.model_name}` version {result.model_version}: {verdict}. "
        f"MLflow parent run {_link(f'`{result.parent_run_id}`', links.get('parent'))} at "
        f"{redact_uri(result.tracking_uri)}; the best trial's run: "
        f"{_link(f'trial-{best.number:04d}', links.get('best'))}.\n\n"
        f"## Trials\n\n{header}\n{rule}\n" + "\n".join(rows) + "\n"
    )


def _link(text: str, url: str | None) -> str:
    return text if url is None else f"[{text}]({url})"


def mlflow_links(session: StudySession, result: StudyResult) -> dict[str, str | None]:
    """Browser URLs of the study's MLflow parent run and of its best trial's run (None each
    with a local store, which has no URL, or a run not found)."""
    from mfstudy import tracking
    from mfstudy.tuning import find_study

    best_run = None
    study = find_study(session.cfg)
    for t in study.get_trials(deepcopy=False) if study is not None else []:
        if t.number == result.best.number:
            best_run = t.user_attrs.get("mlflow_run_id")
    return {
        "parent": tracking.run_url(session.uri, session.experiment_id, result.parent_run_id),
        "best": None
        if best_run is None
        else tracking.run_url(session.uri, session.experiment_id, best_run),
    }


def _stop_reason(exc: BaseException) -> str:
    """Why the trial workers were stopped, as the stopped trials record it."""
    if isinstance(exc, TerminationSignal):  # how Prefect delivers a cancellation (SIGTERM)
        return f"flow run cancelled or terminated (signal {exc.signal})"
    return f"flow run interrupted ({type(exc).__name__})"


PositiveInt = Annotated[int, Field(ge=1)]


@flow(name="mf-study", validate_parameters=True)
def study_flow(
    config: str | None = None,
    n_trials: PositiveInt | None = None,
    workers: PositiveInt | None = None,
    timeout: Annotated[float, Field(gt=0)] | None = None,
    overrides: list[str] | None = None,
    task_runner: RunnerKind = "process",
    dask_address: str | None = None,
) -> StudyResult:
    """Prepare the data, run the study's trials as task runs, retrain and register the best.

    `config` is a study YAML (None: the embedded quickstart); `n_trials`, `workers` and
    `timeout` override `study.*`; `overrides` are `key=value` like `mfstudy --set`;
    `task_runner` is `process` (local) or `dask` with `dask_address` (a scheduler). Returns
    the :class:`~mfstudy.study.StudyResult` that `mfstudy study` prints.
    """
    logger = get_run_logger()
    cfg = load_config(config, overrides or [], n_trials=n_trials, workers=workers, timeout=timeout)
    check_study(cfg)  # config and tracking errors before any data is prepared
    n_workers = cfg.study.workers
    runner = trial_runner(task_runner, n_workers, dask_address)
    trials = None
    if task_runner == "process":
        trials = local_trials(n_workers, threads_per_worker(cfg, n_workers), partial(warm_up, cfg))
    with runner, trials or nullcontext():
        # Trial workers start and warm up while the data is prepared, not after.
        warm = [
            runner.submit(warm_up_task, {"cfg": cfg, "slot": i, "trials": trials})
            for i in range(n_workers)
        ]
        prepared = prepare_data(cfg)
        session = open_study_task(cfg, prepared)
        # The study for this data: `cfg.name`, or `<name>-<fingerprint>` when the data changed
        # since its trials ran (`mfstudy.study.study_for_data`); reported under that name.
        cfg = session.cfg
        wait(warm)
        try:
            run_trials(session, runner, n_workers, trials)
        except BaseException as exc:
            if trials is not None:
                # Kill the trial workers now rather than wait for their trials: each trial task
                # run then marks its trial failed (Optuna and MLflow) and ends Cancelled.
                trials.stop(_stop_reason(exc))
            # Not a task: a cancelled flow run is Cancelling, and no new task run may start.
            interrupt_study(session)
            raise
    # The command's close sequence, each step a task run of its own.
    result = close_study(session, CLOSE_STEPS)
    create_markdown_artifact(
        trials_markdown(cfg, result, mlflow_links(session, result)),
        key=artifact_key("study", cfg.name),
        description=f"{cfg.name}: trials and best parameters",
    )
    logger.info(
        "study %s done in %.1fs: %s v%s",
        cfg.name,
        result.seconds,
        result.model_name,
        result.model_version,
    )
    return result


if __name__ == "__main__":  # pragma: no cover - `python flows/study.py [config]`
    import sys

    study_flow(config=sys.argv[1] if len(sys.argv) > 1 else None)
