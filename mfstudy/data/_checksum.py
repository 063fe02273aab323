"""The input files a study's data source reads, and one checksum over their bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mfstudy.config import DataSource, StudyConfig
from mfstudy.data._download import DATASETS, dataset_dir

__all__ = ["input_checksum", "input_files"]


def input_files(source: DataSource) -> list[Path]:
    """The files a source reads (none for synthetic data); may download a public dataset."""
    if source.source == "synthetic":
        return []
    if source.source in ("sketchfab", "table"):
        return [Path(source.path)]  # type: ignore[union-attr]
    spec = DATASETS[source.source]
    folder = dataset_dir(source.source, source.path)  # type: ignore[union-attr]
    return [folder / f for f in spec.files]


def input_checksum(cfg: StudyConfig) -> str:
    """sha256 over the bytes of every input file, so a cache keyed by it notices new data."""
    h = hashlib.sha256()
    for path in input_files(cfg.data):
        h.update(path.name.encode())
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError:
            h.update(b"<missing>")  # the ingest step reports the file properly
    return h.hexdigest()
