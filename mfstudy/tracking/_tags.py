"""Extra tags a caller puts on a study's runs (links to the orchestrator's run, say), checked
before any run is opened. Imports no MLflow: trial loggers carry these to worker processes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["MAX_TAG_KEY_LENGTH", "MAX_TAG_VALUE_LENGTH", "RESERVED_TAGS", "check_tags"]

#: MLflow's limits (`mlflow.utils.validation`: MAX_ENTITY_KEY_LENGTH, MAX_TAG_VAL_LENGTH),
#: restated so that checking costs no MLflow import; a test keeps them equal.
MAX_TAG_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 8000

#: Tags mfstudy sets and finds its runs by: a caller's value would break the look-ups.
RESERVED_TAGS = frozenset(
    {
        "mfstudy.study",
        "mfstudy.role",
        "mfstudy.trial_number",
        "mfstudy.state",
        "mlflow.parentRunId",
    }
)


def check_tags(tags: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> dict[str, str]:
    """`tags` as a dict of strings; ValueError for a reserved key, a non-string or an over-long
    key or value (MLflow would refuse them later, in the middle of a study)."""
    if tags is None:
        return {}
    items = tags.items() if isinstance(tags, Mapping) else tags
    out: dict[str, str] = {}
    for key, value in items:
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ValueError(f"run tag {key!r}: keys and values must be strings (got {value!r})")
        if key in RESERVED_TAGS:
            raise ValueError(f"run tag {key!r} is set by mfstudy itself")
        if len(key) > MAX_TAG_KEY_LENGTH or len(value) > MAX_TAG_VALUE_LENGTH:
            raise ValueError(
                f"run tag {key[:40]!r}: longer than MLflow takes ({MAX_TAG_KEY_LENGTH} characters "
                f"a key, {MAX_TAG_VALUE_LENGTH} a value)"
            )
        out[key] = value
    return out
