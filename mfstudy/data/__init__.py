"""Reading interaction data: dataset loaders, the synthetic generator, cleaning and encoding,
and the checksum of a source's input files."""

from mfstudy.data._checksum import input_checksum, input_files
from mfstudy.data._download import (
    CACHE_DIR_ENV,
    DATASETS,
    DOWNLOAD_BASE_ENV,
    DatasetSpec,
    cache_dir,
    dataset_dir,
    download_dataset,
)
from mfstudy.data._interactions import CleanStats, Interactions, RawInteractions, clean
from mfstudy.data._loaders import (
    load,
    load_lastfm_2k,
    load_movielens_100k,
    load_movielens_latest_small,
    load_sketchfab,
    load_table,
)
from mfstudy.data._synthetic import generate_synthetic, planted_factors, popularity

__all__ = [
    "CACHE_DIR_ENV",
    "DATASETS",
    "DOWNLOAD_BASE_ENV",
    "CleanStats",
    "DatasetSpec",
    "Interactions",
    "RawInteractions",
    "cache_dir",
    "clean",
    "dataset_dir",
    "download_dataset",
    "generate_synthetic",
    "input_checksum",
    "input_files",
    "load",
    "load_lastfm_2k",
    "load_movielens_100k",
    "load_movielens_latest_small",
    "load_sketchfab",
    "load_table",
    "planted_factors",
    "popularity",
]
