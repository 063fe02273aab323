"""The nightly job: retrain the champion on today's data, or, with no champion yet, run a study.

One function, :func:`nightly`, for `mfstudy retrain CONFIG` (no server) and the `mf-retrain`
Prefect flow (`flows/retrain.py`), which passes its own task and subflow for the two steps.
What the retraining compares and gates: `mfstudy/retrain.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mfstudy.config import StudyConfig
from mfstudy.prepare import Prepared, prepare
from mfstudy.retrain import RetrainResult, retrain_champion
from mfstudy.study import StudyResult, run_study

__all__ = ["NightlyResult", "fallback_config", "nightly"]

log = logging.getLogger("mfstudy.nightly")

Retrain = Callable[[StudyConfig, Prepared], RetrainResult | None]
Study = Callable[[StudyConfig, Prepared], StudyResult]


@dataclass(frozen=True)
class NightlyResult:
    """What one night did: `retrain` holds the retraining's decision and numbers (decision
    promoted, kept or unchanged); with no champion yet, decision "study" and `study` holds the
    fallback study's result."""

    decision: Literal["promoted", "kept", "unchanged", "study"]
    model_name: str
    retrain: RetrainResult | None = None
    study: StudyResult | None = None

    def summary(self) -> str:
        """One line: what was decided, on which numbers."""
        if self.study is not None:
            s = self.study
            verdict = "now champion" if s.promoted else "champion unchanged"
            return (
                f"{self.model_name}: no champion yet: ran a study of {s.counts.get('finished')} "
                f"trials, registered v{s.model_version} ({verdict})"
            )
        r = self.retrain
        assert r is not None  # one of the two is set by construction
        if r.decision == "unchanged":
            return f"{r.model_name}: unchanged: champion v{r.champion_version} kept ({r.reason})"
        return (
            f"{r.model_name}: new v{r.new_version} {r.metric}={r.candidate_score:.6g} vs "
            f"champion v{r.champion_version} re-scored {r.champion_score:.6g} -> {r.decision}"
        )

    def markdown(self) -> str:
        """The report (the flow's artifact)."""
        if self.retrain is not None:
            return self.retrain.markdown()
        s = self.study
        assert s is not None
        return (
            f"# Nightly retraining of `{self.model_name}`\n\n"
            f"No champion was registered: ran a study of {s.counts.get('finished')} trials "
            f"instead (study `{s.study_name}`). Registered version {s.model_version}"
            f"{' (now champion)' if s.promoted else ''}.\n"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values: the retraining's (or the study's) fields with the decision."""
        inner = self.retrain.to_dict() if self.retrain is not None else self.study.to_dict()  # type: ignore[union-attr]
        return {**inner, "decision": self.decision}


def fallback_config(cfg: StudyConfig) -> StudyConfig:
    """`cfg` with the fallback study's budget (`retrain.fallback_trials`)."""
    n = cfg.retrain.fallback_trials
    return cfg.model_copy(update={"study": cfg.study.model_copy(update={"n_trials": n})})


def _study_here(cfg: StudyConfig, prepared: Prepared) -> StudyResult:
    return run_study(cfg, prepared=prepared)


def nightly(
    cfg: StudyConfig,
    prepared: Prepared | None = None,
    *,
    retrain: Retrain = retrain_champion,
    study: Study = _study_here,
) -> NightlyResult:
    """Prepare today's data (unless given), retrain the champion of `cfg`'s registered model
    on it (`retrain(cfg, prepared)`); with no champion yet run `study(fallback_config(cfg),
    prepared)` instead, a study of `retrain.fallback_trials` trials that registers one.

    A failed data gate raises :class:`~mfstudy.errors.RetrainGateError` (one line): the
    champion is kept and nothing is registered.
    """
    if prepared is None:
        prepared = prepare(cfg)
    name = cfg.study.register_as or cfg.name
    result = retrain(cfg, prepared)
    if result is not None:
        return NightlyResult(result.decision, name, retrain=result)
    fallback = fallback_config(cfg)
    log.info("no champion yet: running a study of %d trials instead", fallback.study.n_trials)
    return NightlyResult("study", name, study=study(fallback, prepared))
