"""The data tasks' building blocks: the stages equal `prepare`, and the cache keys change
exactly when the input files or the relevant config change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from helpers import tiny_data
from mfstudy.config import load_config
from mfstudy.prepare import holdout_fingerprint, ingest, prepare, split_stage, threshold_stage
from tasks.data import data_cache_key


def _table(tmp_path: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"user": rng.integers(0, 80, rows), "item": rng.integers(0, 40, rows), "weight": 1.0}
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return path


def test_stages_chain_to_exactly_what_prepare_gives(tmp_path: Path) -> None:
    cfg = load_config(None, tiny_data(300, 150, 6_000))
    chained = split_stage(threshold_stage(ingest(cfg), cfg), cfg)
    ref = prepare(cfg)
    assert holdout_fingerprint(chained) == holdout_fingerprint(ref)
    assert (chained.full != ref.full).nnz == 0
    assert chained.stats == ref.stats


def test_cache_keys_follow_the_input_file_and_the_relevant_config(tmp_path: Path) -> None:
    path = _table(tmp_path, 2000)
    base = [f"data={{source: table, path: {path}}}"]
    cfg = load_config(None, base)
    keys = {s: data_cache_key(s, cfg) for s in ("ingest", "threshold", "split")}
    # The study budget changes nothing upstream of the split's stats.
    more = load_config(None, [*base, "study.n_trials=99"])
    assert data_cache_key("ingest", more) == keys["ingest"]
    assert data_cache_key("threshold", more) == keys["threshold"]
    # A threshold change re-runs thresholding and the split, not the ingest.
    thr = load_config(None, [*base, "threshold.min_items_per_user=3"])
    assert data_cache_key("ingest", thr) == keys["ingest"]
    assert data_cache_key("threshold", thr) != keys["threshold"]
    assert data_cache_key("split", thr) != keys["split"]
    # Grown data (same path, new bytes) re-runs everything.
    _table(tmp_path, 2500)
    assert all(data_cache_key(s, cfg) != k for s, k in keys.items())
