"""Optuna storage, sampler and pruner built from the study config."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from mfstudy.config import PrunerConfig, SamplerConfig, StudyConfig
from mfstudy.tuning._space import grid_space

__all__ = ["BudgetGridSampler", "make_pruner", "make_sampler", "make_storage", "storage_spec"]


def storage_spec(cfg: StudyConfig) -> str:
    """The storage as a string (picklable for worker processes): a URL or a journal path."""
    if cfg.study.storage:
        return cfg.study.storage
    return str((cfg.workdir / cfg.name / "optuna.journal").resolve())


def is_url(spec: str) -> bool:
    return "://" in spec


def make_storage(spec: str) -> optuna.storages.BaseStorage:
    """Journal file storage for a path (safe across processes on one file system), RDB for a
    URL. RDB storages get a heartbeat so trials of a killed worker are failed on resume."""
    if is_url(spec):
        return RDBStorage(spec, heartbeat_interval=30, grace_period=90)
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(os.fspath(path)))


class BudgetGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` once the grid is exhausted.

    That call only works inside `study.optimize`; our workers use ask/tell, and the budget
    (`n_trials`, at most the grid's size) already ends the study.
    """

    def after_trial(self, *args: object, **kwargs: object) -> None:
        return None


def make_sampler(
    cfg: SamplerConfig, cfg_all: StudyConfig, worker: int
) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded from the study seed.

    Each worker gets its own seed: with one shared seed, parallel workers would propose the
    same startup trials.
    """
    base = cfg.seed if cfg.seed is not None else cfg_all.seed
    seed = base * 1009 + worker
    if cfg.kind == "grid":
        # Not per worker: GridSampler gives trial n the n-th point of its seed-shuffled grid, so
        # every worker must shuffle alike, or two trials land on one point and another point is
        # never tried.
        return BudgetGridSampler(grid_space(cfg_all.search_space), seed=base)
    if cfg.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=cfg.multivariate,
        group=cfg.multivariate and len(cfg_all.search_space) > 1,
        n_startup_trials=cfg.n_startup_trials,
        constant_liar=cfg.constant_liar,
    )


def make_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    if cfg.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
        )
    if cfg.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_resource, reduction_factor=cfg.reduction_factor
        )
    if cfg.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg.min_resource, reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.NopPruner()
