"""`prepare` end to end in memory, and its atomic output folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import tiny_data
from mfstudy import prepare as prepare_mod
from mfstudy.config import load_config
from mfstudy.errors import DataError
from mfstudy.prepare import prepare, read_prepared, write_prepared

SMALL = tiny_data(400, 200, 12_000)


def test_prepare_invariants_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, [*SMALL, "data.duplicate_fraction=0.05"])
    p = prepare(cfg)
    assert p.stats["duplicates_dropped"] > 0
    assert p.train.multiply(p.test).nnz == 0
    assert abs(p.train + p.test - p.full).sum() == 0
    assert np.array_equal(np.flatnonzero(np.diff(p.test.indptr)), p.users)
    assert (np.diff(p.test.indptr)[p.users] == cfg.split.k).all()

    out = write_prepared(p, tmp_path / "prep")
    back = read_prepared(out)
    for name in ("full", "train", "test"):
        a, b = getattr(p, name), getattr(back, name)
        assert (a != b).nnz == 0 and a.shape == b.shape
    assert np.array_equal(back.users, p.users)
    assert np.array_equal(back.interactions.item_ids, p.interactions.item_ids)
    assert json.loads((out / "stats.json").read_text()) == back.stats


def test_prepare_is_deterministic_by_seed() -> None:
    a = prepare(load_config(None, SMALL))
    b = prepare(load_config(None, SMALL))
    c = prepare(load_config(None, [*SMALL, "seed=7"]))
    assert (a.test != b.test).nnz == 0
    assert a.test.shape != c.test.shape or (a.test != c.test).nnz > 0


def test_new_user_split_writes_foldin(tmp_path: Path) -> None:
    p = prepare(load_config(None, [*SMALL, "split.kind=new_users"]))
    assert p.foldin is not None and p.foldin.nnz > 0
    assert p.train[p.users].nnz == 0
    back = read_prepared(write_prepared(p, tmp_path / "prep"))
    assert back.foldin is not None and (back.foldin != p.foldin).nnz == 0


def test_failed_write_leaves_nothing_and_keeps_the_old_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prepare(load_config(None, SMALL))
    out = write_prepared(p, tmp_path / "prep")
    before = sorted(x.name for x in out.iterdir())

    def boom(*_a: object, **_k: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(prepare_mod.json, "dumps", boom)
    with pytest.raises(OSError, match="disk full"):
        write_prepared(p, tmp_path / "prep")
    with pytest.raises(OSError, match="disk full"):
        write_prepared(p, tmp_path / "other")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["prep"]
    assert sorted(x.name for x in out.iterdir()) == before


def test_a_folder_mfstudy_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    p = prepare(load_config(None, SMALL))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's own file")
    with pytest.raises(DataError, match=r"holds files mfstudy did not write \(notes.txt\)"):
        write_prepared(p, mine)
    assert [x.name for x in mine.iterdir()] == ["notes.txt"]
    # A user's files that happen to share mfstudy's names are not mfstudy's either.
    named = tmp_path / "named"
    named.mkdir()
    (named / "users.csv").write_text("mine\n")
    (named / "stats.json").write_text("{}")
    with pytest.raises(DataError, match="was not written by mfstudy"):
        write_prepared(p, named)
    assert (named / "users.csv").read_text() == "mine\n"
    # A symbolic link is not replaced by a folder.
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match="is a symbolic link"):
        write_prepared(p, tmp_path / "link")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["link", "mine", "named"], (
        "no temporary sibling left"
    )
    # Its own output, even one written before the marker existed, is replaced as before.
    out = write_prepared(p, tmp_path / "prep")
    assert (out / prepare_mod.MARKER).is_file()
    (out / prepare_mod.MARKER).unlink()
    write_prepared(p, out)
    assert (out / prepare_mod.MARKER).is_file()
    # A user's file put into mfstudy's own folder is not deleted by the next write.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"holds files mfstudy did not write \(notes.txt\)"):
        write_prepared(p, out)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    # An empty folder is fine too.
    (tmp_path / "empty").mkdir()
    assert read_prepared(write_prepared(p, tmp_path / "empty")).train.nnz == p.train.nnz


def test_the_current_folder_and_its_parents_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prepare(load_config(None, SMALL))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", str(work)):
        with pytest.raises(DataError, match="is the current folder or holds it"):
            write_prepared(p, out)
    assert list(work.iterdir()) == []


def test_output_folder_follows_the_umask(tmp_path: Path) -> None:
    p = prepare(load_config(None, SMALL))
    old = os.umask(0o022)
    try:
        out = write_prepared(p, tmp_path / "prep")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    p = prepare(load_config(None, SMALL))
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cannot write the output folder") as err:
        write_prepared(p, tmp_path / "file" / "sub")
    assert "\n" not in str(err.value)


def _odd_ids_table(path: Path) -> pd.DataFrame:
    """Planted-preference likes whose user ids are text a number parser would change: users
    u and u + 100 are `7` and `007`, and every third user is spelled like a float (`5.0`)."""
    from mfstudy.config import SyntheticSource
    from mfstudy.data import generate_synthetic

    raw = generate_synthetic(
        SyntheticSource(n_users=200, n_items=80, n_interactions=6000, affinity=3.0), 5
    )
    frame = raw.frame[["user", "item"]].drop_duplicates()

    def spell(u: int) -> str:
        base = str(u % 100) + (".0" if u % 3 == 0 else "")
        return base.zfill(3) if u >= 100 else base

    frame = frame.assign(user=frame["user"].map(spell), item=frame["item"].map("i{}".format))
    frame.to_csv(path, index=False)
    return frame


def test_text_ids_round_trip_exactly(tmp_path: Path) -> None:
    frame = _odd_ids_table(tmp_path / "likes.csv")
    cfg = load_config(None, [f"data={{source: table, path: {tmp_path / 'likes.csv'}}}"])
    p = prepare(cfg)
    ids = set(p.interactions.user_ids.tolist())
    assert {"7", "007", "3.0"} <= ids and ids <= set(frame["user"])
    back = read_prepared(write_prepared(p, tmp_path / "prep"))
    assert back.interactions.user_ids.tolist() == p.interactions.user_ids.tolist()
    assert back.interactions.item_ids.tolist() == p.interactions.item_ids.tolist()
