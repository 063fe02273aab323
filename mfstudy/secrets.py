"""Keeping credentials out of everything mfstudy writes or prints.

Two mechanisms, both applied to the two settings that may carry credentials (`study.storage`
and `tracking.uri`):

- **References, resolved only when connecting.** A config may write `${NAME}` for an
  environment variable, e.g. `study.storage: postgresql://optuna:${OPTUNA_DB_PASSWORD}@db/optuna`.
  The config, and everything made from it (logged parameters, `stats.json`, Prefect flow-run
  parameters, cached results), keeps the reference; :func:`resolve_env` fills it in only where a
  connection is opened. (MLflow's own `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`/
  `MLFLOW_TRACKING_TOKEN` and libpq's `PGPASSWORD`/`~/.pgpass` need no reference at all.)
- **Redaction, wherever a location is shown or stored.** :func:`redact_uri` drops a literal
  `user:password@`, the query (`?password=...`, tokens) and the fragment, so a password typed
  into a config still never reaches a log line, a parameter or a file.
"""

from __future__ import annotations

import os
import re
from typing import Any

from mfstudy.errors import ConfigError

__all__ = ["public_config", "redact_uri", "resolve_env", "scrub"]

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: The config keys that may hold credentials: (section, key).
SECRET_KEYS = (("study", "storage"), ("tracking", "uri"))


def resolve_env(value: str, key: str) -> str:
    """`value` with every `${NAME}` replaced by the environment variable NAME; a one-line
    :class:`ConfigError` naming `key` and the variable when it is not set. Call only where a
    connection is opened, and never store or print the result."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        found = os.environ.get(name)
        if found is None:
            raise ConfigError(f"{key}: environment variable {name} is not set")
        return found

    return _REFERENCE.sub(fill, value)


def redact_uri(uri: str) -> str:
    """`uri` without its secrets, fit to store and print: `scheme://host:port/path`.

    Drops everything up to the last `@` of the authority (`user:password@`, even a password
    holding `/` or `@`), the query (`?password=...`, tokens) and the fragment; what is left
    still names the location (server or database file). Parsed by hand rather than with
    `urlsplit`, which gives up on a malformed port and reads `u:12/pw@host` as port 12."""
    if "://" not in uri:
        return uri  # a file path or a profile name such as `databricks`: nothing to hide
    scheme, rest = uri.split("://", 1)
    rest = rest.split("#", 1)[0].split("?", 1)[0]
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
    return f"{scheme}://{rest}"


#: `scheme://userinfo@` inside free text (an error message quoting a URL).
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s@'\"]*@")
#: Query parameters that carry credentials.
_SECRET_PARAM = re.compile(
    r"([?&;](?:password|passwd|pwd|pass|token|access_token|secret|api_key|apikey|key)=)"
    r"[^&;\s'\"]*",
    re.IGNORECASE,
)


def scrub(text: str) -> str:
    """`text` (an error message, a log line) with any `user:password@` of a URL it quotes and
    any password-like query value replaced: libraries quote the URL they failed on."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1", text))


def public_config(dumped: dict[str, Any]) -> dict[str, Any]:
    """A config dump (`cfg.model_dump(mode="json")`) with its credential-bearing locations
    redacted: what may be logged, stored in `stats.json` or shown."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in dumped.items()}
    for section, key in SECRET_KEYS:
        value = out.get(section, {}).get(key)
        if isinstance(value, str):
            out[section][key] = redact_uri(value)
    return out
