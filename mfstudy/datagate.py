"""The data gate of the nightly retraining: today's prepared data against the champion's.

Every registered version carries a *data card* (version tags, see :func:`card_tags`): what
it was trained on (rows read, users, items, interactions, interactions per user, the schema
read, the prepared data's fingerprint, the holdout's and the input files' checksum). Each
night, before anything is fitted, :func:`check_data` compares today's card (and ids) with
the champion's:

- **unchanged**: the same data fingerprint (which covers every interaction, weight and raw
  id, and the holdout): a retrained model would be the champion again, so nothing is fitted
  or registered;
- **gate failed**: more than `max_shrink` of the champion's users or interactions lost, more
  than `max_shrink` of its user or item ids absent today (even when as many new ones came:
  a re-keyed feed), or a schema change: a broken feed, not a change of taste; the champion
  is kept and nothing is registered;
- otherwise the retraining goes on (growth is the normal case).

Versions registered before cards were stored have none: their card is derived from the
model itself (its training matrix and raw ids, :func:`card_from_model`), which gives counts
and ids but no schema or fingerprint; the check says so.

No MLflow or Optuna here: the caller reads tags and computes fingerprints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "CARD_TAG",
    "DataCheck",
    "card_from_model",
    "card_from_tags",
    "card_tags",
    "check_data",
    "data_card",
]

#: Version tag holding the whole card as JSON; `CARD_TAG.<key>` tags repeat the headline
#: numbers for the registry UI.
CARD_TAG = "mfstudy.data"
_FLAT = ("rows_read", "users", "items", "interactions", "fingerprint", "input_checksum")
_QUANTILES = {"min": 0.0, "p10": 0.1, "p25": 0.25, "median": 0.5, "p75": 0.75, "p90": 0.9}


def per_user_counts(matrix: sp.csr_matrix) -> dict[str, float]:
    """Quantiles, max and mean of the interactions per user (rows of `matrix`)."""
    counts = np.diff(sp.csr_matrix(matrix).indptr).astype(np.float64)
    if len(counts) == 0:
        return {}
    q = np.quantile(counts, list(_QUANTILES.values()))
    out = {k: float(v) for k, v in zip(_QUANTILES, q, strict=True)}
    return {**out, "max": float(counts.max()), "mean": float(counts.mean())}


def data_card(
    *,
    full: sp.csr_matrix,
    stats: Mapping[str, Any],
    n_users: int,
    n_items: int,
    fingerprint: str,
    holdout: str,
    input_checksum: str,
) -> dict[str, Any]:
    """The card of prepared data (`full` is its users x items matrix, `stats` its stats)."""
    return {
        "rows_read": stats.get("rows_read"),
        "users": int(n_users),
        "items": int(n_items),
        "interactions": int(full.nnz),
        "per_user": per_user_counts(full),
        "schema": stats.get("schema"),
        "fingerprint": fingerprint,
        "holdout": holdout,
        "input_checksum": input_checksum,
    }


def card_from_model(seen: sp.csr_matrix, user_ids: np.ndarray, item_ids: np.ndarray) -> dict:
    """What a stored model tells about its training data (no card stored with it): counts and
    interactions per user from its training matrix; no rows read, schema or fingerprints."""
    return {
        "rows_read": None,
        "users": len(user_ids),
        "items": len(item_ids),
        "interactions": int(seen.nnz),
        "per_user": per_user_counts(seen),
        "schema": None,
        "fingerprint": None,
        "holdout": None,
        "input_checksum": None,
        "derived": True,
    }


def card_tags(card: Mapping[str, Any]) -> dict[str, str]:
    """Version tags holding `card`: the JSON under `mfstudy.data`, headline numbers flat."""
    tags = {CARD_TAG: json.dumps(card, sort_keys=True, separators=(",", ":"), default=str)}
    tags.update({f"{CARD_TAG}.{k}": str(card[k]) for k in _FLAT if card.get(k) is not None})
    return tags


def card_from_tags(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The card stored on a version, or None (registered before cards were stored)."""
    raw = tags.get(CARD_TAG)
    if not raw:
        return None
    try:
        card = json.loads(raw)
    except ValueError:
        return None  # cut or edited by hand: treated as absent, and said so
    return card if isinstance(card, dict) else None


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def _ids(ids: np.ndarray) -> set[str]:
    # As text: the registry's id maps and a fresh ingest may type the same ids differently.
    return set(np.asarray(ids).astype(str).tolist())


@dataclass(frozen=True)
class DataCheck:
    """The comparison of today's data with the champion's, and what the gate made of it."""

    champion: dict[str, Any]
    today: dict[str, Any]
    users_added: int
    users_removed: int
    items_added: int
    items_removed: int
    max_shrink: float
    problems: tuple[str, ...] = field(default=())
    unchanged: bool = False

    @property
    def derived(self) -> bool:
        """The champion's card was derived from its model (none stored)."""
        return bool(self.champion.get("derived"))

    @property
    def passed(self) -> bool:
        return not self.problems

    def note(self) -> str:
        """What could not be compared, for a champion without a stored card ('' otherwise)."""
        if not self.derived:
            return ""
        return (
            "the champion has no stored data summary (registered before summaries were "
            "stored): compared with what its model holds (users, items, interactions, ids); "
            "schema and fingerprint not checked"
        )

    def line(self, champion_version: str) -> str:
        """The gate's one line: what changed, by how much, and the outcome."""
        note = f" ({self.note()})" if self.derived else ""
        return (
            f"retrain gate: {'; '.join(self.problems)}; champion v{champion_version} kept, "
            f"nothing registered{note}"
        )

    def changes(self) -> dict[str, float]:
        """Champion's and today's numbers and the id turnover, flat (MLflow metrics)."""
        out: dict[str, float] = {}
        for key in ("rows_read", "users", "items", "interactions"):
            for side, card in (("champion", self.champion), ("today", self.today)):
                if card.get(key) is not None:
                    out[f"data.{side}.{key}"] = float(card[key])
        out.update(
            {
                "data.users_added": float(self.users_added),
                "data.users_removed": float(self.users_removed),
                "data.items_added": float(self.items_added),
                "data.items_removed": float(self.items_removed),
            }
        )
        return out

    def markdown(self) -> str:
        """A table of the champion's data against today's, with the id turnover."""

        def cell(card: Mapping[str, Any], key: str) -> str:
            v = card.get(key)
            return "?" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

        def change(key: str) -> str:
            old, new = self.champion.get(key), self.today.get(key)
            if old is None or new is None:
                return ""
            return f"{new - old:+d} ({(new - old) / old:+.1%})" if old else f"{new - old:+d}"

        rows = [
            f"| {label} | {cell(self.champion, key)} | {cell(self.today, key)} | {change(key)} |"
            for label, key in (
                ("rows read", "rows_read"),
                ("users", "users"),
                ("items", "items"),
                ("interactions", "interactions"),
            )
        ]
        med = [c.get("per_user", {}).get("median") for c in (self.champion, self.today)]
        rows.append(
            "| interactions per user (median) | "
            + " | ".join("?" if m is None else f"{m:g}" for m in med)
            + " | |"
        )
        text = (
            "| data | champion's | today's | change |\n|---|---|---|---|\n"
            + "\n".join(rows)
            + f"\n\nUsers: {self.users_added} added, {self.users_removed} removed. "
            f"Items: {self.items_added} added, {self.items_removed} removed.\n"
        )
        if self.derived:
            text += f"\nNote: {self.note()}.\n"
        return text


def check_data(
    champion: Mapping[str, Any],
    today: Mapping[str, Any],
    champion_ids: tuple[np.ndarray, np.ndarray],
    today_ids: tuple[np.ndarray, np.ndarray],
    max_shrink: float,
) -> DataCheck:
    """Compare today's card and (user, item) raw ids with the champion's; see the module
    docstring for the rules. A change of exactly `max_shrink` passes."""
    old_users, old_items = (_ids(x) for x in champion_ids)
    new_users, new_items = (_ids(x) for x in today_ids)
    turnover = {
        "users_added": len(new_users - old_users),
        "users_removed": len(old_users - new_users),
        "items_added": len(new_items - old_items),
        "items_removed": len(old_items - new_items),
    }
    base = {"champion": dict(champion), "today": dict(today), "max_shrink": max_shrink}
    fp = champion.get("fingerprint")
    if fp is not None and fp == today.get("fingerprint"):
        return DataCheck(**base, **turnover, unchanged=True)

    limit = f"more than retrain.max_shrink {_pct(max_shrink)}"
    problems: list[str] = []
    shrunk: set[str] = set()
    for key in ("users", "interactions"):
        old, new = champion.get(key), today.get(key)
        # Division, not multiplication: the boundary (exactly max_shrink) stays exact.
        if old and new is not None and (old - new) / old > max_shrink:
            problems.append(f"{key} {old} -> {new} ({(new - old) / old:+.1%}, {limit})")
            shrunk.add(key)
    for key, removed, total in (
        ("users", turnover["users_removed"], len(old_users)),
        ("items", turnover["items_removed"], len(old_items)),
    ):
        # Reported once: a shrink of the same users already says they are gone.
        if total and key not in shrunk and removed / total > max_shrink:
            problems.append(
                f"{key[:-1]} ids: {removed} of the champion's {total} absent today "
                f"({removed / total:.1%}, {limit})"
            )
    old_schema, new_schema = champion.get("schema"), today.get("schema")
    if old_schema is not None and new_schema is not None and old_schema != new_schema:
        a, b = _flat(old_schema), _flat(new_schema)
        keys = sorted(a.keys() | b.keys())
        diffs = [f"{k} {a.get(k)} -> {b.get(k)}" for k in keys if a.get(k) != b.get(k)]
        problems.append("schema changed: " + ", ".join(diffs))
    return DataCheck(**base, **turnover, problems=tuple(problems))
