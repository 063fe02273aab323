"""Optuna storage, sampler and pruner built from the study config."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from mfstudy.config import PrunerConfig, SamplerConfig, StudyConfig
from mfstudy.secrets import resolve_env
from mfstudy.tuning._space import grid_space

__all__ = [
    "BudgetGridSampler",
    "JournalFlock",
    "PerTrialSeedSampler",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "storage_spec",
    "trial_seed",
]


def storage_spec(cfg: StudyConfig) -> str:
    """The storage as a string (picklable for worker processes): a URL or a journal path."""
    if cfg.study.storage:
        return cfg.study.storage
    return str((cfg.workdir / cfg.name / "optuna.journal").resolve())


def is_url(spec: str) -> bool:
    return "://" in spec


def make_storage(spec: str) -> optuna.storages.BaseStorage:
    """Journal file storage for a path (safe across processes on one file system), RDB for a
    URL.

    No RDB heartbeat: Optuna beats only inside `study.optimize`, and our workers ask and tell,
    so it never marked a trial stale; it only printed two warnings per process and trial.
    Trials of a killed worker are found by their worker token (`fail_stale_trials`).
    """
    # `${NAME}` references are filled in here only: the config, the trial context handed to
    # workers and everything logged keep the reference, never the password.
    spec = resolve_env(spec, "study.storage")
    if is_url(spec):
        return RDBStorage(spec)
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFlock(os.fspath(path) + ".flock")
    return JournalStorage(JournalFileBackend(os.fspath(path), lock_obj=lock))


class JournalFlock(JournalFileOpenLock):
    """The journal's write lock as an flock, which the kernel releases when its holder dies.

    Optuna's default lock is a symlink created and removed by the writer: a worker killed
    (`kill -9`, OOM) while appending leaves it behind, and every later writer then waits out its
    30 s grace period before breaking it; a resumed study stalled that long, with warnings. The
    reservation lock beside the journal is an flock already, so this needs nothing more of the
    file system. One instance is used by one storage, whose own thread lock serialises callers.
    (A subclass of Optuna's public open-file lock only for its interface; nothing of it is used.)
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, grace_period=None)
        self._path = path
        self._fh: IO[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fh": None}  # an open file does not pickle

    def acquire(self) -> bool:
        fh = open(self._path, "a")  # held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        return True

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


class BudgetGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` once the grid is exhausted.

    That call only works inside `study.optimize`; our workers use ask/tell, and the budget
    (`n_trials`, at most the grid's size) already ends the study.
    """

    def after_trial(self, *args: object, **kwargs: object) -> None:
        return None


def trial_seed(base: int, number: int) -> int:
    """The sampler seed of trial `number` in a study seeded `base`."""
    # NumPy's RandomState (behind Optuna's samplers) takes seeds below 2**32: wrap, so every
    # study seed the config accepts works.
    return (base * 1009 + number) % 2**32


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """A sampler built afresh for each trial, seeded from the study seed and the trial number.

    Why: a trial's proposal must not depend on which process asks for it, or how many trials
    that process asked for before. A sampler seeded once per worker (and advanced by every
    trial it proposed) made the proposals depend on how trials were spread over workers, so
    `mfstudy study` and the Prefect flow proposed different trials for one config. Seeded by
    the trial number, a trial's proposal depends only on the seed, its number and the trials
    the study holds when it is asked: one worker gives the same study on every path. The
    wrapped samplers (random, TPE) keep no other state between trials; TPE reads everything
    else from the study's trials.
    """

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = seed
        self._inner = build(trial_seed(seed, 0))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._build(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(cfg: SamplerConfig, cfg_all: StudyConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded from the study seed (`sampler.seed`, else `seed`).

    Random and TPE proposals are seeded per trial (:class:`PerTrialSeedSampler`), so parallel
    trials never share a random stream and a trial's proposal does not depend on the process
    that asks for it.
    """
    base = cfg.seed if cfg.seed is not None else cfg_all.seed
    if cfg.kind == "grid":
        # Not per trial: GridSampler gives trial n the n-th point of its seed-shuffled grid, so
        # every instance must shuffle alike, or two trials land on one point and another point
        # is never tried. That already makes trial n's point independent of who asks.
        return BudgetGridSampler(grid_space(cfg_all.search_space), seed=base % 2**32)
    if cfg.kind == "random":
        return PerTrialSeedSampler(lambda s: optuna.samplers.RandomSampler(seed=s), base)

    def tpe(seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=cfg.multivariate,
            group=cfg.multivariate and len(cfg_all.search_space) > 1,
            n_startup_trials=cfg.n_startup_trials,
            constant_liar=cfg.constant_liar,
        )

    return PerTrialSeedSampler(tpe, base)


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
