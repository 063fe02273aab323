"""Pieces of the tracking package that need no server: URIs, params, id mapping, spooling."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

import mfstudy.models
from mfstudy.errors import MFStudyError
from mfstudy.models import Callback, Recommender
from mfstudy.tracking import LoadedRecommender, TrackingError, TrialRun, tracking_uri_for
from mfstudy.tracking._params import clip_param_key, clip_param_value, flatten
from mfstudy.tracking._transport import short_reason


def test_tracking_uri_defaults_to_an_absolute_sqlite_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = tracking_uri_for(None, Path("runs"))
    assert uri == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').as_posix()}"
    assert uri.startswith("sqlite:////")  # absolute: workers may run elsewhere
    assert tracking_uri_for("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    assert tracking_uri_for(" https://x.org/ml ", tmp_path) == "https://x.org/ml"
    assert list(tmp_path.iterdir()) == []  # resolving creates nothing


@pytest.mark.slow  # a fresh interpreter imports MLflow: seconds
def test_importing_the_package_is_cheap_and_has_no_side_effects(tmp_path: Path) -> None:
    # MLflow's process-wide tracking URI is left alone: the one the environment gives (never
    # contacted here) is still the one MLflow reports after importing and using the package.
    sentinel = "http://127.0.0.1:9/not-contacted"
    code = (
        "import os, sys, mfstudy.tracking as t\n"
        "assert 'mlflow' not in sys.modules\n"
        "assert t.tracking_uri_for(None, '.').startswith('sqlite:')\n"
        "assert 'mlflow' not in sys.modules\n"
        "t.TrialRun\n"
        "assert 'mlflow' in sys.modules\n"
        "import mlflow\n"
        f"assert mlflow.get_tracking_uri() == os.environ['MLFLOW_TRACKING_URI'] == {sentinel!r}\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": sentinel}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
    assert list(tmp_path.iterdir()) == []


def test_run_url_is_the_servers_browser_address_without_secrets() -> None:
    from mfstudy.tracking import run_url

    assert run_url("http://127.0.0.1:5000", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    )
    # A password (and a query holding a token) never reaches the link; a path prefix stays.
    assert run_url("https://bob:s3cr/t@ml.example.org/mlflow/?token=x", "12", "f00d") == (
        "https://ml.example.org/mlflow/#/experiments/12/runs/f00d"
    )
    assert run_url("HTTP://host:80/", "0", "r") == "HTTP://host:80/#/experiments/0/runs/r"
    # Local stores have no address.
    for uri in ("sqlite:////tmp/runs/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", "databricks"):
        assert run_url(uri, "1", "r") is None


def test_extra_run_tags_are_checked_before_any_run_is_opened(tmp_path: Path) -> None:
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_TAG_VAL_LENGTH

    from mfstudy.tracking import MlflowTrialLogs
    from mfstudy.tracking._tags import MAX_TAG_KEY_LENGTH, MAX_TAG_VALUE_LENGTH, check_tags

    assert (MAX_TAG_KEY_LENGTH, MAX_TAG_VALUE_LENGTH) == (MAX_ENTITY_KEY_LENGTH, MAX_TAG_VAL_LENGTH)
    assert check_tags(None) == {} and check_tags([("a", "1")]) == {"a": "1"}
    logs = MlflowTrialLogs("http://x", "1", "p", tmp_path, 1.0, tags=(("prefect.run", "u"),))
    assert pickle.loads(pickle.dumps(logs)) == logs
    for bad in (
        {"mfstudy.study": "other"},  # would hide the parent run from its study
        {"mlflow.parentRunId": "x"},
        {"k": 1},
        {"k": "v" * (MAX_TAG_VAL_LENGTH + 1)},
    ):
        with pytest.raises(ValueError, match="run tag"):
            check_tags(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="run tag"):
            MlflowTrialLogs("http://x", "1", "p", tmp_path, 1.0, tags=tuple(bad.items()))


def test_tracking_errors_are_one_line_user_errors() -> None:
    err = TrackingError("server at\nhttp://x is unreachable:\n  refused")
    assert (
        isinstance(err, MFStudyError) and str(err) == "server at http://x is unreachable: refused"
    )
    long = (
        "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded with url: /api "
        '(Caused by NewConnectionError("<urllib3.connection.HTTPConnection object>: Failed to '
        'establish a new connection: [Errno 111] Connection refused"))'
    )
    assert short_reason(RuntimeError(long)) == "Connection refused"


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8), st.none()),
        lambda children: st.dictionaries(st.text("abc", min_size=1, max_size=3), children),
        max_leaves=12,
    ).filter(lambda d: isinstance(d, dict))
)
def test_flatten_keeps_every_leaf_under_its_dotted_path(config: dict) -> None:
    flat = flatten(config)

    def leaves(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(leaves(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    want = leaves(config)
    # Dotted keys can collide ({"a.b": 1} vs {"a": {"b": 2}}); the reference collides alike.
    assert flat == want


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=7000), st.text(min_size=1, max_size=400))
def test_params_are_clipped_to_mlflow_limits(value: str, key: str) -> None:
    v, k = clip_param_value(value), clip_param_key(key)
    assert len(v) <= MAX_PARAM_VAL_LENGTH and len(k) <= MAX_ENTITY_KEY_LENGTH
    if len(value) <= MAX_PARAM_VAL_LENGTH:
        assert v == value
    else:
        assert v.endswith("...") and value.startswith(v[:-3])
    if len(key) <= MAX_ENTITY_KEY_LENGTH:
        assert k == key
    else:
        assert key.endswith(k[3:])


def test_data_metrics_are_a_compact_named_set() -> None:
    from mfstudy.tracking._study import DATA_METRICS, data_metrics

    stats = {
        "name": "x",
        "rows_read": 120,
        "duplicates_dropped": 2,
        "before_threshold": {"users": 10, "items": 20, "interactions": 118, "sparsity_pct": 41.0},
        "after_threshold": {"users": 8, "items": 15, "interactions": 100, "sparsity_pct": 16.7},
        "threshold": {"passes": 3, "users_removed": 2},
        "split": {"kind": "holdout", "train_interactions": 90, "test_interactions": 10,
                  "eligible_users": 8, "heldout_users": 5, "evaluated_users": 5},
        "config": {"seed": 1, "data": {"n_users": 10}},
    }  # fmt: skip
    got = data_metrics(stats)
    assert len(DATA_METRICS) <= 12 and set(got) == set(DATA_METRICS)
    assert got["data.users"] == 8 and got["data.users_before_threshold"] == 10
    assert (got["data.sparsity_pct"], got["data.test_users"]) == (16.7, 5)
    assert all(isinstance(v, float) for v in got.values())
    # Missing parts, non-numbers and non-finite values are left out, not guessed.
    partial = {"after_threshold": {"users": True, "items": float("nan"), "interactions": 4}}
    assert data_metrics(partial) == {"data.interactions": 4.0}
    assert data_metrics({"split": "holdout"}) == {}


# --------------------------------------------------------------------------- id mapping


class Dense(Recommender):
    """Test double: factors given to `__init__`."""

    family = "dense-test"

    def __init__(self, p: list[list[float]], q: list[list[float]]) -> None:
        self.p, self.q = p, q

    def check_params(self) -> None:
        pass  # any factors will do

    def fit(self, train: sp.csr_matrix, callback: Callback | None = None) -> Dense:
        self.user_factors_ = np.asarray(self.p, dtype=np.float32)
        self.item_factors_ = np.asarray(self.q, dtype=np.float32)
        self.seen_ = sp.csr_matrix(train, dtype=np.float32)
        self.n_epochs_ = 1
        return self

    def _fold_in(self, rows: sp.csr_matrix) -> None:
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        return {"p": self.user_factors_, "q": self.item_factors_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.user_factors_, self.item_factors_ = state["p"], state["q"]


@settings(max_examples=30, deadline=None)
@given(
    n_users=st.integers(1, 6),
    n_items=st.integers(1, 8),
    k=st.integers(1, 10),
    seed=st.integers(0, 2**31 - 1),
)
def test_batch_recommendations_match_a_dense_reference(
    n_users: int, n_items: int, k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n_users, 2)).round(2)
    q = rng.normal(size=(n_items, 2)).round(2)
    seen = sp.csr_matrix((rng.random((n_users, n_items)) < 0.4).astype(np.float32))
    user_ids = [f"u{7 * u}" for u in range(n_users)]
    item_ids = [10 * i for i in range(n_items)]
    rec = LoadedRecommender(Dense(p.tolist(), q.tolist()).fit(seen), user_ids, item_ids)

    query = [*reversed(user_ids), "stranger"]
    frame, unknown = rec.recommend_many(query, k)
    assert unknown == ["stranger"]

    scores = p.astype(np.float32) @ q.astype(np.float32).T
    for u, uid in enumerate(user_ids):
        rows = frame[frame["user_id"] == uid]
        s = scores[u].astype(np.float64)
        s[seen[u].indices] = -np.inf
        # Ties rank the lower item index first, like the model contract.
        order = [i for i in np.lexsort((np.arange(n_items), -s)) if np.isfinite(s[i])][:k]
        assert rows["rank"].tolist() == list(range(1, len(order) + 1))
        assert rows["item_id"].tolist() == [str(item_ids[i]) for i in order]
        assert rows["score"].to_numpy() == pytest.approx(s[order], abs=1e-5)


def test_per_user_k_and_id_validation() -> None:
    model = Dense([[1.0], [2.0]], [[1.0], [0.5], [0.1]]).fit(sp.csr_matrix((2, 3)))
    rec = LoadedRecommender(model, ["a", "b"], ["x", "y", "z"], ["X", "Y", "Z"])
    frame, _ = rec.recommend_many(["a", "b"], [1, 3])
    assert frame.groupby("user_id").size().to_dict() == {"a": 1, "b": 3}
    assert frame["item_name"].tolist() == ["X", "X", "Y", "Z"]
    with pytest.raises(ValueError, match="user ids"):
        LoadedRecommender(model, ["a"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="unique"):
        LoadedRecommender(model, ["a", "a"], ["x", "y", "z"])


def test_saved_model_and_maps_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mfstudy.tracking._recommender import write_id_maps

    monkeypatch.setattr(mfstudy.models, "_registered", lambda: [Dense])
    model = Dense([[1.0], [2.0]], [[1.0], [0.5], [0.1]]).fit(sp.csr_matrix((2, 3)))
    # Names with separators and quotes, ids that look numeric: CSV must keep them as text.
    users, items = write_id_maps(tmp_path, ["007", "8"], ["1", "2", "3"], ['a,"b"', "", "c"])
    rec = LoadedRecommender.from_folder(model.save(tmp_path / "m"), users, items)
    assert rec.user_ids.tolist() == ["007", "8"]
    assert rec.item_names.tolist() == ['a,"b"', "", "c"]
    assert rec.recommend("007", k=1)["item_id"].tolist() == ["1"]


# --------------------------------------------------------------------------- spooling


def test_trial_run_without_server_is_picklable_and_spools_everything(
    dead_uri: str, tmp_path: Path
) -> None:
    tr = TrialRun.start(
        dead_uri, "5", "parentid", 12, {"a": 1}, spool_dir=tmp_path, flush_every=1, metric="m"
    )
    tr = pickle.loads(pickle.dumps(tr))
    tr.log_epoch(1, {"m": 0.5})
    tr.log_epoch(2, {"m": float("nan")})
    with pytest.raises(ValueError, match="state must be"):
        tr.end("done")  # type: ignore[arg-type]
    end = tr.end("complete", best_epoch=1, best_value=0.5)
    assert tr.end("failed") is end  # ending twice is a no-op
    assert end.spool_file == tmp_path / "parentid-trial-0012.json"
    record = json.loads(end.spool_file.read_text())
    assert record["run_id"] is None and record["run_name"] == "trial-0012"
    assert record["create_tags"]["mlflow.parentRunId"] == "parentid"
    assert record["params"] == {"a": "1"}
    # The selected value and its epoch travel with the per-epoch ones (at step 0).
    assert [m[0] for m in record["metrics"]] == ["m", "m", "best_m", "best_epoch"]
    assert [m[3] for m in record["metrics"]] == [1, 2, 0, 0]
    assert [m[1] for m in record["metrics"]][2:] == [0.5, 1.0]
    assert record["tags"]["mfstudy.best_epoch"] == "1" and record["end_status"] == "FINISHED"
    with pytest.raises(RuntimeError, match="already ended"):
        tr.log_epoch(3, {"m": 1.0})


@pytest.mark.slow  # creates (migrates) a real MLflow SQLite store: seconds
def test_default_sqlite_store_keeps_runs_and_artifacts_under_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The no-server default: a SQLite file, used directly by every worker process.
    from mlflow import MlflowClient

    from mfstudy.tracking import check_reachable, start_study
    from mfstudy.tracking._artifacts import read_trial_histories

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = tracking_uri_for(None, tmp_path / "out")
    (tmp_path / "out").mkdir()
    check_reachable(uri)
    st = start_study(uri, "local", "local", {"a": {"b": 2}}, {"n": 1}, None)
    tr = TrialRun.start(uri, st.experiment_id, st.run_id, 0, {"x": 1}, flush_every=2)
    for epoch in range(1, 6):
        tr.log_epoch(epoch, {"test_precision_at_k": epoch / 10})
    assert tr.end("pruned").delivered
    client = MlflowClient(uri)
    assert client.get_run(tr.run_id).info.status == "KILLED"
    hist = read_trial_histories(uri, st.run_id, ["test_precision_at_k"])
    assert hist == {0: {"test_precision_at_k": [(e, e / 10) for e in range(1, 6)]}}
    assert client.get_run(st.run_id).data.params["a.b"] == "2"
    assert (tmp_path / "out" / "artifacts").is_dir()  # config.yaml, stats.json went there
    assert list(elsewhere.iterdir()) == []  # nothing in the current directory
