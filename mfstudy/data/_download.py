"""Where the public datasets live on disk, and fetching them once when they are nowhere.

A dataset folder is resolved in this order, so a study never downloads what the user already has:

1. the explicit `path` of the data source, used as is (a missing file is reported there);
2. `$MFSTUDY_DATA_DIR/<folder>` when it holds every file the loader reads;
3. `$MFSTUDY_CACHE_DIR/<folder>` (default `~/.cache/mfstudy/<folder>`), downloading the official
   archive into it first when the files are not there yet.

A download is verified against a pinned sha256 before anything is extracted, and files reach the
cache only by rename from a temporary folder beside it, so an interrupted or corrupted download
never leaves a partial file that a later run would trust. The archive itself is not kept.

`DATASETS` is a module-level registry so tests (and mirrors) can point it elsewhere; the
`MFSTUDY_DOWNLOAD_BASE` environment variable replaces the host and folder of every archive URL
(the archive's file name is kept), for a local mirror of the official archives.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mfstudy.config import DATA_DIR_ENV
from mfstudy.errors import DataError, DownloadError

__all__ = [
    "CACHE_DIR_ENV",
    "DATASETS",
    "DOWNLOAD_BASE_ENV",
    "DatasetSpec",
    "cache_dir",
    "dataset_dir",
    "download_dataset",
]

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "MFSTUDY_CACHE_DIR"
DOWNLOAD_BASE_ENV = "MFSTUDY_DOWNLOAD_BASE"
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetSpec:
    """One public dataset: its folder name, official archive and the files the loader reads."""

    name: str
    """The data source tag in the study config (`movielens-100k`, ...)."""
    folder: str
    """Folder name under `$MFSTUDY_DATA_DIR` and the cache (`ml-100k`, ...)."""
    url: str
    sha256: str
    files: tuple[str, ...]
    """Files the loader needs; only these are extracted."""
    member_prefix: str = ""
    """Folder of those files inside the archive (`ml-100k/`), empty for the archive root."""

    def download_url(self) -> str:
        base = os.environ.get(DOWNLOAD_BASE_ENV, "").strip()
        if not base:
            return self.url
        return base.rstrip("/") + "/" + self.url.rsplit("/", 1)[-1]


# Checksums as pinned by tensorflow_datasets (url_checksums) and OmniRec for the same archives.
DATASETS: dict[str, DatasetSpec] = {
    "movielens-100k": DatasetSpec(
        name="movielens-100k",
        folder="ml-100k",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        files=("u.data", "u.item"),
        member_prefix="ml-100k/",
    ),
    "movielens-latest-small": DatasetSpec(
        name="movielens-latest-small",
        folder="ml-latest-small",
        url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        files=("ratings.csv", "movies.csv"),
        member_prefix="ml-latest-small/",
    ),
    "lastfm-2k": DatasetSpec(
        name="lastfm-2k",
        folder="lastfm-2k",
        url="https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        sha256="6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c",
        files=("user_artists.dat", "artists.dat"),
        member_prefix="",
    ),
}


def cache_dir() -> Path:
    """`$MFSTUDY_CACHE_DIR`, else `~/.cache/mfstudy` (not created here)."""
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mfstudy"


def _holds(folder: Path, files: tuple[str, ...]) -> bool:
    return all((folder / f).is_file() for f in files)


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}: expected one of {known}") from None


def dataset_dir(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """The folder to read dataset `name` from, downloading it into the cache if needed.

    An explicit `path` is returned unchanged, so a missing file is reported by the loader
    against the folder the user named rather than silently replaced by a download; only a
    `path` naming a file (not a folder) is refused here. `$MFSTUDY_DATA_DIR` naming a file is
    refused too: it is a mistake, not a data folder that merely lacks this dataset.
    """
    if path is not None:
        folder = Path(path).expanduser()
        if folder.exists() and not folder.is_dir():
            raise DataError(
                f"data.path {folder}: is a file, expected the folder holding "
                f"{', '.join(_spec(name).files)}"
            )
        return folder
    spec = _spec(name)
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        root = Path(env).expanduser()
        if root.exists() and not root.is_dir():
            raise DataError(
                f"${DATA_DIR_ENV}={env}: is a file, expected a folder holding {spec.folder}/ "
                f"with {', '.join(spec.files)}"
            )
        candidate = root / spec.folder
        if _holds(candidate, spec.files):
            return candidate
    cached = cache_dir() / spec.folder
    if _holds(cached, spec.files):
        return cached
    return download_dataset(name, cache_dir())


def _where_to_put(spec: DatasetSpec, root: Path) -> str:
    files = ", ".join(spec.files)
    return (
        f"without network, put {files} into {root / spec.folder} or into ${DATA_DIR_ENV}/"
        f"{spec.folder} (or set data.path to the folder holding them)"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _fetch(url: str, out: Path) -> str:
    """Stream `url` into `out`; return the sha256 of what was written."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, out.open("wb") as fh:
        while block := resp.read(_CHUNK):
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


def _extract(spec: DatasetSpec, archive: Path, into: Path) -> None:
    """Copy only the needed members into `into` (never `extractall`: no path traversal)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for f in spec.files:
                member = spec.member_prefix + f
                if member not in names:
                    raise DataError(f"{spec.url}: archive has no member {member!r}")
                with zf.open(member) as src, (into / f).open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{spec.url}: not a valid zip archive ({exc})") from None


def _install(spec: DatasetSpec, staged: Path, final: Path) -> None:
    """Move the staged files into `final` by rename: whole folder when new, else file by file."""
    if not final.exists():
        try:
            staged.rename(final)
            return
        except OSError:
            # Another process won the race and created `final`; fall through to per-file moves.
            pass
    final.mkdir(parents=True, exist_ok=True)
    for f in spec.files:
        os.replace(staged / f, final / f)


def download_dataset(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Download, verify and extract dataset `name` into `root/<folder>`; return that folder.

    Raises DataError (one line) when the download fails, naming the files to put where by hand,
    and when the checksum does not match, naming both digests; in both cases nothing is left in
    the cache.
    """
    spec = _spec(name)
    root_dir = Path(root).expanduser() if root is not None else cache_dir()
    url = spec.download_url()
    final = root_dir / spec.folder
    try:
        root_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{spec.name}: cannot create the cache folder {root_dir} ({_reason(exc)}); "
            f"set ${CACHE_DIR_ENV} to a writable folder, or {_where_to_put(spec, root_dir)}"
        ) from None

    log.info("downloading %s from %s", spec.name, url)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.folder}-", suffix=".zip.part", dir=root_dir)
    os.close(fd)
    archive = Path(tmp_name)
    staged: Path | None = None
    try:
        try:
            actual = _fetch(url, archive)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise DownloadError(
                f"{spec.name}: download of {url} failed ({_reason(exc)}); "
                + _where_to_put(spec, root_dir)
            ) from None
        if actual != spec.sha256:
            raise DataError(
                f"{spec.name}: checksum mismatch for {url}: expected sha256 {spec.sha256}, "
                f"got {actual}; nothing was kept"
            )
        staged = Path(tempfile.mkdtemp(prefix=f".{spec.folder}-", dir=root_dir))
        _extract(spec, archive, staged)
        _install(spec, staged, final)
    finally:
        archive.unlink(missing_ok=True)
        if staged is not None and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    log.info("%s ready in %s", spec.name, final)
    return final
