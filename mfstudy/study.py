"""A whole study on this machine: prepare, tune in parallel, retrain the best, register it.

This module wires the layers together: `mfstudy.tuning` (Optuna) runs the trials,
`mfstudy.tracking` (MLflow) records them. The Prefect flow calls the same steps as tasks.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfstudy.config import DataSource, StudyConfig
from mfstudy.errors import StudyError
from mfstudy.models import DivergedError, Recommender, model_class
from mfstudy.prepare import Prepared, prepare, read_prepared, write_prepared
from mfstudy.tuning import (
    BestTrial,
    TrialContext,
    TrialOutcome,
    best_trial,
    build_model,
    check_sampler,
    check_space,
    check_tuning,
    constructor_params,
    counts,
    create_study,
    fail_stale_trials,
    limit_threads,
    optuna_figures,
    run_trial,
    run_workers,
    study_lock,
    threads_per_worker,
    trials_table,
)

__all__ = [
    "MlflowTrialLogs",
    "StudyResult",
    "StudySession",
    "check_study",
    "close_study",
    "data_fingerprint",
    "data_summary",
    "end_study",
    "holdout_fingerprint",
    "input_checksum",
    "input_files",
    "interrupt_study",
    "log_model_version",
    "log_similarities",
    "one_trial",
    "open_study",
    "register_best",
    "register_model",
    "retrain",
    "run_study",
    "similar_items_table",
    "summarize_study",
    "warm_up",
]

log = logging.getLogger("mfstudy.study")


@dataclass(frozen=True)
class MlflowTrialLogs:
    """Opens a trial's nested MLflow run; picklable, so worker processes can call it.

    The run is created at the trial's first flush (after `flush_seconds`) or at its end,
    whichever comes first (see `tracking.flush_seconds`)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    spool_dir: Path
    flush_seconds: float

    def __call__(self, number: int, params: dict[str, Any]) -> Any:
        from mfstudy.tracking import TrialRun

        return TrialRun.start(
            self.uri,
            self.experiment_id,
            self.parent_run_id,
            number,
            params,
            spool_dir=self.spool_dir,
            flush_every=None,
            flush_seconds=self.flush_seconds,
            create_now=False,
        )


@dataclass(frozen=True)
class StudyResult:
    best: BestTrial
    counts: dict[str, int]
    tracking_uri: str
    parent_run_id: str
    model_name: str | None
    model_version: str | None
    promoted: bool
    seconds: float


def holdout_fingerprint(prepared: Prepared) -> str:
    """Identifies the train/test split, so scores are only compared on the same holdout."""
    h = hashlib.sha256()
    for m in (prepared.train, prepared.test):
        h.update(np.asarray(m.shape, np.int64).tobytes())
        h.update(m.indptr.tobytes())
        h.update(m.indices.tobytes())
    h.update(prepared.users.tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(prepared: Prepared) -> str:
    """Identifies the prepared data itself: every interaction with its weight, the raw ids
    behind the rows and columns, and the holdout. Equal fingerprints mean a model trained and
    scored on either would be the same model with the same score."""
    h = hashlib.sha256(holdout_fingerprint(prepared).encode())
    full = prepared.full
    h.update(np.asarray(full.shape, np.int64).tobytes())
    for part in (full.indptr, full.indices, full.data):
        h.update(np.ascontiguousarray(part).tobytes())
    for ids in (prepared.interactions.user_ids, prepared.interactions.item_ids):
        h.update("\x1f".join(map(str, np.asarray(ids).tolist())).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def retrain(best: BestTrial, prepared: Prepared, cfg: StudyConfig, threads: int) -> Recommender:
    """The best trial's model fitted on the full data (train + test) for its best epoch count.

    Raises StudyError if training diverges: a NaN model is never registered.
    """
    params = dict(best.params)
    if "iterations" in constructor_params(model_class(best.family)):
        params["iterations"] = best.best_epoch
    model = build_model(cfg, best.family, params, threads)
    handle = limit_threads(threads)
    try:
        model.fit(prepared.full)
    except DivergedError as exc:
        raise StudyError(
            f"retraining trial {best.number} on the full data diverged: {exc}"
        ) from None
    finally:
        del handle
    p, q = model.scoring_factors()
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise StudyError(f"retraining trial {best.number} produced non-finite factors")
    return model


def similar_items_table(model: Recommender, prepared: Prepared, k: int) -> pd.DataFrame:
    """Top-`k` cosine neighbours of every item, with ids and names (the blog's thumbnails)."""
    inter = prepared.interactions
    n_items = inter.n_items
    k = min(k, n_items - 1)
    items, scores = model.similar_items(np.arange(n_items), k)
    names = inter.item_names if inter.item_names is not None else inter.item_ids.astype(str)
    src = np.repeat(np.arange(n_items), k)
    dst = items.ravel()
    ok = dst >= 0
    return pd.DataFrame(
        {
            "item_id": inter.item_ids[src[ok]],
            "item_name": names[src[ok]],
            "rank": np.tile(np.arange(1, k + 1), n_items)[ok],
            "similar_item_id": inter.item_ids[dst[ok]],
            "similar_item_name": names[dst[ok]],
            "cosine": scores.ravel()[ok],
        }
    )


def progress_info(study: Any, cfg: StudyConfig) -> dict[str, Any]:
    """Trial counts by state, the budget and the best value so far (for progress displays)."""
    c = counts(study)
    try:
        best_value = study.best_value
    except ValueError:
        best_value = None
    return {**c, "total": cfg.study.n_trials, "best": best_value}


def register_best(
    cfg: StudyConfig,
    best: BestTrial,
    prepared: Prepared,
    run_id: str,
    uri: str,
    threads: int,
) -> tuple[str, str, bool]:
    """Retrain the best trial on the full data, log it with its item similarities, register it
    and move alias `champion` to it if it beats the current one on the same holdout.

    Returns (registered name, version, whether it became champion). If retraining fails,
    nothing is registered.
    """
    model = retrain(best, prepared, cfg, threads)
    log_similarities(cfg, model, prepared, run_id, uri)
    return register_model(cfg, best, model, prepared, run_id, uri)


def log_similarities(
    cfg: StudyConfig, model: Recommender, prepared: Prepared, run_id: str, uri: str
) -> None:
    """Attach the item-to-item similarity table (`similar_items.csv`) to run `run_id`."""
    from mfstudy import tracking

    with tempfile.TemporaryDirectory() as tmp:
        sim_path = Path(tmp) / "similar_items.csv"
        similar_items_table(model, prepared, cfg.study.similar_items_k).to_csv(
            sim_path, index=False
        )
        tracking.log_file(uri, run_id, sim_path)


def log_model_version(
    model: Recommender,
    prepared: Prepared,
    run_id: str,
    uri: str,
    name: str,
    score: float,
    holdout: str,
    *,
    cfg: StudyConfig,
    tags: dict[str, Any] | None = None,
) -> str:
    """Log `model` with the id maps of `prepared` as a pyfunc model of run `run_id`, register
    it as a new version of `name` tagged with its score, holdout, the data card of `prepared`
    (:func:`data_summary`, what the nightly retraining's data gate compares with) and `tags`;
    returns the version."""
    from mfstudy import tracking
    from mfstudy.datagate import card_tags

    inter = prepared.interactions
    version_tags = {**card_tags(data_summary(prepared, cfg)), **(tags or {})}
    with tempfile.TemporaryDirectory() as tmp:
        logged = tracking.log_recommender(
            uri,
            run_id,
            model.save(Path(tmp) / "model"),
            item_ids=inter.item_ids,
            item_names=inter.item_names,
            user_ids=inter.user_ids,
            registered_name=name,
            score=score,
            holdout=holdout,
            tags=version_tags,
        )
    return str(logged.version)


def data_summary(prepared: Prepared, cfg: StudyConfig) -> dict[str, Any]:
    """The data card of `prepared` (`mfstudy.datagate`): rows read, users, items,
    interactions, interactions per user, the schema read, and the data's, holdout's and input
    files' fingerprints."""
    from mfstudy.datagate import data_card

    inter = prepared.interactions
    return data_card(
        full=prepared.full,
        stats=prepared.stats,
        n_users=inter.n_users,
        n_items=inter.n_items,
        fingerprint=data_fingerprint(prepared),
        holdout=holdout_fingerprint(prepared),
        input_checksum=input_checksum(cfg),
    )


def register_model(
    cfg: StudyConfig,
    best: BestTrial,
    model: Recommender,
    prepared: Prepared,
    run_id: str,
    uri: str,
) -> tuple[str, str, bool]:
    """Log the retrained `model` as a pyfunc model of run `run_id`, register it and move alias
    `champion` to it if it beats the current one on the same holdout."""
    from mfstudy import tracking

    name = cfg.study.register_as or cfg.name
    holdout = holdout_fingerprint(prepared)
    version = log_model_version(model, prepared, run_id, uri, name, best.value, holdout, cfg=cfg)
    try:
        # Read-compare-move is not atomic in the registry: two processes of one study closing
        # at once could both read the old champion and the worse one move the alias last.
        with study_lock(cfg):
            promoted = tracking.set_champion_if_better(
                uri, name, version, best.value, cfg.direction == "maximize", holdout=holdout
            )
    except tracking.HoldoutMismatchError as exc:
        # A champion scored on other data: only the retraining flow, which re-scores both on
        # one fresh holdout, may replace it.
        log.warning("champion unchanged: %s", exc)
        promoted = False
    return name, version, promoted


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


def open_study(cfg: StudyConfig, prepared: Prepared | None = None) -> StudySession:
    """Everything before the first trial: checks, data, the Optuna study, the parent run.

    `prepared` is the output of the preparation stages when the caller ran them itself (the
    Prefect flow does, to cache them); otherwise `prepare(cfg)` runs here. It is written to
    `<workdir>/<name>/data`, where worker processes read it. Trials left RUNNING by a crashed
    worker are failed (and their MLflow runs closed) so the budget re-runs them.
    """
    from mfstudy import tracking

    start = time.perf_counter()
    uri = check_study(cfg)
    root = cfg.workdir.resolve()

    if prepared is None:
        prepared = prepare(cfg)
    spool = root / cfg.name / "mlflow-spool"
    # Several processes may open one study at once (`mfstudy study` started twice, or on a
    # schedule); unserialised they swap the prepared folder under each other's feet, both
    # create a parent run, and both replay (so duplicate) the same spooled trial runs.
    with study_lock(cfg):
        data_dir = write_prepared(prepared, root / cfg.name / "data")
        study, spec = create_study(cfg)
        parent = tracking.start_study(
            uri,
            cfg.tracking.experiment or cfg.name,
            cfg.name,
            cfg.model_dump(mode="json"),
            prepared.stats,
            data_dir / "stats.json",
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

    threads = threads_per_worker(cfg, cfg.study.workers)
    ctx = TrialContext(
        config=cfg,
        storage=spec,
        study_name=cfg.name,
        prepared_dir=data_dir,
        n_trials=cfg.study.n_trials,
        threads=threads,
        tracker=MlflowTrialLogs(
            uri, parent.experiment_id, parent.run_id, spool, cfg.tracking.flush_seconds
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


def close_study(session: StudySession) -> StudyResult:
    """Everything after the last trial: pick the best, log the study's artifacts, retrain the
    best on the full data, register it and end the parent run (FAILED if any of it fails)."""
    try:
        _check_tracking(session)
        best, n, _ = summarize_study(session)
        name, version, promoted = register_best(
            session.cfg,
            best,
            session.prepared,
            session.parent_run_id,
            session.uri,
            session.threads,
        )
    except BaseException:
        _end_after_error(session, "failed")
        raise
    end_study(session, "complete")
    return StudyResult(
        best=best,
        counts=n,
        tracking_uri=session.uri,
        parent_run_id=session.parent_run_id,
        model_name=name,
        model_version=version,
        promoted=promoted,
        seconds=time.perf_counter() - session.started,
    )


def interrupt_study(session: StudySession) -> None:
    """End the parent run KILLED (the trials were interrupted; a re-run resumes them)."""
    _end_after_error(session, "interrupted")


def run_study(
    cfg: StudyConfig,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> StudyResult:
    """Run the study `cfg` end to end on this machine; see the module docstring.

    The same three steps as the Prefect flow (`flows/study.py`): :func:`open_study`, the
    trials (here `workers` local processes), :func:`close_study`.
    """
    session = open_study(cfg)

    def poll(s: Any) -> None:
        if on_progress is not None:
            on_progress(progress_info(s, cfg))

    try:
        run_workers(session.ctx, cfg.study.workers, on_poll=poll)
    except BaseException:
        interrupt_study(session)
        raise
    return close_study(session)


# ----------------------------------------------------------------------------- one trial


_PREPARED_CACHE: dict[tuple[str, int], Prepared] = {}


def one_trial(ctx: TrialContext) -> TrialOutcome | None:
    """Reserve one trial of the study (under the budget lock) and run it; None when the budget
    is used up or the deadline passed.

    This is the unit a Prefect task runs, so each trial is one task run. Threads are capped
    per call; the prepared data is read once per process (keyed by its stats.json mtime).
    """
    from mfstudy.tuning import load_study, quiet, reserve_trial

    quiet()
    with study_lock(ctx.config, shared=True):  # not while another process rewrites it
        stamp = (ctx.prepared_dir / "stats.json").stat().st_mtime_ns
        key = (str(ctx.prepared_dir), stamp)
        prepared = _PREPARED_CACHE.get(key)
        if prepared is None:
            _PREPARED_CACHE.clear()
            prepared = _PREPARED_CACHE[key] = read_prepared(ctx.prepared_dir)
    study = load_study(ctx)
    trial = reserve_trial(study, ctx)
    if trial is None:
        return None
    handle = limit_threads(ctx.threads)
    try:
        return run_trial(trial, study, prepared, ctx)
    finally:
        del handle


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


def input_files(source: DataSource) -> list[Path]:
    """The files a source reads (none for synthetic data); may download a public dataset."""
    from mfstudy.data import DATASETS, dataset_dir

    if source.source == "synthetic":
        return []
    if source.source in ("sketchfab", "table"):
        return [Path(source.path)]  # type: ignore[union-attr]
    spec = DATASETS[source.source]
    folder = dataset_dir(source.source, source.path)  # type: ignore[union-attr]
    return [folder / f for f in spec.files]


def input_checksum(cfg: StudyConfig) -> str:
    """sha256 over the bytes of every input file, so a cache keyed by it notices new data."""
    h = hashlib.sha256()
    for path in input_files(cfg.data):
        h.update(path.name.encode())
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError:
            h.update(b"<missing>")  # the ingest step reports the file properly
    return h.hexdigest()
