"""The recommender as a pyfunc model and the `champion` alias, against a real MLflow server.

The model is a test double (`FixedFactors`, factors given in `__init__`), registered as a model
family by monkeypatching `mfstudy.models._registered`; MLflow itself is real. Expected top-k
lists come from a dense NumPy reference on the tiny matrices.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from mlflow import MlflowClient

import mfstudy.models
from mfstudy.models import Callback, Recommender
from mfstudy.tracking import (
    TrackingError,
    UnknownIdError,
    champion_version,
    load_recommender,
    log_recommender,
    move_champion,
    set_champion_if_better,
    start_study,
)
from mfstudy.tracking._model import CHAMPION, LoggedRecommender
from mfstudy.tracking._study import StudyRun

pytestmark = pytest.mark.slow

N_USERS, N_ITEMS, F = 7, 11, 3
USER_IDS = [100 + 3 * u for u in range(N_USERS)]  # raw ids are ints: compared as strings
ITEM_IDS = [f"i{i:02d}" for i in range(N_ITEMS)]
ITEM_NAMES = [f"Item number {i}, with a comma" for i in range(N_ITEMS)]
REGISTERED = "mfstudy-test-recommender"


class FixedFactors(Recommender):
    """Test double: 'training' installs the factors given to `__init__`."""

    family = "fixed-test"

    def __init__(self, user_factors: list[list[float]], item_factors: list[list[float]]) -> None:
        self.user_factors = user_factors
        self.item_factors = item_factors

    def check_params(self) -> None:
        pass  # any factors will do

    def fit(self, train: sp.csr_matrix, callback: Callback | None = None) -> FixedFactors:
        self.user_factors_ = np.asarray(self.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(self.item_factors, dtype=np.float32)
        self.seen_ = sp.csr_matrix(train, dtype=np.float32)
        self.n_epochs_ = 1
        return self

    def _fold_in(self, rows: sp.csr_matrix) -> None:
        extra = np.zeros((rows.shape[0], self.user_factors_.shape[1]), dtype=np.float32)
        self.user_factors_ = np.vstack([self.user_factors_, extra])

    def _state(self) -> dict[str, np.ndarray]:
        return {"P": self.user_factors_, "Q": self.item_factors_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.user_factors_, self.item_factors_ = state["P"], state["Q"]


@pytest.fixture(autouse=True)
def _register_double(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mfstudy.models, "_registered", lambda: [FixedFactors])


def _fitted() -> FixedFactors:
    rng = np.random.default_rng(7)
    p = rng.normal(size=(N_USERS, F)).round(3).tolist()
    q = rng.normal(size=(N_ITEMS, F)).round(3).tolist()
    seen = sp.random(N_USERS, N_ITEMS, density=0.3, format="csr", random_state=rng)
    seen.data[:] = 1.0
    # User 0 has seen all items but two: its list is shorter than k.
    seen = seen.tolil()
    seen[0, 2:] = 1.0
    return FixedFactors(p, q).fit(seen.tocsr())


def _reference_top(model: FixedFactors, u: int, k: int) -> list[tuple[str, float]]:
    """Dense reference: scores P[u] @ Q.T, seen items removed, best first."""
    scores = model.user_factors_.astype(np.float64) @ model.item_factors_.T.astype(np.float64)
    s = scores[u].copy()
    s[model.seen_[u].indices] = -np.inf
    order = [int(i) for i in np.argsort(-s, kind="stable") if np.isfinite(s[i])][:k]
    return [(ITEM_IDS[i], float(s[i])) for i in order]


@pytest.fixture(scope="module")
def study(tracking_uri: str) -> StudyRun:
    return start_study(tracking_uri, "mfstudy-test-model", "model", {"model": "fixed"}, {}, None)


@pytest.fixture(scope="module")
def logged(
    tracking_uri: str, study: StudyRun, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoggedRecommender]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mfstudy.models, "_registered", lambda: [FixedFactors])
        model_dir = _fitted().save(tmp_path_factory.mktemp("model") / "fixed")
        yield log_recommender(
            tracking_uri,
            study.run_id,
            model_dir,
            ITEM_IDS,
            ITEM_NAMES,
            USER_IDS,
            REGISTERED,
            score=0.25,
            holdout="h1",
        )


def _check_frame(frame: pd.DataFrame, model: FixedFactors, users: list[int], k: int) -> None:
    for uid in users:
        u = USER_IDS.index(uid)
        rows = frame[frame["user_id"] == str(uid)]
        want = _reference_top(model, u, k)
        assert rows["rank"].tolist() == list(range(1, len(want) + 1))
        assert rows["item_id"].tolist() == [i for i, _ in want]
        assert rows["score"].to_numpy() == pytest.approx([s for _, s in want], rel=1e-5)
        names = {ITEM_IDS[i]: ITEM_NAMES[i] for i in range(N_ITEMS)}
        assert rows["item_name"].tolist() == [names[i] for i, _ in want]


def test_pyfunc_round_trip_through_the_registry(
    tracking_uri: str, logged: LoggedRecommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert logged.registered_name == REGISTERED and logged.version == "1"
    assert set_champion_if_better(tracking_uri, REGISTERED, logged.version, 0.25, holdout="h1")
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    assert client.get_model_version_by_alias(REGISTERED, CHAMPION).version == "1"

    # Plain MLflow loading of the champion, as a serving process configured by the
    # environment would do it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED}@{CHAMPION}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    inputs = pyfunc.metadata.get_input_schema().input_names()
    assert inputs == ["user_id", "k"]
    model = _fitted()
    query = pd.DataFrame({"user_id": [str(USER_IDS[0]), str(USER_IDS[3]), "nobody"]})
    out = pyfunc.predict(query, params={"k": 4})
    assert list(out.columns) == ["user_id", "rank", "item_id", "item_name", "score"]
    assert set(out["user_id"]) == {str(USER_IDS[0]), str(USER_IDS[3])}  # unknown: no rows
    _check_frame(out, model, [USER_IDS[0], USER_IDS[3]], 4)
    assert (out["user_id"] == str(USER_IDS[0])).sum() == 2  # only 2 unseen items left

    per_row = pyfunc.predict(pd.DataFrame({"user_id": [str(USER_IDS[1])] * 1, "k": [2]}))
    _check_frame(per_row, model, [USER_IDS[1]], 2)
    with pytest.raises(Exception, match="unknown user id"):
        pyfunc.predict(pd.DataFrame({"user_id": ["nobody"]}), params={"strict": True})

    # What the CLI uses: raw ids in, raw ids and names out.
    rec = load_recommender(f"models:/{REGISTERED}@{CHAMPION}", tracking_uri)
    top = rec.recommend(USER_IDS[2], k=3)  # an int id works: ids compare as strings
    assert top["item_id"].tolist() == [i for i, _ in _reference_top(model, 2, 3)]
    with pytest.raises(UnknownIdError) as info:
        rec.recommend("nobody")
    assert "'nobody'" in str(info.value) and "\n" not in str(info.value)

    q = model.item_factors_.astype(np.float64)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cos = qn @ qn[4]
    cos[4] = -np.inf
    want = [ITEM_IDS[i] for i in np.argsort(-cos, kind="stable")[:3]]
    sim = rec.similar_to("i04", k=3)
    assert sim["item_id"].tolist() == want
    assert sim["item_name"].tolist() == [ITEM_NAMES[ITEM_IDS.index(i)] for i in want]
    with pytest.raises(UnknownIdError):
        rec.similar_to("i99")


def test_nothing_is_registered_when_logging_fails(
    tracking_uri: str, study: StudyRun, logged: LoggedRecommender, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    before = len(client.search_model_versions(f"name = '{REGISTERED}'"))
    model_dir = _fitted().save(tmp_path / "m")
    (model_dir / "state.npz").unlink()  # a broken model folder
    with pytest.raises(FileNotFoundError):
        log_recommender(
            tracking_uri, study.run_id, model_dir, ITEM_IDS, ITEM_NAMES, USER_IDS, REGISTERED
        )
    with pytest.raises(ValueError, match="user ids"):  # id maps that do not fit the model
        log_recommender(
            tracking_uri,
            study.run_id,
            _fitted().save(tmp_path / "ok"),
            ITEM_IDS,
            ITEM_NAMES,
            USER_IDS[:-1],
            REGISTERED,
        )
    assert len(client.search_model_versions(f"name = '{REGISTERED}'")) == before


def test_champion_moves_only_when_the_score_is_better(
    tracking_uri: str, logged: LoggedRecommender
) -> None:
    name = "mfstudy-test-champion"
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(name)

    def new_version() -> str:
        mv = client.create_model_version(name, logged.model_uri, model_id=logged.model_id)
        return str(mv.version)

    def champion() -> str:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)

    v1, v2, v3, v4 = (new_version() for _ in range(4))
    assert set_champion_if_better(tracking_uri, name, v1, 0.30, holdout="h")  # no champion yet
    assert champion() == v1
    assert not set_champion_if_better(tracking_uri, name, v2, 0.25, holdout="h")  # worse
    assert champion() == v1
    assert client.get_model_version(name, v2).tags["mfstudy.score"] == "0.25"
    assert not set_champion_if_better(tracking_uri, name, v3, 0.30, holdout="h")  # tie: stays
    assert champion() == v1
    assert set_champion_if_better(tracking_uri, name, v3, 0.31, holdout="h")  # better
    assert champion() == v3
    # Lower is better (e.g. RMSE): 0.1 beats the champion's 0.31.
    assert set_champion_if_better(tracking_uri, name, v4, 0.1, higher_is_better=False, holdout="h")
    assert champion() == v4
    with pytest.raises(TrackingError, match="not comparable"):
        set_champion_if_better(tracking_uri, name, v2, 0.9, holdout="other")
    assert champion() == v4


def test_the_champion_is_read_one_way_by_both_paths(
    tracking_uri: str, logged: LoggedRecommender
) -> None:
    """No model and no alias read as "no champion" for the study's comparison and the nightly's
    reader alike (one reader in tracking); the nightly's explicit move is what both read."""
    name = "mfstudy-test-champion-reader"
    assert champion_version(tracking_uri, "mfstudy-test-no-such-model") is None
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(name)
    v1, v2 = (
        str(client.create_model_version(name, logged.model_uri, model_id=logged.model_id).version)
        for _ in range(2)
    )
    assert champion_version(tracking_uri, name) is None  # a model without the alias
    assert set_champion_if_better(tracking_uri, name, v1, 0.3, holdout="h")
    champ = champion_version(tracking_uri, name)
    assert champ is not None and champ.version == v1 and champ.tags["mfstudy.score"] == "0.3"
    move_champion(tracking_uri, name, v2)  # the nightly's decision, not a comparison
    champ = champion_version(tracking_uri, name)
    assert champ is not None and champ.version == v2 and champ.uri == f"models:/{name}/{v2}"


def test_logged_model_is_linked_to_the_run(
    tracking_uri: str, study: StudyRun, logged: LoggedRecommender
) -> None:
    client = MlflowClient(tracking_uri)
    model: Any = client.get_logged_model(logged.model_id)
    assert model.source_run_id == study.run_id
    assert model.tags["mfstudy.family"] == "fixed-test"
    version = client.get_model_version(REGISTERED, logged.version)
    assert version.tags["mfstudy.score"] == "0.25" and version.tags["mfstudy.holdout"] == "h1"
    # The artifacts are files, not pickled code: model folder and id maps.
    listed = mlflow.artifacts.list_artifacts(
        artifact_uri=f"{model.artifact_location}/artifacts", tracking_uri=tracking_uri
    )
    assert {Path(a.path).name for a in listed} == {"fixed", "users.csv", "items.csv"}
