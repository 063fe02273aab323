"""Dataset folder resolution and downloads, against a real HTTP server on 127.0.0.1.

The archives are small zips built here with the official layout; the real URLs are never hit
(the autouse fixture in conftest.py points every download at a closed local port).
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import zipfile
from pathlib import Path

import pytest

from mfstudy.config import DATA_DIR_ENV, Lastfm2kSource, MovieLens100kSource
from mfstudy.data import (
    DATASETS,
    DOWNLOAD_BASE_ENV,
    dataset_dir,
    download_dataset,
    load,
)
from mfstudy.errors import DataError

U_DATA = "1\t10\t4\t881250949\n2\t10\t5\t881250950\n2\t11\t1\t881250951\n"
U_ITEM = "10|Toy Story (1995)|01-Jan-1995||http://x|0\n11|Caf\xe9 (1995)|01-Jan-1995||http://y|0\n"
USER_ARTISTS = "userID\tartistID\tweight\r\n2\t51\t13883\r\n3\t51\t7\r\n"
ARTISTS = "id\tname\turl\tpictureURL\r\n51\tRöyksopp\thttp://a\thttp://b\r\n"


def _zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ml100k_zip(root: Path) -> str:
    """`ml-100k.zip` in `root` with the official layout; returns its sha256."""
    return _zip(
        root / "ml-100k.zip",
        {
            "ml-100k/u.data": U_DATA.encode(),
            "ml-100k/u.item": U_ITEM.encode("latin-1"),
            "ml-100k/README": b"not extracted",
        },
    )


def _pin(monkeypatch: pytest.MonkeyPatch, name: str, **changes: str) -> None:
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], **changes))


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "empty-data-dir"))


@pytest.mark.usefixtures("no_data_dir")
def test_download_verify_extract_then_reuse(
    http_root: tuple[Path, str], _offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, base = http_root
    _pin(monkeypatch, "movielens-100k", sha256=_ml100k_zip(www))
    monkeypatch.setenv(DOWNLOAD_BASE_ENV, base)

    raw = load(MovieLens100kSource(), seed=0)
    assert raw.frame.values.tolist() == [[1, 10, 4.0], [2, 10, 5.0], [2, 11, 1.0]]
    assert raw.item_names is not None
    assert raw.item_names.to_dict() == {10: "Toy Story (1995)", 11: "Café (1995)"}
    # Only the needed files, in their folder; no archive, temp file or folder left behind.
    assert _tree(_offline_cache) == ["ml-100k", "ml-100k/u.data", "ml-100k/u.item"]
    assert (_offline_cache / "ml-100k" / "u.data").read_text() == U_DATA

    # Second load: served from the cache, even with the server gone.
    (www / "ml-100k.zip").unlink()
    assert dataset_dir("movielens-100k") == _offline_cache / "ml-100k"
    assert len(load(MovieLens100kSource(), seed=0).frame) == 3


@pytest.mark.usefixtures("no_data_dir")
def test_download_from_registry_url_archive_root(
    http_root: tuple[Path, str], _offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry URL is used when no base override is set; lastfm files sit at the root."""
    www, base = http_root
    sha = _zip(
        www / "lastfm.zip",
        {"user_artists.dat": USER_ARTISTS.encode(), "artists.dat": ARTISTS.encode("utf-8")},
    )
    _pin(monkeypatch, "lastfm-2k", url=f"{base}/lastfm.zip", sha256=sha)
    monkeypatch.delenv(DOWNLOAD_BASE_ENV)
    raw = load(Lastfm2kSource(), seed=0)
    assert raw.frame.values.tolist() == [[2, 51, 13883.0], [3, 51, 7.0]]
    assert raw.item_names is not None and raw.item_names.loc[51] == "Röyksopp"
    assert _tree(_offline_cache) == [
        "lastfm-2k",
        "lastfm-2k/artists.dat",
        "lastfm-2k/user_artists.dat",
    ]


@pytest.mark.usefixtures("no_data_dir")
def test_checksum_mismatch_keeps_nothing(
    http_root: tuple[Path, str], _offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, base = http_root
    actual = _ml100k_zip(www)
    expected = DATASETS["movielens-100k"].sha256  # the official archive's, not ours
    monkeypatch.setenv(DOWNLOAD_BASE_ENV, base)
    with pytest.raises(DataError) as err:
        load(MovieLens100kSource(), seed=0)
    msg = str(err.value)
    assert "\n" not in msg
    assert "checksum mismatch" in msg and f"expected sha256 {expected}" in msg
    assert f"got {actual}" in msg
    assert _tree(_offline_cache) == []


@pytest.mark.usefixtures("no_data_dir")
def test_unreachable_server_says_what_to_put_where(
    _offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()  # bound then released: nothing listens there
    monkeypatch.setenv(DOWNLOAD_BASE_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(DataError) as err:
        load(MovieLens100kSource(), seed=0)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"download of http://127.0.0.1:{port}/ml-100k.zip failed" in msg
    assert f"put u.data, u.item into {_offline_cache / 'ml-100k'}" in msg
    assert f"${DATA_DIR_ENV}/ml-100k" in msg
    assert _tree(_offline_cache) == []


@pytest.mark.usefixtures("no_data_dir")
def test_http_error(
    http_root: tuple[Path, str], _offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base = http_root
    monkeypatch.setenv(DOWNLOAD_BASE_ENV, base)  # nothing served: 404
    with pytest.raises(DataError, match=r"failed \(HTTP 404 .*\); without network, put"):
        load(MovieLens100kSource(), seed=0)
    assert _tree(_offline_cache) == []


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ({"ml-100k/u.data": b"1\t2\t3\t4\n"}, "archive has no member 'ml-100k/u.item'"),
        (None, "not a valid zip archive"),
    ],
)
def test_bad_archive_keeps_nothing(
    http_root: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    members: dict[str, bytes] | None,
    expected: str,
) -> None:
    www, base = http_root
    archive = www / "ml-100k.zip"
    if members is None:
        archive.write_bytes(b"this is not a zip file")
        sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    else:
        sha = _zip(archive, members)
    _pin(monkeypatch, "movielens-100k", sha256=sha)
    monkeypatch.setenv(DOWNLOAD_BASE_ENV, base)
    root = tmp_path / "explicit-root"
    with pytest.raises(DataError, match=expected):
        download_dataset("movielens-100k", root)
    assert _tree(root) == []


def test_data_dir_env_wins_over_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data" / "ml-100k"
    data.mkdir(parents=True)
    (data / "u.data").write_text(U_DATA)
    (data / "u.item").write_text(U_ITEM, encoding="latin-1")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    assert dataset_dir("movielens-100k") == data
    assert len(load(MovieLens100kSource(), seed=0).frame) == 3


def test_incomplete_data_dir_falls_through_to_cache(
    tmp_path: Path, _offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$MFSTUDY_DATA_DIR lacking a file is skipped; a complete cache folder is used."""
    data = tmp_path / "data" / "ml-100k"
    data.mkdir(parents=True)
    (data / "u.data").write_text(U_DATA)
    cached = _offline_cache / "ml-100k"
    cached.mkdir(parents=True)
    (cached / "u.data").write_text(U_DATA)
    (cached / "u.item").write_text(U_ITEM, encoding="latin-1")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    assert dataset_dir("movielens-100k") == cached


def test_explicit_path_is_never_replaced(tmp_path: Path) -> None:
    assert dataset_dir("lastfm-2k", tmp_path / "mine") == tmp_path / "mine"


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'ml-1m'"):
        dataset_dir("ml-1m")


def test_registry_pins_official_archives() -> None:
    """Guard the pinned URLs and checksums against accidental edits."""
    pins = {n: (s.url.rsplit("/", 1)[-1], s.sha256[:12]) for n, s in DATASETS.items()}
    assert pins == {
        "movielens-100k": ("ml-100k.zip", "50d2a982c669"),
        "movielens-latest-small": ("ml-latest-small.zip", "696d65a3dfce"),
        "lastfm-2k": ("hetrec2011-lastfm-2k.zip", "6738f4819566"),
    }
    assert all(s.url.startswith("https://files.grouplens.org/datasets/") for s in DATASETS.values())
