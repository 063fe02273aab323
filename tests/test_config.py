"""Study configs: the shipped files validate, typos are named, overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO
from mfstudy.config import StudyConfig, load_config
from mfstudy.errors import ConfigError

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_shipped_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "lastfm-2k", "movielens-100k", "recipe"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_quickstart_file_is_the_embedded_default() -> None:
    assert load_config(REPO / "configs" / "quickstart.yaml") == StudyConfig()
    assert load_config(None) == StudyConfig()


def test_recipe_config_has_the_blogs_settings() -> None:
    cfg = load_config(REPO / "configs" / "recipe.yaml")
    assert cfg.data.weighting == "binary"
    assert (cfg.threshold.min_items_per_user, cfg.threshold.min_users_per_item) == (5, 5)
    assert cfg.split.kind == "user_holdout"
    assert (cfg.split.fraction, cfg.split.k) == (0.2, 5)
    assert cfg.evaluation.k == 5 and cfg.evaluation.exclude_seen is False


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\nsplitt: {}\n", "splitt: unknown key"),
        ("data:\n  source: synthetic\n  n_userz: 5\n", "data.n_userz: unknown key"),
        ("split:\n  kind: user_holdout\n  kk: 5\n", "split.kk: unknown key"),
        ("data:\n  source: nope\n", "data: Input tag 'nope'"),
        ("split:\n  k: 0\n", "split.k: Input should be greater than or equal to 1"),
        ("split:\n  fraction: 1.5\n", "split.fraction"),
        ("data:\n  source: table\n", "data.path: Field required"),
        ("- a\n- b\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_bad_configs_name_the_problem_in_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert needle in msg
    assert msg.startswith(str(path))
    assert "\n" not in msg


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_overrides_apply_and_validate() -> None:
    cfg = load_config(None, ["split.k=3", "data.n_users=500", "evaluation.exclude_seen=false"])
    assert cfg.split.k == 3 and cfg.data.n_users == 500 and cfg.evaluation.exclude_seen is False
    cfg = load_config(None, ["split.kind=random", "split.test_fraction=0.1"])
    assert cfg.split.kind == "random" and cfg.split.test_fraction == 0.1
    with pytest.raises(ConfigError, match=r"split\.kk: unknown key"):
        load_config(None, ["split.kk=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["split.k"])
    with pytest.raises(ConfigError, match="name: Input should be a valid string"):
        load_config(None, ["name.x=1"])
    with pytest.raises(ConfigError, match="'name' is not a section"):
        load_config(None, ["name=a", "name.x=1"])


def test_every_accepted_seed_works_and_larger_ones_are_refused() -> None:
    import numpy as np
    import optuna
    import scipy.sparse as sp

    from mfstudy.config import MAX_SEED
    from mfstudy.data import generate_synthetic
    from mfstudy.models import model_class
    from mfstudy.tuning import make_sampler

    with pytest.raises(ConfigError, match="seed") as err:
        load_config(None, [f"seed={MAX_SEED + 1}"])
    assert "\n" not in str(err.value)
    # The largest seed reaches every generator it seeds: samplers (per worker, wrapped), the
    # synthetic data, the models' own generators (numba's included).
    cfg = load_config(None, [f"seed={MAX_SEED}", "study.sampler.kind=random"])
    for kind in ("tpe", "random"):
        sampler_cfg = cfg.study.sampler.model_copy(update={"kind": kind})
        draws = set()
        for worker in (0, 5):
            study = optuna.create_study(sampler=make_sampler(sampler_cfg, cfg, worker))
            draws.add(study.ask().suggest_float("x", 0.0, 1.0))
        assert len(draws) == 2, f"{kind}: two workers drew the same first point"
    raw = generate_synthetic(
        cfg.data.model_copy(update={"n_users": 60, "n_items": 40, "n_interactions": 900}), MAX_SEED
    )
    m = raw.frame
    x = sp.csr_matrix((np.ones(len(m), np.float32), (m["user"], m["item"])), shape=(60, 40))
    x.sum_duplicates()
    for family in ("wrmf", "sgd", "als"):
        model_class(family)(factors=4, iterations=2, seed=MAX_SEED).fit(x)


def test_set_on_the_embedded_default_merges_into_its_search_space() -> None:
    default = StudyConfig().search_space["wrmf"]
    space = load_config(None, ["search_space.wrmf.factors=8"]).search_space["wrmf"]
    assert space["factors"] == 8
    assert {k: v for k, v in space.items() if k != "factors"} == {
        k: v for k, v in default.items() if k != "factors"
    }
    # As with a config file: the same override on the shipped quickstart file, same result.
    assert load_config(REPO / "configs" / "quickstart.yaml", ["search_space.wrmf.factors=8"]) == (
        load_config(None, ["search_space.wrmf.factors=8"])
    )


def test_workers_beyond_the_budget_are_not_started() -> None:
    assert load_config(None, ["study.workers=6", "study.n_trials=2"]).study.workers == 2
    assert load_config(None, ["study.workers=2", "study.n_trials=8"]).study.workers == 2
    with pytest.raises(ConfigError, match=r"study\.workers"):  # the bound still applies first
        load_config(None, ["study.workers=100000", "study.n_trials=1"])
