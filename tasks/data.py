"""Data preparation tasks: ingest, threshold, split, each cached across flow runs.

A cache key is the sha256 of the input files (none for synthetic data) plus the config
sections the stage depends on, so a re-run with unchanged data and settings skips the stage
(its result is read from Prefect's result storage), while grown or edited input files or a
changed threshold re-run it and everything after it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from mfstudy.config import StudyConfig
from mfstudy.data import input_checksum
from mfstudy.prepare import Ingested, Prepared, Thresholded, ingest, split_stage, threshold_stage
from tasks._retry import unless_user_error

__all__ = ["data_cache_key", "ingest_task", "split_task", "threshold_task"]

# What each stage's output depends on, besides the input files. The split's stats embed the
# whole config (and the study name), so its key covers everything.
_SECTIONS: dict[str, tuple[str, ...] | None] = {
    "ingest": ("data", "seed"),
    "threshold": ("data", "seed", "threshold"),
    "split": None,
}


def data_cache_key(stage: str, cfg: StudyConfig) -> str:
    """`<stage>-<sha256>` of the input files' checksum and the config the stage depends on."""
    dumped = cfg.model_dump(mode="json")
    sections = _SECTIONS[stage]
    relevant = dumped if sections is None else {k: dumped[k] for k in sections}
    h = hashlib.sha256(input_checksum(cfg).encode())
    h.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    return f"mfstudy-{stage}-{h.hexdigest()[:32]}"


def _key(stage: str) -> Any:
    def key_fn(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        return data_cache_key(stage, parameters["cfg"])

    key_fn.__name__ = f"{stage}_cache_key"
    return key_fn


@task(
    name="ingest",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=unless_user_error,  # a download may pass next time; a wrong path not
    cache_key_fn=_key("ingest"),
    persist_result=True,
)
def ingest_task(cfg: StudyConfig) -> Ingested:
    """Read the configured source (downloading a public dataset if needed) and clean it."""
    out = ingest(cfg)
    get_run_logger().info(
        "ingested %s: %d rows read, %d duplicates dropped, %s",
        out.source,
        out.clean.rows_read,
        out.clean.duplicates_dropped,
        out.interactions.summary(),
    )
    return out


@task(name="threshold", cache_key_fn=_key("threshold"), persist_result=True)
def threshold_task(ingested: Ingested, cfg: StudyConfig) -> Thresholded:
    """Iterative k-core thresholding."""
    out = threshold_stage(ingested, cfg)
    get_run_logger().info("after thresholding: %s", out.interactions.summary())
    return out


@task(name="split", cache_key_fn=_key("split"), persist_result=True)
def split_task(thresholded: Thresholded, cfg: StudyConfig) -> Prepared:
    """The configured train/test split."""
    out = split_stage(thresholded, cfg)
    get_run_logger().info("split %s: %s", cfg.split.kind, out.stats["split"])
    return out
