"""The nightly retraining gate against a real MLflow server, on table data that changes.

The champion comes from a study on a base sample of planted-preference interactions. Then:
- the data grows by *shuffled* interactions (items drawn at random): the refitted model is
  worse on the fresh holdout than the champion's re-score, so the alias must not move;
- the data grows by more interactions *of the same kind*: it must move.
Both scores with their intervals and the decision land on the new version's tags and on a
`retrain` run. And the data gate: unchanged data registers nothing, half the feed fails the
gate with one line (also for a champion registered before data cards were stored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from helpers import lock_held
from mfstudy import tracking
from mfstudy.config import StudyConfig, SyntheticSource, load_config
from mfstudy.data import generate_synthetic
from mfstudy.errors import RetrainGateError
from mfstudy.prepare import prepare
from mfstudy.retrain import champion_training_data, gate, retrain_champion
from mfstudy.study import run_study

SPACE = (
    "search_space={wrmf: {factors: 16, regularization: 1.0, "
    "alpha: {type: float, low: 5, high: 20}, iterations: 8}}"
)


def _frames(seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(base, grown with same-kind rows, grown with shuffled rows), as user,item,weight."""
    raw = generate_synthetic(
        SyntheticSource(n_users=500, n_items=250, n_interactions=24_000, affinity=3.0), seed
    )
    frame = raw.frame[["user", "item", "weight"]].drop_duplicates(["user", "item"])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    cut = int(0.6 * len(frame))
    base = frame.iloc[np.sort(order[:cut])]
    grown = frame
    extra = frame.iloc[np.sort(order[cut:])].copy()
    # The new rows' items shuffled twice over (random items for those users): as much new
    # data as the good case, and twice again, all of it noise.
    noise = pd.concat([extra, extra], ignore_index=True)
    noise["item"] = rng.integers(0, 250, len(noise))
    shuffled = pd.concat([base, noise], ignore_index=True).drop_duplicates(["user", "item"])
    return base, grown, shuffled


def _cfg(path: Path, tmp_path: Path, uri: str, extra: list[str] = ()) -> StudyConfig:
    return load_config(
        None,
        [
            "name=gate",
            f"workdir={tmp_path / 'runs'}",
            f"tracking.uri={uri}",
            f"data={{source: table, path: {path}}}",
            "threshold.min_items_per_user=5",
            "threshold.min_users_per_item=5",
            "study.n_trials=2",
            "study.pruner.kind=none",
            "retrain.tolerance=0.02",
            SPACE,
            *extra,
        ],
    )


def test_gate_rule() -> None:
    assert gate(0.99, 1.0, maximize=True, tolerance=0.02)
    assert not gate(0.97, 1.0, maximize=True, tolerance=0.02)
    assert gate(1.01, 1.0, maximize=False, tolerance=0.02)
    assert not gate(1.03, 1.0, maximize=False, tolerance=0.02)
    assert not gate(float("nan"), 1.0, maximize=True, tolerance=0.5)
    assert gate(0.1, float("nan"), maximize=True, tolerance=0.0)


def test_champion_data_leaves_out_the_fresh_holdout(tmp_path: Path) -> None:
    base, grown, _ = _frames()
    path = tmp_path / "d.csv"
    base.to_csv(path, index=False)
    cfg = _cfg(path, tmp_path, "sqlite:///unused.db")
    old = prepare(cfg)
    grown.to_csv(path, index=False)
    fresh = prepare(cfg)
    mapped = champion_training_data(
        old.full, old.interactions.user_ids, old.interactions.item_ids, fresh
    )

    # Independent reference through raw-id pairs: old pairs known to the fresh data, minus
    # the fresh test pairs.
    def pairs(m, inter) -> set[tuple[str, str]]:
        c = m.tocoo()
        return set(
            zip(inter.user_ids[c.row].astype(str), inter.item_ids[c.col].astype(str), strict=True)
        )

    old_pairs = pairs(old.full, old.interactions)
    fresh_pairs = pairs(fresh.full, fresh.interactions)
    test_pairs = pairs(fresh.test, fresh.interactions)
    expected = (old_pairs & fresh_pairs) - test_pairs
    assert pairs(mapped, fresh.interactions) == expected
    assert mapped.multiply(fresh.test).nnz == 0
    assert test_pairs and test_pairs & old_pairs, "the holdout must overlap the old data here"


def test_retraining_moves_the_champion_only_when_not_worse(
    tmp_path: Path, tracking_uri: str
) -> None:
    base, grown, shuffled = _frames()
    path = tmp_path / "interactions.csv"
    base.to_csv(path, index=False)
    cfg = _cfg(path, tmp_path, tracking_uri)
    first = run_study(cfg)
    assert first.promoted
    client = MlflowClient(tracking_uri)
    champ0 = client.get_model_version_by_alias("gate", "champion").version

    shuffled.to_csv(path, index=False)
    bad = retrain_champion(cfg, prepare(cfg), threads=2)
    assert bad is not None and bad.decision == "kept", bad
    assert bad.candidate_score < bad.champion_score * (1 - cfg.retrain.tolerance)
    assert client.get_model_version_by_alias("gate", "champion").version == champ0
    v = client.get_model_version("gate", bad.new_version)
    assert v.tags["mfstudy.retrain.decision"] == "kept"
    assert float(v.tags["mfstudy.retrain.champion_score"]) == pytest.approx(bad.champion_score)
    assert float(v.tags["mfstudy.retrain.candidate_score"]) == pytest.approx(bad.candidate_score)
    # The intervals: each score inside its own; the paired difference negative in almost
    # every resample (noise is worse on the same users). About 100 evaluated users and
    # precision@5 in steps of 1/5: the interval's upper end may touch 0.
    c = bad.comparison
    assert c["candidate_low"] <= bad.candidate_score <= c["candidate_high"]
    assert c["champion_low"] <= bad.champion_score <= c["champion_high"]
    assert c["difference"] == pytest.approx(bad.candidate_score - bad.champion_score)
    assert c["difference_low"] <= c["difference"] <= c["difference_high"] <= 0
    assert c["p_value"] < 0.2 and c["prob_candidate_better"] < 0.05
    assert c["users"] == len(prepare(cfg).users) and c["n_boot"] == 2000
    for key in ("difference_low", "difference_high", "p_value", "candidate_low"):
        assert float(v.tags[f"mfstudy.retrain.{key}"]) == pytest.approx(c[key])
    assert int(v.tags["mfstudy.data.users"]) == bad.data["users"]
    assert "95% interval" in bad.markdown() and "p-value" in bad.markdown()
    # The next night on the same data: that comparison was made, nothing new to register.
    n_versions = len(client.search_model_versions("name='gate'"))
    again = retrain_champion(cfg, prepare(cfg), threads=2)
    assert again is not None and again.decision == "unchanged" and again.new_version is None
    assert f"version {bad.new_version} already holds today's data and was kept" in again.reason
    assert len(client.search_model_versions("name='gate'")) == n_versions

    grown.to_csv(path, index=False)
    good = retrain_champion(cfg, prepare(cfg), threads=2)
    assert good is not None and good.decision == "promoted", good
    assert good.champion_version == champ0
    assert client.get_model_version_by_alias("gate", "champion").version == good.new_version

    runs = client.search_runs(
        [client.get_experiment_by_name("gate").experiment_id],
        filter_string="tags.`mfstudy.role` = 'retrain'",
    )
    assert len(runs) == 3
    by_decision = {r.data.tags["mfstudy.retrain.decision"]: r for r in runs}
    assert set(by_decision) == {"kept", "promoted", "unchanged"}
    for res in (bad, good):
        run = by_decision[res.decision]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["candidate_test_precision_at_5"] == pytest.approx(
            res.candidate_score
        )
        assert run.data.metrics["champion_test_precision_at_5"] == pytest.approx(res.champion_score)
        assert run.data.metrics["compare.difference_high"] == pytest.approx(
            res.comparison["difference_high"]
        )
        assert run.data.metrics["data.users_added"] == res.change["data.users_added"]
    print(
        f"shuffled: cand {bad.candidate_score:.4f} champ {bad.champion_score:.4f} "
        f"diff CI [{bad.comparison['difference_low']:.4f}, "
        f"{bad.comparison['difference_high']:.4f}] p={bad.comparison['p_value']:.3g}; "
        f"grown: cand {good.candidate_score:.4f} champ {good.champion_score:.4f} "
        f"diff CI [{good.comparison['difference_low']:.4f}, "
        f"{good.comparison['difference_high']:.4f}] p={good.comparison['p_value']:.3g}"
    )


def test_retraining_reads_and_moves_the_champion_holding_the_champion_lock(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read, compare and move are one step: the model's champion lock (`mfstudy.workdir`)
    is held from reading the champion to moving the alias, as a study's registration holds it."""
    base, grown, _ = _frames()
    path = tmp_path / "interactions.csv"
    base.to_csv(path, index=False)
    cfg = _cfg(path, tmp_path, tracking_uri, ["name=gate-lock", "retrain.tolerance=0.5"])
    assert run_study(cfg).promoted
    lock = cfg.workdir.resolve() / "registry" / "gate-lock.lock"
    seen: list[tuple[str, bool]] = []
    for fn in ("champion_version", "move_champion"):
        real = getattr(tracking, fn)

        def spy(*args: Any, _real: Any = real, _fn: str = fn, **kwargs: Any) -> Any:
            seen.append((_fn, lock_held(lock)))
            return _real(*args, **kwargs)

        monkeypatch.setattr(tracking, fn, spy)

    grown.to_csv(path, index=False)
    result = retrain_champion(cfg, prepare(cfg), threads=2)
    assert result is not None and result.decision == "promoted", result
    assert seen == [("champion_version", True), ("move_champion", True)]
    assert not lock_held(lock)
    client = MlflowClient(tracking_uri)
    assert client.get_model_version_by_alias("gate-lock", "champion").version == result.new_version


def _versions(client: MlflowClient, name: str) -> int:
    return len(client.search_model_versions(f"name='{name}'"))


def test_data_gate_unchanged_and_shrunk_feeds_register_nothing(
    tmp_path: Path, tracking_uri: str
) -> None:
    base, _, _ = _frames(seed=5)
    path = tmp_path / "interactions.csv"
    base.to_csv(path, index=False)
    cfg = _cfg(path, tmp_path, tracking_uri, ["name=gate-data"])
    first = run_study(cfg)
    assert first.promoted
    client = MlflowClient(tracking_uri)
    champ = client.get_model_version_by_alias("gate-data", "champion")
    assert {"mfstudy.data", "mfstudy.data.fingerprint", "mfstudy.data.input_checksum"} <= set(
        champ.tags
    ), "the study's registration stores the data card"
    n_versions = _versions(client, "gate-data")

    # The same file again: nothing fitted, nothing registered, a run says so.
    same = retrain_champion(cfg, prepare(cfg), threads=2)
    assert same is not None and same.decision == "unchanged" and same.new_version is None
    assert _versions(client, "gate-data") == n_versions
    assert "**unchanged**: champion kept" in same.markdown()

    # The first half of the rows (the broken feed): the gate fails in one line.
    base.iloc[: len(base) // 2].to_csv(path, index=False)
    with pytest.raises(RetrainGateError) as err:
        retrain_champion(cfg, prepare(cfg), threads=2)
    line = str(err.value)
    assert line.startswith("retrain gate: ") and "\n" not in line
    assert "interactions" in line and "more than retrain.max_shrink 5%" in line
    assert line.endswith(f"champion v{champ.version} kept, nothing registered")
    assert "**gate failed**" in err.value.report and "| interactions |" in err.value.report
    assert _versions(client, "gate-data") == n_versions
    assert client.get_model_version_by_alias("gate-data", "champion").version == champ.version

    runs = client.search_runs(
        [client.get_experiment_by_name("gate-data").experiment_id],
        filter_string="tags.`mfstudy.role` = 'retrain'",
    )
    by_decision = {r.data.tags["mfstudy.retrain.decision"]: r for r in runs}
    assert set(by_decision) == {"unchanged", "gate_failed"}
    assert by_decision["unchanged"].info.status == "FINISHED"
    assert by_decision["gate_failed"].info.status == "FAILED"
    assert by_decision["gate_failed"].data.tags["mfstudy.retrain.reason"] == line

    # A champion registered before data cards existed: judged on its model, and said so.
    for key in [k for k in champ.tags if k.startswith("mfstudy.data")]:
        client.delete_model_version_tag("gate-data", champ.version, key)
    with pytest.raises(RetrainGateError, match="no stored data summary") as err:
        retrain_champion(cfg, prepare(cfg), threads=2)
    assert "interactions" in str(err.value)
    print(line)
