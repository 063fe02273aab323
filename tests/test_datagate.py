"""The nightly retraining's data gate rules (`mfstudy.datagate`), on hand-made data cards."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mfstudy.datagate import card_from_model, card_from_tags, card_tags, check_data, data_card

SCHEMA = {
    "source": "table",
    "columns": {"user_col": "user", "item_col": "item", "weight_col": "plays"},
    "dtypes": {"user": "object", "item": "object", "weight": "float64"},
    "item_names": False,
}


def _card(users: int, items: int, interactions: int, fp: str = "f1", schema=SCHEMA) -> dict:
    return {
        "rows_read": interactions,
        "users": users,
        "items": items,
        "interactions": interactions,
        "per_user": {"median": interactions / max(users, 1)},
        "schema": schema,
        "fingerprint": fp,
        "holdout": "h1",
        "input_checksum": "c1",
    }


def _ids(n: int, start: int = 0) -> np.ndarray:
    return np.array([f"u{i}" for i in range(start, start + n)], dtype=object)


def _check(old: dict, new: dict, users=None, items=None, max_shrink=0.05):
    users = users or (_ids(100), _ids(100))
    items = items or (_ids(50), _ids(50))
    return check_data(old, new, (users[0], items[0]), (users[1], items[1]), max_shrink)


def test_fewer_users_than_max_shrink_allows_fail_the_gate() -> None:
    c = _check(_card(1892, 50, 10_000), _card(945, 50, 10_000, fp="f2"))
    assert not c.passed and not c.unchanged
    assert c.problems == ("users 1892 -> 945 (-50.1%, more than retrain.max_shrink 5%)",)
    assert c.line("3") == (
        "retrain gate: users 1892 -> 945 (-50.1%, more than retrain.max_shrink 5%); "
        "champion v3 kept, nothing registered"
    )


def test_fewer_interactions_fail_the_gate() -> None:
    c = _check(_card(100, 50, 10_000), _card(100, 50, 9_000, fp="f2"))
    assert c.problems == ("interactions 10000 -> 9000 (-10.0%, more than retrain.max_shrink 5%)",)


def test_exactly_max_shrink_passes_and_one_more_fails() -> None:
    # 5 of 100 users (5%) and 500 of 10000 interactions: exactly the limit, allowed.
    at = _check(_card(100, 50, 10_000), _card(95, 50, 9_500, fp="f2"), (_ids(100), _ids(95)))
    assert at.passed, at.problems
    over = _check(_card(100, 50, 10_000), _card(94, 50, 9_499, fp="f2"), (_ids(100), _ids(94)))
    assert [p.split(" ")[0] for p in over.problems] == ["users", "interactions"]
    # Another limit moves the boundary.
    assert _check(
        _card(100, 50, 10_000), _card(94, 50, 9_499, fp="f2"), (_ids(100), _ids(94)), max_shrink=0.1
    ).passed


def test_ids_vanishing_en_masse_fail_even_when_the_counts_grow() -> None:
    # A re-keyed feed: as many users as before (more, even), but 20 of the 100 are new ids.
    users = (_ids(100), _ids(105, start=20))
    c = _check(_card(100, 50, 10_000), _card(105, 50, 10_500, fp="f2"), users)
    assert c.problems == (
        "user ids: 20 of the champion's 100 absent today (20.0%, more than retrain.max_shrink 5%)",
    )
    assert (c.users_added, c.users_removed) == (25, 20)
    items = (_ids(50), _ids(50, start=10))
    c = _check(_card(100, 50, 10_000), _card(100, 50, 10_000, fp="f2"), items=items)
    assert c.problems[0].startswith("item ids: 10 of the champion's 50 absent today (20.0%")
    # Ids compared as text: the registry's id map may type them differently.
    ints = (np.arange(100), np.array([str(i) for i in range(100)], dtype=object))
    assert _check(_card(100, 50, 10_000), _card(100, 50, 10_000, fp="f2"), ints).passed


def test_schema_change_fails_the_gate() -> None:
    new_schema = {**SCHEMA, "dtypes": {**SCHEMA["dtypes"], "user": "int64"}}
    c = _check(_card(100, 50, 10_000), _card(100, 50, 10_000, fp="f2", schema=new_schema))
    assert c.problems == ("schema changed: dtypes.user object -> int64",)
    other = {**SCHEMA, "source": "lastfm-2k"}
    c = _check(_card(100, 50, 10_000), _card(100, 50, 10_000, fp="f2", schema=other))
    assert c.problems == ("schema changed: source table -> lastfm-2k",)


def test_growth_passes_and_same_fingerprint_is_unchanged() -> None:
    grown = _check(_card(100, 50, 10_000), _card(130, 60, 14_000, fp="f2"), (_ids(100), _ids(130)))
    assert grown.passed and not grown.unchanged
    assert (grown.users_added, grown.users_removed) == (30, 0)
    assert grown.changes()["data.today.users"] == 130
    same = _check(_card(100, 50, 10_000), _card(100, 50, 10_000))
    assert same.unchanged and same.passed


def test_a_champion_without_a_card_is_judged_on_its_model() -> None:
    seen = sp.csr_matrix(np.eye(100, 50, dtype=np.float32) + np.eye(100, 50, k=1))
    derived = card_from_model(seen, _ids(100), _ids(50))
    assert (derived["users"], derived["items"], derived["interactions"]) == (100, 50, 99)
    # No fingerprint: never "unchanged"; no schema: not compared; counts and ids are.
    c = _check(derived, _card(100, 50, 99, fp=None))
    assert c.passed and not c.unchanged and c.derived and "no stored data summary" in c.note()
    c = _check(derived, _card(50, 50, 99), (_ids(100), _ids(50)))
    assert c.line("1").startswith("retrain gate: users 100 -> 50 (-50.0%")
    assert "no stored data summary" in c.line("1") and "no stored data summary" in c.markdown()


def test_card_round_trips_through_version_tags() -> None:
    full = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], dtype=np.float32))
    card = data_card(
        full=full,
        stats={"rows_read": 7, "schema": SCHEMA},
        n_users=2,
        n_items=3,
        fingerprint="abc",
        holdout="h",
        input_checksum="sha",
    )
    assert card["per_user"]["median"] == pytest.approx(1.5) and card["interactions"] == 3
    tags = card_tags(card)
    assert tags["mfstudy.data.users"] == "2" and tags["mfstudy.data.fingerprint"] == "abc"
    assert card_from_tags(tags) == card
    assert card_from_tags({}) is None and card_from_tags({"mfstudy.data": "{cut"}) is None
