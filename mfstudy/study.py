"""A study's lifecycle: open it, run its trials, close it.

:func:`run_study` (`mfstudy study`) is :func:`open_study` (checks, the prepared data, the Optuna
study for this data, :func:`study_for_data`, and the MLflow parent run), the trials (the trial
driver, `mfstudy.tuning.run_local`, on this machine), and :func:`close_study` (the tracking
check, :func:`summarize_study`, the best refitted and registered by `mfstudy.registration`,
:func:`end_study`; :func:`interrupt_study` when the trials are cut short). :func:`warm_up` pays
a trial process's one-time costs, :func:`progress_info` is what progress displays show.

This module wires the layers together: `mfstudy.tuning` (Optuna) runs the trials,
`mfstudy.tracking` (MLflow) records them, `mfstudy.workdir` holds the working folder's paths and
locks. The Prefect flow (`flows/study.py`) calls the same functions: the driver on its own
lanes, and :func:`close_study` with its tasks as :class:`CloseSteps`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfstudy.config import StudyConfig
from mfstudy.errors import StudyError
from mfstudy.models import Recommender, model_class
from mfstudy.prepare import Prepared, data_fingerprint, prepare, write_prepared
from mfstudy.registration import log_similarities, refit_best, register_model
from mfstudy.secrets import public_config, redact_uri
from mfstudy.tuning import (
    BestTrial,
    TrialContext,
    best_trial,
    build_model,
    check_sampler,
    check_space,
    check_tuning,
    constructor_params,
    counts,
    create_study,
    fail_stale_trials,
    find_study,
    optuna_figures,
    run_local,
    storage_spec,
    threads_per_worker,
    trials_table,
)
from mfstudy.workdir import prepared_dir, spool_dir, study_lock

__all__ = [
    "CloseSteps",
    "StudyResult",
    "StudySession",
    "check_study",
    "close_study",
    "end_study",
    "interrupt_study",
    "open_study",
    "progress_info",
    "run_study",
    "study_for_data",
    "summarize_study",
    "warm_up",
]

log = logging.getLogger("mfstudy.study")

#: Optuna study user attributes: the fingerprint of the data its trials are scored on
#: (:func:`data_fingerprint`) and where they are tracked (redacted tracking URI).
DATA_FINGERPRINT_ATTR = "mfstudy.data_fingerprint"
TRACKING_ATTR = "mfstudy.tracking"


@dataclass(frozen=True)
class StudyResult:
    """What a study ended with; `mfstudy study` prints it and the `mf-study` flow returns it.
    `tracking_uri` is shown without its password."""

    best: BestTrial
    counts: dict[str, int]
    tracking_uri: str
    parent_run_id: str
    model_name: str | None
    model_version: str | None
    promoted: bool
    seconds: float
    study_name: str
    """The Optuna study (and MLflow parent run) the trials are in: the config's name, or
    `<name>-<fingerprint>` when the data changed (see :func:`study_for_data`)."""
    trials: list[dict[str, Any]] = field(default_factory=list)
    """The trials table (`mfstudy.tuning.trials_table`), one row per trial."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for reports and flows)."""
        return asdict(self)


def progress_info(study: Any, cfg: StudyConfig) -> dict[str, Any]:
    """Trial counts by state, the budget and the best value so far (for progress displays)."""
    c = counts(study)
    try:
        best_value = study.best_value
    except ValueError:
        best_value = None
    return {**c, "total": cfg.study.n_trials, "best": best_value, "study": cfg.name}


@dataclass(frozen=True)
class StudySession:
    """An opened study: its data, Optuna storage, MLflow parent run and the worker context.

    Everything in it is plain data, so a Prefect flow can hand it from one step to the next.
    """

    cfg: StudyConfig
    uri: str
    prepared: Prepared
    data_dir: Path
    parent_run_id: str
    experiment_id: str
    spool: Path
    threads: int
    ctx: TrialContext
    started: float


def check_study(cfg: StudyConfig) -> str:
    """What can fail a study before its data is touched; returns the tracking URI.

    Config errors pydantic cannot see (parameters a model does not take, a grid without
    choices or smaller than the budget), and an unreachable tracking server: an hour of
    trials nobody can compare is worse than an error now.
    """
    from mfstudy import tracking

    check_space(cfg.search_space, {f: constructor_params(model_class(f)) for f in cfg.search_space})
    check_sampler(cfg)
    check_tuning(cfg)
    uri = tracking.tracking_uri_for(cfg.tracking.uri, cfg.workdir.resolve())
    tracking.check_reachable(uri)
    return uri


def _continuation(cfg: StudyConfig, name: str) -> StudyConfig:
    """`cfg` as study `name`: its trials, parent run, prepared data, spool and locks are its
    own (`<workdir>/<name>/`), while the Optuna storage, the MLflow experiment and the
    registered model stay `cfg`'s, so the studies of one config sit side by side and its
    model line goes on."""
    return cfg.model_copy(
        update={
            "name": name,
            "study": cfg.study.model_copy(
                update={
                    "storage": storage_spec(cfg),
                    "register_as": cfg.study.register_as or cfg.name,
                }
            ),
            "tracking": cfg.tracking.model_copy(
                update={"experiment": cfg.tracking.experiment or cfg.name}
            ),
        }
    )


def _record(study: Any, fingerprint: str, location: str) -> None:
    study.set_user_attr(DATA_FINGERPRINT_ATTR, fingerprint)
    study.set_user_attr(TRACKING_ATTR, location)


def study_for_data(cfg: StudyConfig, fingerprint: str, uri: str) -> tuple[StudyConfig, Any]:
    """The config of the study whose trials are scored on the data of `fingerprint`.

    A study records its data fingerprint (and tracking location) when created, and is only
    resumed on the same data. On other data, `study.on_data_change` decides: `error` raises
    :class:`StudyError`; `new_study` returns the config of study `<name>-<fingerprint[:8]>`
    (see :func:`_continuation`). That name is a function of the data, so every later run on
    the same data finds it again, and a run on the original data resumes the original study.
    A study created before fingerprints were recorded adopts the current one (with a warning:
    its trials cannot be checked). Call under the study's lock. Returns the study's config and
    the study, None when it does not exist yet (nothing is created here).
    """
    base = find_study(cfg)
    if base is None:
        return cfg, None
    recorded = base.user_attrs.get(DATA_FINGERPRINT_ATTR)
    if recorded is None:
        n = _trials_run(base)
        if n:
            log.warning(
                "study %r has %d trial(s) from before data fingerprints were recorded: assuming "
                "they were scored on the current data (fingerprint %s); if not, start a new "
                "study with --set name=<new name>",
                cfg.name,
                n,
                fingerprint[:8],
            )
        # Its tracking location is left to _check_location, which asks the server.
        base.set_user_attr(DATA_FINGERPRINT_ATTR, fingerprint)
        return cfg, base
    if recorded == fingerprint:
        return cfg, base
    name = f"{cfg.name}-{fingerprint[:8]}"
    change = (
        f"data changed since study {cfg.name!r} was run (fingerprint {recorded[:8]} -> "
        f"{fingerprint[:8]})"
    )
    if cfg.study.on_data_change == "error":
        raise StudyError(
            f"{change} and study.on_data_change is error: nothing was run; restore the data, or "
            f"set study.on_data_change=new_study to run its trials in new study {name!r}"
        )
    new = _continuation(cfg, name)
    existing = find_study(new)
    if existing is None:
        log.warning("%s: trials go to new study %r", change, name)
        return new, None
    theirs = existing.user_attrs.get(DATA_FINGERPRINT_ATTR)
    if theirs not in (None, fingerprint):
        raise StudyError(
            f"{change}, but study {name!r} in {redact_uri(storage_spec(cfg))} holds trials of "
            "other data "
            f"(fingerprint {theirs[:8]}); rename or remove it"
        )
    if theirs is None:
        existing.set_user_attr(DATA_FINGERPRINT_ATTR, fingerprint)
    log.warning("%s: trials go to study %r (resumed)", change, name)
    return new, existing


def _trials_run(study: Any) -> int:
    """Trials that started (and so were scored and tracked): not the enqueued ones still
    WAITING, which have no score and no MLflow run yet (`study.enqueue_trial`)."""
    return sum(t.state.name != "WAITING" for t in study.get_trials(deepcopy=False))


def _check_location(cfg: StudyConfig, study: Any, uri: str) -> None:
    """Refuse to resume study `cfg.name` at a tracking location that lacks its trials.

    Re-pointing a study at another server (`tracking.uri`) used to create an empty parent run
    there and register a model whose run holds none of the trials it was chosen from. The
    trials are not re-logged to the new location: Optuna keeps only the objective's curve,
    while the runs also hold every other metric, so a copy would be a lossy one (and the old
    server may be gone). So a study with trials resumes only where its parent run is: at the
    recorded location, or at one that holds that run (a moved MLflow store, a moved workdir's
    SQLite file), which is then recorded. Otherwise one line names both locations.
    """
    from mfstudy import tracking

    here = tracking.redact_uri(uri)
    recorded = study.user_attrs.get(TRACKING_ATTR)
    n = _trials_run(study)
    experiment = cfg.tracking.experiment or cfg.name
    if n and tracking.find_study_run(uri, experiment, cfg.name) is None:
        if recorded not in (None, here):
            raise StudyError(
                f"study {cfg.name!r} logged its {n} trial(s) to {recorded}, but tracking.uri is "
                f"now {here}, which has none of them: set tracking.uri back to {recorded}, or "
                f"start a new study there with --set name=<new name>"
            )
        raise StudyError(
            f"study {cfg.name!r} has {n} trial(s) but no parent run in experiment "
            f"{experiment!r} at {here} (deleted, or logged elsewhere): restore the run or set "
            f"tracking.uri to where it is, or start a new study with --set name=<new name>"
        )
    if recorded != here:
        if recorded is not None:
            log.warning("study %r is now tracked at %s (was %s)", cfg.name, here, recorded)
        study.set_user_attr(TRACKING_ATTR, here)


def _loggable(cfg: StudyConfig) -> dict[str, Any]:
    """The config as logged on the parent run: URIs without their passwords."""
    return public_config(cfg.model_dump(mode="json"))


def open_study(
    cfg: StudyConfig, prepared: Prepared | None = None, *, run_tags: dict[str, str] | None = None
) -> StudySession:
    """Everything before the first trial: checks, data, the Optuna study, the parent run.

    `prepared` is the output of the preparation stages when the caller ran them itself (the
    Prefect flow does, to cache them); otherwise `prepare(cfg)` runs here. The study is the
    one for this data (:func:`study_for_data`): `cfg.name`, or `<name>-<fingerprint>` when
    the data changed since its trials ran; the session's `cfg` is that study's. The data is
    written to `<workdir>/<study>/data`, where worker processes read it. Trials left RUNNING by
    a crashed worker are failed (and their MLflow runs closed) so the budget re-runs them.
    `run_tags` are set on the study's MLflow runs: the parent run (updated when it is resumed)
    and every trial run (links to the orchestrator's runs, say).
    """
    from mfstudy import tracking

    start = time.perf_counter()
    uri = check_study(cfg)

    if prepared is None:
        prepared = prepare(cfg)
    fingerprint = data_fingerprint(prepared)
    # Several processes may open one study at once (`mfstudy study` started twice, or on a
    # schedule); unserialised they swap the prepared folder under each other's feet, both
    # create a parent run, and both replay (so duplicate) the same spooled trial runs. The
    # config's lock also serialises choosing (and creating) the study for the data.
    with study_lock(cfg), ExitStack() as locks:
        base_spool = spool_dir(cfg)
        scfg, existing = study_for_data(cfg, fingerprint, uri)
        if scfg is not cfg:
            # Its workers hold its own lock (shared) while they read its prepared data.
            locks.enter_context(study_lock(scfg))
        if existing is not None:
            _check_location(scfg, existing, uri)  # before anything is written
        study, spec = create_study(scfg)
        if existing is None:
            _record(study, fingerprint, tracking.redact_uri(uri))
        cfg = scfg
        spool = spool_dir(cfg)
        data_dir = write_prepared(prepared, prepared_dir(cfg))
        parent = tracking.start_study(
            uri,
            cfg.tracking.experiment or cfg.name,
            cfg.name,
            _loggable(cfg),
            prepared.stats,
            data_dir / "stats.json",
            tags=run_tags,
        )
        for t in fail_stale_trials(study, cfg):
            log.warning("trial %d was left running by a crashed worker: marked failed", t.number)
            tracking.fail_trial_run(
                uri,
                parent.experiment_id,
                parent.run_id,
                t.number,
                t.user_attrs.get("mlflow_run_id"),
                "worker crashed; marked failed on resume",
            )
        _replay_spool(uri, spool)
        if spool != base_spool:
            # Records of the earlier study's trials, spooled in an outage: that study may
            # never be opened again (its data is gone), so they are sent now.
            _replay_spool(uri, base_spool)

    threads = threads_per_worker(cfg, cfg.study.workers)
    ctx = TrialContext(
        config=cfg,
        storage=spec,
        study_name=cfg.name,
        prepared_dir=data_dir,
        n_trials=cfg.study.n_trials,
        threads=threads,
        tracker=tracking.MlflowTrialLogs(
            uri,
            parent.experiment_id,
            parent.run_id,
            spool,
            cfg.tracking.flush_seconds,
            metric=cfg.metric,
            tags=tuple((run_tags or {}).items()),
        ),
        deadline=time.time() + cfg.study.timeout if cfg.study.timeout else None,
    )
    return StudySession(
        cfg,
        uri,
        prepared,
        data_dir,
        parent.run_id,
        parent.experiment_id,
        spool,
        threads,
        ctx,
        start,
    )


def summarize_study(session: StudySession) -> tuple[BestTrial, dict[str, int], list[dict]]:
    """Replay spooled trial data, pick the best trial and log the study's artifacts (trials
    table, figures, best trial) on the parent run. Returns (best, counts, trials table)."""
    from mfstudy import tracking

    cfg, uri = session.cfg, session.uri
    with study_lock(cfg):
        _replay_spool(uri, session.spool)
    study, _ = create_study(cfg)
    n = counts(study)
    best = best_trial(study, cfg)
    table = trials_table(study)
    k = cfg.evaluation.k
    tracking.log_study_artifacts(
        uri,
        session.parent_run_id,
        trials=table,
        figures=optuna_figures(study),
        best={
            "number": best.number,
            "value": best.value,
            "best_epoch": best.best_epoch,
            "family": best.family,
            "params": best.params,
            "metric": cfg.metric,
        },
        test_metric=f"test_precision_at_{k}",
        train_metric=f"train_precision_at_{k}",
    )
    return best, n, table


def _replay_spool(uri: str, spool: Path) -> None:
    """Send the trial records spooled during a tracking outage; say so if some still fail."""
    from mfstudy import tracking

    report = tracking.replay_spool(uri, spool)
    if report.failed:
        reasons = "; ".join(sorted(set(report.failed.values())))
        log.warning(
            "%d spooled trial record(s) could not be sent to %s (%s): kept in %s, sent on the "
            "next run",
            len(report.failed),
            uri,
            reasons[:300],
            spool,
        )


def _check_tracking(session: StudySession) -> None:
    """Before closing: a tracking server gone since the trials started is one clear error
    (nothing registered, where the trials' records wait) instead of minutes of retries."""
    from mfstudy import tracking

    try:
        tracking.check_reachable(session.uri)
    except tracking.TrackingError as exc:
        waiting = len(list(session.spool.glob("*.json"))) if session.spool.is_dir() else 0
        raise tracking.TrackingError(
            f"{exc}; the trials are done but nothing was registered, and {waiting} trial "
            f"record(s) wait in {session.spool}; re-run the same command once the server is back"
        ) from None


def end_study(session: StudySession, state: str) -> None:
    """End the parent run: `complete`, `failed` or `interrupted` (resumable)."""
    from mfstudy import tracking

    tracking.finish_study(session.uri, session.parent_run_id, state)  # type: ignore[arg-type]


def _end_after_error(session: StudySession, state: str) -> None:
    """End the parent run while an error is on its way out: a tracking failure here (the
    server may be what failed) is logged, so it does not replace that error."""
    from mfstudy import tracking

    try:
        end_study(session, state)
    except tracking.TrackingError as exc:
        log.warning("%s", exc)


def _retrain(session: StudySession, best: BestTrial) -> Recommender:
    """The best trial's model fitted on the full data for its best epoch count."""
    return refit_best(best, session.prepared, session.cfg, session.threads)


def _similarities(session: StudySession, model: Recommender) -> None:
    """The item-to-item similarity table on the parent run."""
    log_similarities(session.cfg, model, session.prepared, session.parent_run_id, session.uri)


def _register(session: StudySession, best: BestTrial, model: Recommender) -> tuple[str, str, bool]:
    """Register `model`; alias `champion` moves if it beats the champion on this holdout."""
    return register_model(
        session.cfg, best, model, session.prepared, session.parent_run_id, session.uri
    )


@dataclass(frozen=True)
class CloseSteps:
    """The steps of :func:`close_study` after the tracking check, in order.

    Each takes the session first. The defaults run them here; an orchestrator passes its own
    wrappers of the same functions (the Prefect flow: a task each, so every step is its own
    task run with its own retries), and :func:`close_study` keeps the order and the
    safeguards around them.
    """

    summarize: Callable[[StudySession], tuple[BestTrial, dict[str, int], list[dict]]] = (
        summarize_study
    )
    retrain: Callable[[StudySession, BestTrial], Recommender] = _retrain
    similarities: Callable[[StudySession, Recommender], None] = _similarities
    register: Callable[[StudySession, BestTrial, Recommender], tuple[str, str, bool]] = _register
    end: Callable[[StudySession, str], None] = end_study


def close_study(session: StudySession, steps: CloseSteps | None = None) -> StudyResult:
    """Everything after the last trial: check the tracking server is still there, pick the
    best, log the study's artifacts, retrain the best on the full data, register it and end the
    parent run (FAILED, with the original error kept, if any of it fails)."""
    steps = steps or CloseSteps()
    try:
        _check_tracking(session)
        best, n, table = steps.summarize(session)
        model = steps.retrain(session, best)
        steps.similarities(session, model)
        name, version, promoted = steps.register(session, best, model)
    except BaseException:
        _end_after_error(session, "failed")
        raise
    steps.end(session, "complete")
    return StudyResult(
        best=best,
        counts=n,
        tracking_uri=redact_uri(session.uri),  # a report: persisted by Prefect, printed
        parent_run_id=session.parent_run_id,
        model_name=name,
        model_version=version,
        promoted=promoted,
        seconds=time.perf_counter() - session.started,
        study_name=session.cfg.name,
        trials=table,
    )


def interrupt_study(session: StudySession) -> None:
    """End the parent run KILLED (the trials were interrupted; a re-run resumes them)."""
    _end_after_error(session, "interrupted")


def run_study(
    cfg: StudyConfig,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    prepared: Prepared | None = None,
) -> StudyResult:
    """Run the study `cfg` end to end on this machine, without any server.

    The same steps as the Prefect flow (`flows/study.py`): :func:`open_study` (on `prepared`
    when the caller prepared the data already), the trials (:func:`mfstudy.tuning.drive_trials`,
    here on this machine's :class:`~mfstudy.tuning.LocalLanes`), :func:`close_study`.
    """
    session = open_study(cfg, prepared)
    cfg = session.cfg  # the study for this data (its name may carry the data's fingerprint)

    def poll(study: Any, last: bool) -> None:
        if on_progress is not None:
            on_progress(progress_info(study, cfg))

    try:
        run_local(session.ctx, cfg.study.workers, on_poll=poll)
    except BaseException:
        interrupt_study(session)
        raise
    return close_study(session)


def warm_up(cfg: StudyConfig) -> float:
    """Pay a trial process's one-time costs before its first trial; the seconds spent.

    A fresh process spends seconds importing Optuna, MLflow and `implicit` and loading the numba
    kernels from their cache; done first (while the data is still being prepared) that is not
    added to the first trial. Fits each searched family for one epoch on a tiny generated
    matrix and evaluates it; nothing is written or logged.
    """
    import scipy.sparse as sp

    from mfstudy import tracking
    from mfstudy.evaluation import evaluate_model

    start = time.perf_counter()
    tracking.TrialRun  # noqa: B018  (imports MLflow, as a trial's logging does)
    rng = np.random.default_rng(cfg.seed)
    dense = (rng.random((12, 10)) < 0.5).astype(np.float32) * rng.integers(1, 5, (12, 10))
    train = sp.csr_matrix(dense)
    users = np.arange(12, dtype=np.int64)
    for family in cfg.search_space:
        accepted = constructor_params(model_class(family))
        tiny = {k: v for k, v in {"factors": 2, "iterations": 1}.items() if k in accepted}
        model = build_model(cfg, family, tiny, threads=1)
        model.fit(train)
        evaluate_model(model, train, train, users, cfg.evaluation)
    return time.perf_counter() - start
