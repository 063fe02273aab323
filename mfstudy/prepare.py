"""The data half of a study: ingest, de-duplicate, threshold, encode and split.

`prepare(cfg)` does the work in memory; `write_prepared` saves it atomically (a half-written
output folder never appears under its final name) and `read_prepared` loads it back.
`holdout_fingerprint` and `data_fingerprint` identify a split and the prepared data: scores are
compared only on the same holdout, and a study resumes only on the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfstudy.config import StudyConfig
from mfstudy.data import CleanStats, Interactions, clean, load
from mfstudy.errors import DataError
from mfstudy.secrets import public_config
from mfstudy.split import HoldoutSplit, NewUserSplit, RandomSplit, make_split
from mfstudy.thresholding import ThresholdStats, threshold

__all__ = [
    "Ingested",
    "Prepared",
    "Thresholded",
    "check_output_folder",
    "data_fingerprint",
    "holdout_fingerprint",
    "ingest",
    "prepare",
    "read_prepared",
    "read_schema",
    "split_stage",
    "threshold_stage",
    "write_prepared",
]


@dataclass(frozen=True)
class Prepared:
    """Everything a study trains and evaluates on.

    `train` and `test` always exist; `foldin` only for the new-user split. `users` are the rows
    evaluated on the test matrix (held-out or new users; every user with a test entry for the
    random split).
    """

    interactions: Interactions
    full: sp.csr_matrix
    train: sp.csr_matrix
    test: sp.csr_matrix
    users: np.ndarray
    foldin: sp.csr_matrix | None
    stats: dict[str, Any]


# ----------------------------------------------------------------------------- stages
# The three steps of `prepare`, separately, so an orchestrator can cache each (the Prefect
# tasks key them by input checksum and the config sections they read).


@dataclass(frozen=True)
class Ingested:
    """Read and cleaned interactions (duplicates dropped, repeated pairs merged, encoded)."""

    interactions: Interactions
    source: str
    clean: CleanStats
    schema: dict[str, Any] | None = None
    """What was read: source kind, the columns the config names and the dtypes the ids and
    weights were loaded as (see :func:`read_schema`); the nightly retraining's gate compares it
    with the champion's."""


@dataclass(frozen=True)
class Thresholded:
    """The k-core of the ingested interactions."""

    ingested: Ingested
    interactions: Interactions
    stats: ThresholdStats


def ingest(cfg: StudyConfig) -> Ingested:
    """Load the configured source and clean it."""
    raw = load(cfg.data, seed=cfg.seed)
    inter, cstats = clean(raw, cfg.data.weighting)
    return Ingested(inter, raw.source, cstats, read_schema(cfg, raw.frame, raw.item_names))


def read_schema(
    cfg: StudyConfig, frame: pd.DataFrame, item_names: pd.Series | None
) -> dict[str, Any]:
    """The shape of what a source delivered: its kind, the column settings of the config
    (`*_col`, `id_type`, `format`, `sep` where the source has them), the dtypes the user and
    item ids and the weights were loaded as, and whether item names came with them.

    A feed whose ids turned from numbers into text (or whose weight column was dropped) is
    then a visible schema change rather than a silent re-coding of every id.
    """
    settings = cfg.data.model_dump(mode="json")
    columns = {
        k: v for k, v in settings.items() if k.endswith("_col") or k in ("id_type", "format", "sep")
    }
    return {
        "source": cfg.data.source,
        "columns": columns,
        "dtypes": {c: str(frame[c].dtype) for c in ("user", "item", "weight") if c in frame},
        "item_names": item_names is not None,
    }


def threshold_stage(ingested: Ingested, cfg: StudyConfig) -> Thresholded:
    """Iterative k-core thresholding with the configured minimums."""
    kept, tstats = threshold(
        ingested.interactions, cfg.threshold.min_items_per_user, cfg.threshold.min_users_per_item
    )
    return Thresholded(ingested, kept, tstats)


def split_stage(thresholded: Thresholded, cfg: StudyConfig) -> Prepared:
    """The configured split of the thresholded interactions, with the run's statistics."""
    kept, ing = thresholded.interactions, thresholded.ingested
    if cfg.evaluation.k > kept.n_items:
        # Every ranking metric would count items that do not exist; say so before splitting.
        raise DataError(
            f"evaluation.k={cfg.evaluation.k} is larger than the catalogue: "
            f"{kept.n_items:,} items after thresholding"
        )
    full = kept.to_csr()
    split = make_split(full, cfg.split, seed=cfg.seed)
    foldin: sp.csr_matrix | None = None
    if isinstance(split, HoldoutSplit):
        users = split.users
    elif isinstance(split, NewUserSplit):
        users, foldin = split.new_users, split.foldin
    elif isinstance(split, RandomSplit):
        users = np.flatnonzero(np.diff(split.test.indptr))
    else:  # pragma: no cover - make_split only returns the three kinds
        raise TypeError(type(split))
    stats: dict[str, Any] = {
        "name": cfg.name,
        "seed": cfg.seed,
        "source": ing.source,
        "schema": ing.schema,
        "rows_read": ing.clean.rows_read,
        "duplicates_dropped": ing.clean.duplicates_dropped,
        "before_threshold": ing.interactions.summary(),
        "after_threshold": kept.summary(),
        "threshold": thresholded.stats.to_dict(),
        "split": {"kind": cfg.split.kind, **split.summary(), "evaluated_users": len(users)},
        "config": public_config(cfg.model_dump(mode="json")),  # no credentials in stats.json
    }
    return Prepared(kept, full, split.train, split.test, np.asarray(users, np.int64), foldin, stats)


def prepare(cfg: StudyConfig) -> Prepared:
    """Run ingest -> clean -> threshold -> split for `cfg`; every random choice from `cfg.seed`."""
    return split_stage(threshold_stage(ingest(cfg), cfg), cfg)


def holdout_fingerprint(prepared: Prepared) -> str:
    """Identifies the train/test split, so scores are only compared on the same holdout."""
    h = hashlib.sha256()
    for m in (prepared.train, prepared.test):
        h.update(np.asarray(m.shape, np.int64).tobytes())
        h.update(m.indptr.tobytes())
        h.update(m.indices.tobytes())
    h.update(prepared.users.tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(prepared: Prepared) -> str:
    """Identifies the prepared data itself: every interaction with its weight, the raw ids
    behind the rows and columns, and the holdout. Equal fingerprints mean a model trained and
    scored on either would be the same model with the same score."""
    h = hashlib.sha256(holdout_fingerprint(prepared).encode())
    full = prepared.full
    h.update(np.asarray(full.shape, np.int64).tobytes())
    for part in (full.indptr, full.indices, full.data):
        h.update(np.ascontiguousarray(part).tobytes())
    for ids in (prepared.interactions.user_ids, prepared.interactions.item_ids):
        h.update("\x1f".join(map(str, np.asarray(ids).tolist())).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def write_prepared(p: Prepared, out: str | os.PathLike[str]) -> Path:
    """Write matrices (`.npz`), id maps (CSV), evaluated users and `stats.json` into `out`.

    Files go to a temporary sibling folder first, which replaces `out` only once complete.
    Only a folder mfstudy wrote (marked by `.mfstudy-prepared`) or an empty one is replaced:
    anything else is a user's, and a :class:`DataError` says so before a file is written.
    """
    out = Path(out)
    check_output_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # mkdir, not mkdtemp: the folder gets the user's umask (mkdtemp's is 0700, which the
        # rename would hand on to `out`).
        tmp = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise DataError(f"{out}: cannot write the output folder ({exc.strerror})") from None
    try:
        (tmp / MARKER).write_text("Written by mfstudy prepare; replaced on the next write.\n")
        for name, m in (
            ("full", p.full),
            ("train", p.train),
            ("test", p.test),
            ("foldin", p.foldin),
        ):
            if m is not None:
                sp.save_npz(tmp / f"{name}.npz", m.tocsr())
        pd.DataFrame(
            {"index": np.arange(p.interactions.n_users), "user_id": p.interactions.user_ids}
        ).to_csv(tmp / "users.csv", index=False)
        items = pd.DataFrame(
            {"index": np.arange(p.interactions.n_items), "item_id": p.interactions.item_ids}
        )
        if p.interactions.item_names is not None:
            items["name"] = p.interactions.item_names
        items.to_csv(tmp / "items.csv", index=False)
        np.save(tmp / "users_evaluated.npy", p.users)
        (tmp / "stats.json").write_text(json.dumps(p.stats, indent=2, default=_json_default))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


#: Marks a folder `write_prepared` wrote, so it may replace it; no other folder is replaced.
MARKER = ".mfstudy-prepared"
#: What `write_prepared` writes: a folder holding only these (written before the marker
#: existed) is mfstudy's too.
_WRITTEN = frozenset(
    ["full.npz", "train.npz", "test.npz", "foldin.npz", "users.csv", "items.csv",
     "users_evaluated.npy", "stats.json", MARKER]
)  # fmt: skip


def check_output_folder(out: Path) -> None:
    """Raise :class:`DataError` unless `write_prepared` may write (and replace) `out`: a new
    or empty folder, or one holding only what mfstudy writes there (with its marker, or, from
    before the marker existed, a complete prepared folder whose `stats.json` is mfstudy's).
    Any other file in it is a user's, and would be deleted by the replacement."""
    if out.is_symlink():
        # Replacing it would swap the link for a folder and leave the target unwritten.
        raise DataError(f"{out}: is a symbolic link; give the folder it points to")
    if out.exists() and not out.is_dir():
        # It would be moved aside and never removed (rmtree skips files).
        raise DataError(f"{out}: exists and is not a folder; choose another output folder")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise DataError(
            f"{out}: is the current folder or holds it, and would be replaced; choose a new "
            "output folder"
        )
    if not out.is_dir():
        return
    try:
        names = {p.name for p in out.iterdir()}
    except OSError as exc:
        raise DataError(f"{out}: cannot read the output folder ({exc.strerror})") from None
    if not names:
        return
    foreign = sorted(names - _WRITTEN)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise DataError(
            f"{out}: holds files mfstudy did not write ({shown}); choose a new or empty output "
            "folder"
        )
    if MARKER not in names and not _written_before_the_marker(out, names):
        raise DataError(
            f"{out}: exists, is not empty and was not written by mfstudy (no {MARKER}); "
            "choose a new or empty output folder"
        )


def _written_before_the_marker(out: Path, names: set[str]) -> bool:
    """A complete prepared folder from before the marker: its matrices, and a `stats.json`
    with the statistics `split_stage` writes (a stray file of the same name has not)."""
    if not {"full.npz", "train.npz", "test.npz", "stats.json"} <= names:
        return False
    try:
        stats = json.loads((out / "stats.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and {"split", "after_threshold", "seed"} <= set(stats)


def _replace_dir(src: Path, dst: Path) -> None:
    # rename() is atomic for a new name; an existing folder is moved aside first so a reader
    # never sees a mix of old and new files.
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _ids_as_written(text: pd.Series) -> np.ndarray:
    """Raw ids read back as text, then as integers only if every one is an integer's own
    spelling: integer ids (the public datasets) come back as the numbers they were, and text
    ids (`007`, `3.0`) exactly as written, never merged or re-spelled by type inference."""
    values = text.to_numpy(dtype=object)
    canonical = text.str.fullmatch(r"0|-?[1-9][0-9]{0,17}").all()  # not `-0`, not `007`
    return values.astype(np.int64) if canonical and len(values) else values


def read_prepared(folder: str | os.PathLike[str]) -> Prepared:
    """Load what `write_prepared` wrote."""
    d = Path(folder)
    if not (d / "stats.json").is_file():
        raise DataError(f"{d}: not a prepared folder (no stats.json); run `mfstudy prepare` first")
    stats = json.loads((d / "stats.json").read_text())
    users = pd.read_csv(d / "users.csv", keep_default_na=False, dtype={"user_id": str})
    items = pd.read_csv(d / "items.csv", keep_default_na=False, dtype={"item_id": str})
    full = sp.load_npz(d / "full.npz").tocsr()
    coo = full.tocoo()
    inter = Interactions(
        users=coo.row.astype(np.int32),
        items=coo.col.astype(np.int32),
        weights=coo.data.astype(np.float32),
        user_ids=_ids_as_written(users["user_id"]),
        item_ids=_ids_as_written(items["item_id"]),
        item_names=items["name"].astype(str).to_numpy(dtype=object) if "name" in items else None,
    )
    foldin = sp.load_npz(d / "foldin.npz").tocsr() if (d / "foldin.npz").exists() else None
    return Prepared(
        interactions=inter,
        full=full,
        train=sp.load_npz(d / "train.npz").tocsr(),
        test=sp.load_npz(d / "test.npz").tocsr(),
        users=np.load(d / "users_evaluated.npy"),
        foldin=foldin,
        stats=stats,
    )
