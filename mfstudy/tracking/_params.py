"""A nested config as MLflow params: dotted keys, values clipped to MLflow's limits."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

__all__ = ["clip_param_key", "clip_param_value", "flatten"]

_ELLIPSIS = "..."


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def clip_param_key(key: str) -> str:
    """A key within MLflow's length limit (its tail kept: the leaf name is the informative part)."""
    k = str(key)
    if len(k) <= MAX_ENTITY_KEY_LENGTH:
        return k
    return _ELLIPSIS + k[-(MAX_ENTITY_KEY_LENGTH - len(_ELLIPSIS)) :]


def clip_param_value(value: Any) -> str:
    """The value as MLflow stores it (a string), truncated to MLflow's param limit."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = str(value)
    else:
        text = json.dumps(value, default=str, sort_keys=True)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - len(_ELLIPSIS)] + _ELLIPSIS
    return text
