"""The nightly retraining: the champion's hyperparameters refitted on fresh data, and a gate.

Data may have grown (or broken) since the champion was trained; the question each night is
whether a model trained on today's data should replace it. What is compared, precisely:

- The fresh data is prepared with the study's own config (same thresholds, split kind and
  seed), giving a fresh evaluation part `H` (the split's test entries of its evaluated users)
  and a fresh training part.
- **Candidate score**: the champion's hyperparameters and epoch count, fitted on the fresh
  training part, scored on `H`. That is exactly how study trials are scored, so the number is
  comparable with a study on the same data.
- **Champion score**: the current champion model itself cannot be scored on `H` fairly: it was
  fitted on the *old full data*, which contains those of `H`'s interactions that already
  existed (a leak: it would be scored on interactions it was trained on; with seen items
  excluded from ranking they could not even be recommended). So the champion is *re-scored*:
  its own training interactions (stored with the registered model, mapped by raw ids into the
  fresh index; users and items it never saw have no rows) minus every cell outside the fresh
  training part, fitted with the same hyperparameters and epochs, scored on the same `H`.

Both arms then differ only in their training data (the champion's vs today's, both without
`H`), which is the thing the retraining changes. The gate: the new version becomes champion
unless its score is worse than the champion's re-score by more than `retrain.tolerance`
(relative; for minimized metrics such as RMSE "worse" means higher). The model registered is
the candidate's recipe fitted on all fresh data (train + `H`), as a study's final model is.

Before anything is fitted, today's data is compared with the champion's (`mfstudy.datagate`,
the data card stored on every version): **unchanged** data (same fingerprint) registers nothing
and ends "unchanged: champion kept"; data that lost more than `retrain.max_shrink` of the
champion's users or interactions, whose ids vanished en masse, or whose schema changed fails
the **gate**: :class:`RetrainGateError` with one line saying what changed, champion kept,
nothing registered. Growth is the normal case and goes on.

Beside the tolerance rule, the report gives each score's 95% bootstrap interval over the
evaluated users and the *paired* bootstrap of the difference (candidate minus champion re-score,
the same users resampled for both, seeded from the config's seed): its interval, a two-sided
p-value and the probability the candidate is better. The rule stays the decision: it is what
the study's champion comparisons use, and a paired interval that includes 0 means "no
measurable difference", which keeping or promoting both honour within the tolerance.

A run tagged `mfstudy.role=retrain` in the study's experiment holds the data change, both
scores with intervals and the decision (also for "unchanged" and a failed gate), and the new
version's tags record them. With no champion yet there is nothing to refit:
:func:`retrain_champion` returns None and the caller runs a short study instead.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfstudy.config import StudyConfig
from mfstudy.datagate import CARD_TAG, DataCheck, card_from_model, card_from_tags, check_data
from mfstudy.errors import RetrainGateError, StudyError
from mfstudy.evaluation import evaluate_model, user_scores
from mfstudy.metrics import PairedDifference, UserValues, paired_bootstrap
from mfstudy.models import DivergedError, Recommender
from mfstudy.prepare import Prepared
from mfstudy.secrets import redact_uri
from mfstudy.threads import fit_capped
from mfstudy.workdir import champion_lock

__all__ = [
    "ArmScore",
    "RetrainResult",
    "champion_training_data",
    "compare_arms",
    "fit_and_score",
    "gate",
    "retrain_champion",
    "retry_is_safe",
]

log = logging.getLogger("mfstudy.retrain")

Decision = Literal["promoted", "kept", "unchanged"]
TAG = "mfstudy.retrain."
#: Bootstrap replicates and interval level of the reported intervals.
N_BOOT = 2000
LEVEL = 0.95
#: Set (True) on an exception leaving :func:`retrain_champion` once registering had begun.
REGISTERING = "mfstudy_registering"


def retry_is_safe(exc: BaseException) -> bool:
    """Whether a failed :func:`retrain_champion` may simply run again: a tracking failure
    (server away, connection lost) before any version was being registered.

    Not the data gate or other input errors (the same data fails the same way), not bugs, and
    nothing after registering began (a lost reply may hide a registered version: a retry would
    register a second one).
    """
    from mfstudy.tracking import HoldoutMismatchError, TrackingError

    return (
        isinstance(exc, TrackingError)
        and not isinstance(exc, HoldoutMismatchError)
        and not getattr(exc, REGISTERING, False)
    )


@dataclass(frozen=True)
class ArmScore:
    """One arm's score on the fresh evaluation part, with its per-user terms (None when the
    metric has no per-user form or the fit diverged)."""

    value: float
    users: np.ndarray | None = None
    values: UserValues | None = None


@dataclass(frozen=True)
class RetrainResult:
    """What one nightly retraining decided, and on which numbers.

    `decision` "unchanged": the data is the champion's, nothing was fitted or registered
    (`new_version` None, `candidate_score` NaN, `champion_score` the champion's stored score).
    `comparison` holds the intervals (see :func:`compare_arms`); `data_report` the Markdown
    table of the data change.
    """

    model_name: str
    decision: Decision
    metric: str
    direction: str
    tolerance: float
    candidate_score: float
    champion_score: float
    champion_version: str
    new_version: str | None
    family: str
    params: dict[str, Any]
    holdout: str
    run_id: str
    tracking_uri: str
    data: dict[str, Any]
    change: dict[str, float]
    comparison: dict[str, float]
    data_report: str
    seconds: float
    reason: str = ""
    """For "unchanged": why nothing was fitted (the champion's own data, or a version already
    kept against this champion on the same data)."""

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The decision as a Markdown report (the Prefect artifact and the run's retrain.md)."""
        title = f"# Nightly retraining of `{self.model_name}`\n\n"
        tail = f"MLflow run `{self.run_id}` at {self.tracking_uri}\n"
        data = f"## Data since the champion\n\n{self.data_report}\n"
        if self.decision == "unchanged":
            return (
                f"{title}**unchanged**: champion kept (version {self.champion_version}); "
                f"{self.reason} (data fingerprint `{self.data.get('fingerprint')}`, holdout "
                f"`{self.holdout}`), so nothing was fitted or registered.\n\n{data}\n{tail}"
            )
        verdict = (
            f"**promoted**: `champion` now points at version {self.new_version}"
            if self.promoted
            else f"**kept**: `champion` stays at version {self.champion_version} "
            f"(version {self.new_version} registered beside it)"
        )
        c = self.comparison
        rows = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in self.params.items())
        better = "higher" if self.direction == "maximize" else "lower"
        scores = (
            f"| | {self.metric} | {_pct(LEVEL)} interval |\n|---|---|---|\n"
            f"| new version {self.new_version} (fresh data) | {self.candidate_score:.6g} | "
            f"{_ci(c, 'candidate')} |\n"
            f"| champion v{self.champion_version} re-scored | {self.champion_score:.6g} | "
            f"{_ci(c, 'champion')} |\n"
            f"| difference (new minus champion, paired) | "
            f"{self.candidate_score - self.champion_score:+.6g} | {_ci(c, 'difference')} |\n"
        )
        if "p_value" in c:
            paired = (
                f"Paired bootstrap over the same {int(c['users'])} evaluated users "
                f"({int(c['n_boot'])} resamples, seeded): two-sided p-value "
                f"{c['p_value']:.3g} for no difference; the new version scores {better} "
                f"in {c['prob_candidate_better']:.1%} of the resamples. "
            )
        else:
            paired = "No per-user form of this metric: no intervals. "
        return (
            f"{title}{verdict}\n\n{scores}\n"
            f"Decision rule: the new version becomes champion unless it is worse than the "
            f"champion's re-score by more than `retrain.tolerance` {self.tolerance:g} "
            f"(relative; direction: {self.direction}). {paired}"
            f"Both scored on the same fresh holdout `{self.holdout}` with the champion's "
            f"hyperparameters ({self.family}); see `mfstudy/retrain.py` for why the champion "
            f"is re-fitted.\n\n{data}\n"
            f"| parameter | value |\n|---|---|\n{rows}\n\n{tail}"
        )


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def _ci(c: dict[str, float], key: str) -> str:
    low, high = c.get(f"{key}_low"), c.get(f"{key}_high")
    if low is None or high is None or math.isnan(low):
        return "n/a"
    return f"{low:.6g} to {high:.6g}"


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def gate(candidate: float, champion: float, maximize: bool, tolerance: float) -> bool:
    """Whether `candidate` is not worse than `champion` by more than `tolerance` (relative).

    A NaN candidate never passes; a NaN champion (nothing to defend) always loses.
    """
    if math.isnan(candidate):
        return False
    if math.isnan(champion):
        return True
    slack = tolerance * abs(champion)
    return candidate >= champion - slack if maximize else candidate <= champion + slack


def champion_training_data(
    seen: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    prepared: Prepared,
) -> sp.csr_matrix:
    """The champion's training interactions (`seen`, over its own raw ids) in the fresh index,
    without any cell outside the fresh training part (the holdout, and fold-in rows).

    Users and items unknown to the fresh data are dropped; those unknown to the champion have
    empty rows/columns, exactly what the champion knows about them.
    """
    inter = prepared.interactions
    fresh_users = pd.Index(np.asarray(inter.user_ids).astype(str))
    fresh_items = pd.Index(np.asarray(inter.item_ids).astype(str))
    coo = seen.tocoo()
    u = fresh_users.get_indexer(np.asarray(user_ids).astype(str)[coo.row])
    i = fresh_items.get_indexer(np.asarray(item_ids).astype(str)[coo.col])
    ok = (u >= 0) & (i >= 0)
    shape = prepared.full.shape
    old = sp.csr_matrix(
        (coo.data[ok].astype(np.float32), (u[ok], i[ok])), shape=shape, dtype=np.float32
    )
    old.sum_duplicates()
    # Cells the fresh split keeps out of training: full minus train (binary patterns).
    outside = (prepared.full != 0).astype(np.int8) - (prepared.train != 0).astype(np.int8)
    outside.eliminate_zeros()
    drop = old.multiply(outside > 0).tocsr()
    kept = (old - drop).tocsr()
    kept.eliminate_zeros()
    return kept


def fit_and_score(
    cfg: StudyConfig,
    family: str,
    params: dict[str, Any],
    train: sp.csr_matrix,
    prepared: Prepared,
    threads: int,
) -> ArmScore:
    """`cfg.metric` of the model `params` fitted on `train`, on the fresh evaluation part,
    with its per-user terms.

    Scored the way study trials are (same metric, users and seen-item exclusion), with `train`
    as the model's own training matrix. A diverging fit scores NaN (it loses the gate).
    """
    from mfstudy.tuning import build_model

    model = build_model(cfg, family, params, threads)
    try:
        fit_capped(model, train, threads)
    except DivergedError as exc:
        log.warning("%s fit diverged: %s", family, exc)
        return ArmScore(float("nan"))
    try:
        users, values = user_scores(
            model, train, prepared.test, prepared.users, cfg.evaluation, cfg.metric
        )
    except ValueError:  # a metric without a per-user form: the score alone, no intervals
        metrics = evaluate_model(model, train, prepared.test, prepared.users, cfg.evaluation)
        return ArmScore(float(metrics[cfg.metric]))
    return ArmScore(values.value, users, values)


def compare_arms(
    candidate: ArmScore, champion: ArmScore, maximize: bool, seed: int
) -> dict[str, float]:
    """Both scores' bootstrap intervals and the paired bootstrap of candidate minus champion,
    over the users both were evaluated on, flat (MLflow metrics, version tags); empty when an
    arm has no per-user terms. Every draw comes from `np.random.default_rng(seed)`."""
    a, b = candidate, champion
    if a.values is None or b.values is None or a.users is None or b.users is None:
        return {}
    # The same test matrix and users give both arms the same users; aligned anyway, so a
    # pairing can never be off by one.
    _, ia, ib = np.intersect1d(a.users, b.users, assume_unique=True, return_indices=True)
    pa, pb = (_take(v.values, i) for v, i in ((a, ia), (b, ib)))
    d: PairedDifference = paired_bootstrap(
        pa, pb, np.random.default_rng(seed), n_boot=N_BOOT, level=LEVEL
    )
    return {
        "candidate_low": d.a.low,
        "candidate_high": d.a.high,
        "champion_low": d.b.low,
        "champion_high": d.b.high,
        "difference": d.difference.estimate,
        "difference_low": d.difference.low,
        "difference_high": d.difference.high,
        "p_value": d.p_value,
        "prob_candidate_better": d.prob_a_higher if maximize else d.prob_a_lower,
        "users": float(d.n_users),
        "n_boot": float(d.n_boot),
        "level": LEVEL,
    }


def _take(values: UserValues | None, idx: np.ndarray) -> UserValues:
    assert values is not None
    den = None if values.den is None else values.den[idx]
    return UserValues(values.num[idx], den, values.root)


def _recipe(model: Recommender) -> tuple[str, dict[str, Any]]:
    params = dict(model.get_params())
    params.pop("num_threads", None)  # this machine's, not the champion's
    return model.family, params


def retrain_champion(
    cfg: StudyConfig, prepared: Prepared, threads: int | None = None
) -> RetrainResult | None:
    """Check today's data against the champion's, then refit the champion's recipe on
    `prepared` (fresh data), gate it and register it.

    Returns None when the model `cfg.study.register_as or cfg.name` has no champion yet (run a
    study instead); a result with decision "unchanged" when the data is the champion's (nothing
    registered). Raises :class:`RetrainGateError` (one line) when the data gate fails: nothing
    registered. See the module docstring for exactly what is compared. The model's champion lock
    (:func:`mfstudy.workdir.champion_lock`) is held from reading the champion to moving the
    alias.
    """
    import os

    from mfstudy import tracking
    from mfstudy.prepare import holdout_fingerprint
    from mfstudy.registration import data_summary
    from mfstudy.tracking._retrain import latest_version_tagged

    start = time.perf_counter()
    threads = threads or cfg.study.threads_per_worker or (os.cpu_count() or 1)
    uri = tracking.tracking_uri_for(cfg.tracking.uri, cfg.workdir.resolve())
    name = cfg.study.register_as or cfg.name
    # The champion this retraining compares with must still be the champion when the alias
    # moves: from reading it to moving the alias, the model's champion lock is held (a study
    # registering to the same model meanwhile waits for it).
    with champion_lock(cfg):
        champ = tracking.champion_version(uri, name)
        if champ is None:
            return None
        loaded = tracking.load_recommender(champ.uri, uri)
        family, params = _recipe(loaded.model)
        inter = prepared.interactions
        today = data_summary(prepared, cfg)
        stored = card_from_tags(champ.tags)
        check = check_data(
            stored or card_from_model(loaded.model.seen_, loaded.user_ids, loaded.item_ids),
            today,
            (loaded.user_ids, loaded.item_ids),
            (inter.user_ids, inter.item_ids),
            cfg.retrain.max_shrink,
        )
        if check.derived:
            log.warning("%s: %s", name, check.note())
        holdout = holdout_fingerprint(prepared)
        run = _RetrainRun(cfg, uri, name, champ.version, family, params, holdout)
        if check.unchanged:
            reason = "today's prepared data is the data it was trained on"
            return run.unchanged(check, champ.tags, today, start, reason)
        if not check.passed:
            run.gate_failed(check)  # raises
        # A version already fitted on today's data and compared with this very champion (a night
        # that kept the champion, data unchanged since): the same recipe, data and seed would
        # give the same version and the same verdict again.
        earlier = latest_version_tagged(uri, name, f"{CARD_TAG}.fingerprint", today["fingerprint"])
        if earlier is not None and earlier.tags.get(f"{TAG}champion_version") == champ.version:
            reason = (
                f"version {earlier.version} already holds today's data and was "
                f"{earlier.tags.get(f'{TAG}decision', 'compared')} against this champion"
            )
            return run.unchanged(check, champ.tags, today, start, reason)
        return _refit_and_register(cfg, prepared, threads, run, check, loaded, today, start)


@dataclass(frozen=True)
class _RetrainRun:
    """The MLflow side of one retraining: its run, report and version tags."""

    cfg: StudyConfig
    uri: str
    name: str
    champion: str
    family: str
    params: dict[str, Any]
    holdout: str

    def open_run(self, decision: str, metrics: dict[str, float], tags: dict[str, Any]) -> str:
        """The retrain run (tag `mfstudy.role=retrain`), its params, metrics and tags."""
        from mfstudy.tracking._retrain import log_retrain_run

        cfg = self.cfg
        return log_retrain_run(
            self.uri,
            cfg.tracking.experiment or cfg.name,
            cfg.name,
            f"retrain-{time.strftime('%Y%m%d-%H%M%S')}",
            params={"family": self.family, **self.params, "champion_version": self.champion},
            metrics={k: v for k, v in metrics.items() if not math.isnan(v)},
            tags={
                f"{TAG}decision": decision,
                f"{TAG}champion_version": self.champion,
                f"{TAG}holdout": self.holdout,
                f"{TAG}metric": cfg.metric,
                **tags,
            },
        )

    def report(self, run_id: str, text: str) -> None:
        from mfstudy import tracking

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "retrain.md"
            path.write_text(text)
            tracking.log_file(self.uri, run_id, path)

    def unchanged(
        self,
        check: DataCheck,
        tags: dict[str, str],
        today: dict[str, Any],
        start: float,
        reason: str,
    ) -> RetrainResult:
        from mfstudy import tracking
        from mfstudy.tracking._model import SCORE_TAG

        log.info("%s: unchanged: champion v%s kept; %s", self.name, self.champion, reason)
        run_id = self.open_run("unchanged", check.changes(), {f"{TAG}reason": reason})
        score = float(tags.get(SCORE_TAG, "nan"))
        result = replace(
            self._result("unchanged", float("nan"), score, None, run_id, today, check, {}, start),
            reason=reason,
        )
        try:
            self.report(run_id, result.markdown())
        except BaseException:
            tracking.finish_study(self.uri, run_id, "failed")
            raise
        tracking.finish_study(self.uri, run_id, "complete")
        return result

    def gate_failed(self, check: DataCheck) -> None:
        from mfstudy import tracking

        line = check.line(self.champion)
        report = (
            f"# Nightly retraining of `{self.name}`\n\n**gate failed**: champion kept "
            f"(version {self.champion}), nothing registered.\n\n"
            + "\n".join(f"- {p}" for p in check.problems)
            + f"\n\n`retrain.max_shrink` is {_pct(check.max_shrink)}.\n\n"
            f"## Data since the champion\n\n{check.markdown()}"
        )
        run_id = self.open_run("gate_failed", check.changes(), {f"{TAG}reason": line})
        report += f"\nMLflow run `{run_id}` at {redact_uri(self.uri)}\n"
        try:
            self.report(run_id, report)
        finally:
            tracking.finish_study(self.uri, run_id, "failed")
        raise RetrainGateError(line, report=report)  # said once, by whoever catches it

    def _result(
        self,
        decision: Decision,
        candidate: float,
        champion: float,
        version: str | None,
        run_id: str,
        today: dict[str, Any],
        check: DataCheck,
        comparison: dict[str, float],
        start: float,
    ) -> RetrainResult:
        return RetrainResult(
            model_name=self.name,
            decision=decision,
            metric=self.cfg.metric,
            direction=self.cfg.direction,
            tolerance=self.cfg.retrain.tolerance,
            candidate_score=candidate,
            champion_score=champion,
            champion_version=self.champion,
            new_version=version,
            family=self.family,
            params=self.params,
            holdout=self.holdout,
            run_id=run_id,
            tracking_uri=redact_uri(self.uri),  # reported and returned: no password
            data=today,
            change=check.changes(),
            comparison=comparison,
            data_report=check.markdown(),
            seconds=time.perf_counter() - start,
        )


def _refit_and_register(
    cfg: StudyConfig,
    prepared: Prepared,
    threads: int,
    run: _RetrainRun,
    check: DataCheck,
    loaded: Any,
    today: dict[str, Any],
    start: float,
) -> RetrainResult:
    """Both arms fitted and scored, the tolerance rule, a new version, maybe the alias."""
    from mfstudy import tracking
    from mfstudy.registration import log_model_version, log_similarities, refit_best
    from mfstudy.tuning import BestTrial

    name, family, params = run.name, run.family, run.params
    maximize = cfg.direction == "maximize"
    tol = cfg.retrain.tolerance
    old_train = champion_training_data(
        loaded.model.seen_, loaded.user_ids, loaded.item_ids, prepared
    )
    champion = fit_and_score(cfg, family, params, old_train, prepared, threads)
    candidate = fit_and_score(cfg, family, params, prepared.train, prepared, threads)
    if math.isnan(candidate.value):
        raise StudyError(
            f"retraining {name!r}: the champion's parameters diverge on the fresh data; "
            "nothing registered"
        )
    promote = gate(candidate.value, champion.value, maximize, tol)
    decision: Decision = "promoted" if promote else "kept"
    comparison = compare_arms(candidate, champion, maximize, cfg.seed)
    log.info(
        "%s: candidate %s=%.6g, champion v%s re-scored %.6g -> %s (paired difference %s)",
        name,
        cfg.metric,
        candidate.value,
        run.champion,
        champion.value,
        decision,
        _ci(comparison, "difference"),
    )
    metrics = {
        f"candidate_{cfg.metric}": candidate.value,
        f"champion_{cfg.metric}": champion.value,
        "promoted": float(promote),
        "tolerance": tol,
        **{f"data.{k}": float(today[k]) for k in ("users", "items", "interactions")},
        **check.changes(),
        **{f"compare.{k}": v for k, v in comparison.items()},
    }
    run_id = run.open_run(decision, metrics, {})
    registering = False
    try:
        epochs = int(params.get("iterations", 0))
        best = BestTrial(-1, family, params, candidate.value, epochs)
        model = refit_best(best, prepared, cfg, threads)
        log_similarities(cfg, model, prepared, run_id, run.uri)
        tags = {
            f"{TAG}decision": decision,
            f"{TAG}candidate_score": repr(candidate.value),
            f"{TAG}champion_score": repr(champion.value),
            f"{TAG}champion_version": run.champion,
            f"{TAG}tolerance": repr(tol),
            f"{TAG}run_id": run_id,
            **{f"{TAG}{k}": repr(float(v)) for k, v in comparison.items()},
        }
        registering = True
        version = log_model_version(
            model, prepared, run_id, run.uri, name, candidate.value, run.holdout, cfg=cfg, tags=tags
        )
        if promote:
            tracking.move_champion(run.uri, name, version)
        result = run._result(
            decision,
            candidate.value,
            champion.value,
            version,
            run_id,
            today,
            check,
            comparison,
            start,
        )
        run.report(run_id, result.markdown())
    except BaseException as exc:
        if registering:
            setattr(exc, REGISTERING, True)
        try:
            tracking.finish_study(run.uri, run_id, "failed")
        except tracking.TrackingError as again:  # the server may be what failed
            log.warning("%s", again)
        raise
    tracking.finish_study(run.uri, run_id, "complete")
    return result
