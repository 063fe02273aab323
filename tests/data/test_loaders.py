"""Loaders: real datasets (counts and names), the Sketchfab format, tables, and bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfstudy.config import (
    DATA_DIR_ENV,
    Lastfm2kSource,
    MovieLens100kSource,
    MovieLensLatestSmallSource,
    SketchfabSource,
    SyntheticSource,
    TableSource,
)
from mfstudy.data import (
    clean,
    load,
    load_lastfm_2k,
    load_movielens_100k,
    load_movielens_latest_small,
    load_sketchfab,
    load_table,
)
from mfstudy.errors import DataError


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _check_frame(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["user", "item", "weight"]
    assert frame["weight"].dtype == np.float64
    assert np.isfinite(frame["weight"]).all()
    assert (frame["weight"] >= 0).all()


# --------------------------------------------------------------------------- real datasets


def test_movielens_100k(data_dir: Path) -> None:
    raw = load(MovieLens100kSource(path=data_dir / "ml-100k"), seed=0)
    f = raw.frame
    _check_frame(f)
    assert (len(f), f["user"].nunique(), f["item"].nunique()) == (100_000, 943, 1_682)
    assert f["user"].dtype == np.int64 and f["item"].dtype == np.int64
    assert set(np.unique(f["weight"])) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # First line of u.data: 196 242 3 881250949.
    assert f.iloc[0].tolist() == [196, 242, 3.0]
    assert raw.item_names is not None and len(raw.item_names) == 1_682
    assert raw.item_names.loc[1] == "Toy Story (1995)"
    assert raw.source.endswith("u.data")


def test_movielens_latest_small(data_dir: Path) -> None:
    raw = load_movielens_latest_small(data_dir / "ml-latest-small")
    f = raw.frame
    _check_frame(f)
    # 9,742 movies are listed in movies.csv; 9,724 of them have a rating.
    assert (len(f), f["user"].nunique(), f["item"].nunique()) == (100_836, 610, 9_724)
    assert raw.item_names is not None and len(raw.item_names) == 9_742
    assert raw.item_names.loc[1] == "Toy Story (1995)"
    # A title with commas inside quotes.
    assert raw.item_names.loc[11] == "American President, The (1995)"
    assert set(np.unique(f["weight"])) == set(np.arange(0.5, 5.01, 0.5))


def test_lastfm_2k(data_dir: Path) -> None:
    raw = load_lastfm_2k(data_dir / "lastfm-2k")
    f = raw.frame
    _check_frame(f)
    assert (len(f), f["user"].nunique(), f["item"].nunique()) == (92_834, 1_892, 17_632)
    assert f.iloc[0].tolist() == [2, 51, 13_883.0]  # play counts, not ratings
    names = raw.item_names
    assert names is not None and len(names) == 17_632
    assert names.loc[89] == "Lady Gaga"
    assert names.loc[64] == "Röyksopp"  # artists.dat is UTF-8
    assert names.loc[1686] == '"Weird Al" Yankovic'  # literal quotes, not CSV quoting
    inter, stats = clean(raw, "sum")
    assert stats.duplicates_dropped == 0 and inter.nnz == 92_834
    assert inter.item_names is not None and "Lady Gaga" in set(inter.item_names)


def test_data_dir_env_is_used_without_download(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `path`: the folder under $MFSTUDY_DATA_DIR is found (downloads would fail here)."""
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert len(load(MovieLens100kSource(), seed=0).frame) == 100_000
    assert len(load(Lastfm2kSource(), seed=0).frame) == 92_834
    assert len(load(MovieLensLatestSmallSource(), seed=0).frame) == 100_836


# --------------------------------------------------------------------------- sketchfab

SKETCHFAB = (
    "modelname|mid|uid\n"
    "\\Chair|Table\\|m1|u1\n"  # quoted with backslashes: the | belongs to the name
    "Plain name|m2|u1\n"
    "\\Back\\\\slash\\|m3|u2\n"  # a doubled quotechar inside quotes is a literal backslash
    "Plain name|m2|u1\n"  # a verbatim duplicate, as the real file has
    "Other|m1|u3\n"
)


def test_sketchfab(tmp_path: Path) -> None:
    path = tmp_path / "likes.psv"
    path.write_text(SKETCHFAB, encoding="utf-8")
    raw = load(SketchfabSource(path=path), seed=0)
    _check_frame(raw.frame)
    assert raw.frame[["user", "item"]].values.tolist() == [
        ["u1", "m1"],
        ["u1", "m2"],
        ["u2", "m3"],
        ["u1", "m2"],
        ["u3", "m1"],
    ]
    assert (raw.frame["weight"] == 1.0).all()
    assert raw.item_names is not None
    assert raw.item_names.to_dict() == {
        "m1": "Chair|Table",
        "m2": "Plain name",
        "m3": "Back\\slash",
    }
    inter, stats = clean(raw, "binary")
    assert stats.duplicates_dropped == 1 and inter.nnz == 4
    assert list(inter.item_names) == ["Chair|Table", "Plain name", "Back\\slash"]


def test_sketchfab_ids_stay_strings(tmp_path: Path) -> None:
    path = tmp_path / "likes.psv"
    path.write_text("modelname|mid|uid\nx|123e4|007\n", encoding="utf-8")
    f = load_sketchfab(path).frame
    assert f.iloc[0]["item"] == "123e4" and f.iloc[0]["user"] == "007"


# --------------------------------------------------------------------------- tables


def test_table_csv_with_names_and_quoted_commas(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        'uid,iid,stars,title,extra\n1,10,4.5,"Heat, The",x\n2,10,1,"Heat, The",y\n2,11,0,Up,z\n',
        encoding="utf-8",
    )
    raw = load_table(
        TableSource(
            path=path, user_col="uid", item_col="iid", weight_col="stars", item_name_col="title"
        )
    )
    # Ids are opaque text by default (data.id_type).
    assert raw.frame.values.tolist() == [["1", "10", 4.5], ["2", "10", 1.0], ["2", "11", 0.0]]
    assert raw.item_names is not None
    assert raw.item_names.to_dict() == {"10": "Heat, The", "11": "Up"}


def test_table_tsv_without_weight_gz(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv.gz"
    pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"]}).to_csv(
        path, sep="\t", index=False, compression="gzip"
    )
    raw = load(TableSource(path=path), seed=0)
    assert raw.frame.values.tolist() == [["a", "x", 1.0], ["b", "y", 1.0]]
    assert raw.item_names is None


def test_table_explicit_format_and_sep(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("user;item;w\n1;2;3\n", encoding="utf-8")
    raw = load_table(TableSource(path=path, format="csv", sep=";", weight_col="w"))
    assert raw.frame.values.tolist() == [["1", "2", 3.0]]


def test_table_parquet(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame(
        {"u": [1, 2, 3], "i": [7, 8, 7], "w": [1.0, 2.0, 3.0], "n": ["a", "b", "a"]}
    ).to_parquet(path)
    raw = load_table(
        TableSource(path=path, user_col="u", item_col="i", weight_col="w", item_name_col="n")
    )
    assert raw.frame.values.tolist() == [["1", "7", 1.0], ["2", "8", 2.0], ["3", "7", 3.0]]
    assert raw.item_names is not None and raw.item_names.to_dict() == {"7": "a", "8": "b"}


def test_load_dispatches_synthetic() -> None:
    raw = load(SyntheticSource(n_users=20, n_items=10, n_interactions=50), seed=3)
    assert raw.source.startswith("synthetic")
    assert len(raw.frame) > 0


frames = st.integers(1, 40).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "user": st.lists(st.integers(0, 10**9), min_size=n, max_size=n),
            "item": st.lists(st.integers(0, 10**9), min_size=n, max_size=n),
            "weight": st.lists(
                st.floats(0, 1e6, allow_nan=False, allow_infinity=False), min_size=n, max_size=n
            ),
        }
    )
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=frames, fmt=st.sampled_from(["csv", "tsv", "parquet"]), integer=st.booleans())
def test_table_round_trip(
    tmp_path: Path, data: dict[str, list[float]], fmt: str, integer: bool
) -> None:
    """What a table file holds is what the loader returns, in every format: integer ids as
    their digits by default, as numbers with `id_type=integer`."""
    df = pd.DataFrame(data)
    path = tmp_path / f"t.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    id_type = "integer" if integer else "string"
    got = load_table(TableSource(path=path, weight_col="weight", id_type=id_type)).frame
    for c in ("user", "item"):
        want = df[c].to_numpy() if integer else df[c].astype(str).to_numpy()
        np.testing.assert_array_equal(got[c].to_numpy(), want)
    np.testing.assert_array_equal(got["weight"].to_numpy(), df["weight"].to_numpy())


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 30),
    bad=st.data(),
    kind=st.sampled_from(["-2", "", "abc", "inf"]),
    fmt=st.sampled_from(["csv", "parquet"]),
)
def test_bad_weight_names_its_row(
    tmp_path: Path, n: int, bad: st.DataObject, kind: str, fmt: str
) -> None:
    """The message names the first offending data row, whichever it is."""
    rows = sorted(bad.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=3)))
    weights = ["1"] * n
    for r in rows:
        weights[r] = kind
    path = tmp_path / f"t.{fmt}"
    df = pd.DataFrame({"user": range(n), "item": range(n), "w": weights})
    if fmt == "parquet":
        if kind == "abc":
            df.to_parquet(path)  # a string column in Parquet
        else:
            df.assign(w=pd.to_numeric(df["w"], errors="coerce")).to_parquet(path)
    else:
        df.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_table(TableSource(path=path, weight_col="w"))
    msg = _one_line(err)
    assert str(path) in msg and "'w'" in msg
    assert re.search(rf"\brow {rows[0] + 1}\b", msg), msg
    if len(rows) > 1:
        assert f"({len(rows)} rows in all)" in msg
    expected = {"-2": "negative weight -2", "": "missing weight", "abc": "'abc' is not a number"}
    assert expected.get(kind, "not finite") in msg


# --------------------------------------------------------------------------- bad input


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "user,item,w\n1,2,1\n3,4,-1\n",
            r"column 'w', data row 2 \(1-based, header not counted\): negative weight -1",
        ),
        ("user,item,w\n1,2,1\n3,4,\n", r"column 'w', data row 2 .*: missing weight"),
        ("user,item,w\n1,2,x\n3,4,1\n", r"column 'w', data row 1 .*: weight 'x' is not a number"),
        ("user,item,w\n1,2,1\n3,4,inf\n", r"column 'w', data row 2 .*: weight inf is not finite"),
        (
            "user,item,w\n1,2,1\n,4,1\n,5,1\n",
            r"column 'user', data row 2 .*: missing id \(2 rows in all\)",
        ),
        ("user,item,w\n1,2,1\n3,,1\n", r"column 'item', data row 2 .*: missing id"),
        ("user,item,w\n", r"no data rows"),
        ("", r"empty file"),
        ("\n\n", r"empty file"),
        ("user,thing,w\n1,2,3\n", r"column 'item' not found; columns found: 'user', 'thing', 'w'"),
        ("user,item,w\n1,2,3\n4,5,6,7,8\n", r"cannot parse: .*line 3"),
    ],
)
def test_bad_table(tmp_path: Path, text: str, expected: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as err:
        load_table(TableSource(path=path, weight_col="w"))
    msg = _one_line(err)
    assert msg.startswith(str(path)), msg
    assert re.search(expected, msg), msg


def test_missing_file_says_where(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "likes.psv"
    with pytest.raises(DataError) as err:
        load(SketchfabSource(path=path), seed=0)
    msg = _one_line(err)
    assert "file not found" in msg and f"looked for likes.psv in {path.parent}" in msg


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder"):
        load_table(TableSource(path=tmp_path, format="csv"))


def test_unknown_suffix(tmp_path: Path) -> None:
    path = _csv(tmp_path, "user,item\n1,2\n", name="t.dat")
    with pytest.raises(DataError) as err:
        load_table(TableSource(path=path))
    assert "data.format" in _one_line(err)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("user,item\ncafé,1\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_table(TableSource(path=path))
    assert "not valid utf-8 text at byte" in _one_line(err)


def test_sketchfab_missing_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "modelname|mid|user\nx|m|u\n", name="likes.psv")
    with pytest.raises(DataError) as err:
        load_sketchfab(path)
    msg = _one_line(err)
    assert "column 'uid' not found" in msg and "'modelname', 'mid', 'user'" in msg


def test_parquet_missing_column_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"user": [1], "thing": [2]}).to_parquet(path)
    with pytest.raises(DataError) as err:
        load_table(TableSource(path=path))
    assert "column 'item' not found; columns found: 'user', 'thing'" in _one_line(err)
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError) as err:
        load_table(TableSource(path=path))
    assert "not a readable Parquet file" in _one_line(err)


def test_parquet_missing_id_row(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"user": [1.0, 2.0, None], "item": [1, 2, 3]}).to_parquet(path)
    with pytest.raises(DataError) as err:
        load_table(TableSource(path=path))
    assert "column 'user', row 3 (1-based): missing id" in _one_line(err)


def _copy_dataset(data_dir: Path, name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(data_dir / name, dest)
    return dest


def test_movielens_100k_bad_rating_names_line(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy_dataset(data_dir, "ml-100k", tmp_path)
    lines = (folder / "u.data").read_text().splitlines()
    lines[4] = "1\t2\t-3\t881250949"
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_movielens_100k(folder)
    msg = _one_line(err)
    assert msg.startswith(str(folder / "u.data"))
    assert "field 3 (rating), line 5: negative weight -3" in msg


@pytest.mark.parametrize(
    ("name", "source", "drop"),
    [
        ("ml-100k", MovieLens100kSource, "u.item"),
        ("ml-latest-small", MovieLensLatestSmallSource, "ratings.csv"),
        ("lastfm-2k", Lastfm2kSource, "artists.dat"),
    ],
)
def test_dataset_missing_file_in_explicit_folder(
    data_dir: Path, tmp_path: Path, name: str, source: type, drop: str
) -> None:
    """An explicit folder lacking a file is reported there, never replaced by a download."""
    folder = _copy_dataset(data_dir, name, tmp_path)
    (folder / drop).unlink()
    with pytest.raises(DataError) as err:
        load(source(path=folder), seed=0)
    msg = _one_line(err)
    assert f"{folder / drop}: file not found (looked for {drop} in {folder})" in msg


def test_lastfm_missing_column(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy_dataset(data_dir, "lastfm-2k", tmp_path)
    plays = folder / "user_artists.dat"
    text = plays.read_text(encoding="utf-8").replace("weight", "plays", 1)
    plays.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_lastfm_2k(folder)
    msg = _one_line(err)
    assert "user_artists.dat: column 'weight' not found" in msg
    assert "columns found: 'userID', 'artistID', 'plays'" in msg


def test_table_ids_are_opaque_text_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("user,item\n007,1\n7,1\n3.0,2\n7,2\n", encoding="utf-8")
    frame = load_table(TableSource(path=path)).frame
    assert frame["user"].tolist() == ["007", "7", "3.0", "7"]  # three users, as written
    assert load(TableSource(path=path, id_type="integer"), seed=0).frame["user"].tolist() == [
        7,
        7,
        3,
        7,
    ]
    # Words pandas would read as missing are ids like any other; an empty field is missing.
    path.write_text("user,item,w\nNA,null,1\nnan,None,NaN\n", encoding="utf-8")
    got = load_table(TableSource(path=path)).frame
    assert got[["user", "item"]].values.tolist() == [["NA", "null"], ["nan", "None"]]
    with pytest.raises(DataError, match="missing weight"):
        load_table(TableSource(path=path, weight_col="w"))
    path.write_text("user,item\n7,1\n,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data row 2 .*: missing id"):
        load_table(TableSource(path=path))
    path.write_text("user,item\n7,1\nx7,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="id 'x7' is not an integer"):
        load_table(TableSource(path=path, id_type="integer"))


@pytest.mark.parametrize(
    "column",
    [
        [1.0, 2.0],
        pd.to_datetime(["2024-01-01", "2024-01-02"]),
        [[1], [2]],
    ],
    ids=["float", "timestamp", "list"],
)
def test_parquet_ids_of_other_types_are_refused(tmp_path: Path, column: object) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"user": column, "item": ["a", "b"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"column 'user' holds .* ids must be strings or integers"):
        load_table(TableSource(path=path))
