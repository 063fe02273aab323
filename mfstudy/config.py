"""Study configuration: one pydantic model per component, loaded from YAML.

Every model forbids unknown keys, so a typo in a config file is an error that names the key
instead of a silently ignored setting. Field docstrings are the reference documentation of the
YAML format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from mfstudy.errors import ConfigError

__all__ = [
    "DATA_DIR_ENV",
    "DataSource",
    "EvaluationConfig",
    "Lastfm2kSource",
    "MovieLens100kSource",
    "MovieLensLatestSmallSource",
    "NewUserSplitConfig",
    "RandomSplitConfig",
    "RetrainSettings",
    "ScheduleSettings",
    "SketchfabSource",
    "SplitConfig",
    "StudyConfig",
    "SyntheticSource",
    "TableSource",
    "ThresholdConfig",
    "UserHoldoutSplitConfig",
    "Weighting",
    "apply_overrides",
    "check_cron",
    "check_timezone",
    "format_validation_error",
    "load_config",
]

DATA_DIR_ENV = "MFSTUDY_DATA_DIR"
#: Seeds reach NumPy's and numba's generators (`np.random.seed`), which take 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
#: Sane upper bounds, whatever the machine: each worker is a process holding the data, and
#: OpenMP/BLAS crash when asked for tens of thousands of threads (100,000 segfaulted).
MAX_WORKERS = 256
MAX_THREADS = 256

Weighting = Literal["binary", "sum", "max", "mean"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- data sources


class _Source(_Config):
    weighting: Weighting = "binary"
    """How repeated (user, item) pairs and their values become one weight: `binary` (1 for any
    interaction, the blog's likes), `sum` (e.g. total play count), `max` or `mean` (ratings)."""


class SyntheticSource(_Source):
    """Generated interactions with planted low-rank preferences; the embedded offline default."""

    source: Literal["synthetic"] = "synthetic"
    n_users: int = Field(2_000, ge=1)
    """Number of users generated (some may drop out in thresholding)."""
    n_items: int = Field(1_000, ge=1)
    """Number of items in the catalogue."""
    n_interactions: int = Field(60_000, ge=1)
    """Target number of distinct (user, item) pairs before duplicates are injected."""
    rank: int = Field(8, ge=1)
    """Dimension of the planted user/item preference vectors."""
    popularity_exponent: float = Field(0.8, ge=0.0)
    """Zipf exponent of item popularity: item i is drawn with weight (i + 1) ** -exponent."""
    affinity: float = Field(2.0, ge=0.0)
    """Strength of the planted preferences against raw popularity (0: popularity only)."""
    values: Literal["binary", "count"] = "binary"
    """`binary` likes, or `count` values (play-count-like, larger where preference is higher)."""
    duplicate_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of rows repeated verbatim, as real logs contain (exercises de-duplication)."""


class SketchfabSource(_Source):
    """The blog recipe's Sketchfab likes: `modelname|mid|uid`, quotechar backslash."""

    source: Literal["sketchfab"] = "sketchfab"
    path: Path
    """Path of the `|`-separated likes file."""


class MovieLens100kSource(_Source):
    """MovieLens 100k (`u.data`, `u.item`)."""

    source: Literal["movielens-100k"] = "movielens-100k"
    path: Path | None = None
    """Folder holding `u.data` and `u.item`; default `$MFSTUDY_DATA_DIR/ml-100k`, else the
    download cache."""


class MovieLensLatestSmallSource(_Source):
    """MovieLens latest-small (`ratings.csv`, `movies.csv`)."""

    source: Literal["movielens-latest-small"] = "movielens-latest-small"
    path: Path | None = None
    """Folder holding `ratings.csv` and `movies.csv`; default `$MFSTUDY_DATA_DIR/ml-latest-small`,
    else the download cache."""


class Lastfm2kSource(_Source):
    """hetrec2011 last.fm: `user_artists.dat` play counts, `artists.dat` names."""

    source: Literal["lastfm-2k"] = "lastfm-2k"
    path: Path | None = None
    """Folder holding `user_artists.dat` and `artists.dat`; default `$MFSTUDY_DATA_DIR/lastfm-2k`,
    else the download cache."""


class TableSource(_Source):
    """Any CSV, TSV or Parquet file with one row per interaction."""

    source: Literal["table"] = "table"
    path: Path
    """The file to read."""
    format: Literal["csv", "tsv", "parquet"] | None = None
    """File format; inferred from the suffix when omitted (`.csv`, `.tsv`/`.tab`, `.parquet`)."""
    sep: str | None = None
    """Field separator for text files; default `,` for csv and tab for tsv."""
    user_col: str = "user"
    """Column holding user ids."""
    item_col: str = "item"
    """Column holding item ids."""
    weight_col: str | None = None
    """Column holding the weight or rating; omitted means every row weighs 1."""
    item_name_col: str | None = None
    """Column holding display names of items, if any."""
    id_type: Literal["string", "integer"] = "string"
    """How user and item ids are read. `string` (default): opaque, exactly as written, so `007`
    and `7` are two users and `3.0` stays `3.0`. `integer`: every id must be a whole number and
    ids are compared as numbers (`007` and `7` are one user)."""


DataSource = Annotated[
    SyntheticSource
    | SketchfabSource
    | MovieLens100kSource
    | MovieLensLatestSmallSource
    | Lastfm2kSource
    | TableSource,
    Field(discriminator="source"),
]

# --------------------------------------------------------------------------- preparation


class ThresholdConfig(_Config):
    """Iterative k-core: drop sparse users and items, alternating, until nothing changes."""

    min_items_per_user: int = Field(5, ge=1)
    """A user is kept only with at least this many distinct items (the blog: 5)."""
    min_users_per_item: int = Field(5, ge=1)
    """An item is kept only with at least this many distinct users (the blog: 5)."""


class UserHoldoutSplitConfig(_Config):
    """The blog's split: move `k` interactions of a fraction of users to a test matrix."""

    kind: Literal["user_holdout"] = "user_holdout"
    fraction: float = Field(0.2, gt=0.0, le=1.0)
    """Number of held-out users as a fraction of all users (the blog: 0.2)."""
    k: int = Field(5, ge=1)
    """Interactions moved to test for each held-out user (the blog: 5)."""
    min_interactions: int | None = Field(None, ge=1)
    """Only users with at least this many interactions are eligible; default `2 * k`."""


class NewUserSplitConfig(_Config):
    """Users left out of initial training; part of their data folds them in, the rest tests."""

    kind: Literal["new_users"] = "new_users"
    frac_new_users: float = Field(0.2, gt=0.0, lt=1.0)
    """Fraction of users held out of initial training."""
    foldin_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Fraction of each new user's interactions given for fold-in; the rest is test."""
    min_interactions: int = Field(2, ge=2)
    """Only users with at least this many interactions can be new users."""


class RandomSplitConfig(_Config):
    """A random fraction of all interactions (ratings) moved to test."""

    kind: Literal["random"] = "random"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Fraction of interactions in the test matrix (the second source: 0.2)."""


SplitConfig = Annotated[
    UserHoldoutSplitConfig | NewUserSplitConfig | RandomSplitConfig,
    Field(discriminator="kind"),
]


class EvaluationConfig(_Config):
    """How trained models are scored on the held-out users."""

    k: int = Field(5, ge=1)
    """Cut-off of the ranking metrics (precision@k, recall@k, nDCG@k, MAP@k)."""
    exclude_seen: bool = True
    """Exclude each user's training items from the test ranking (the blog did not: `false`)."""
    batch_memory_mb: int = Field(256, ge=1)
    """Upper bound on the memory of one batch of dense scores during ranking."""


# --------------------------------------------------------------------------- search


class IntParam(_Config):
    """An integer hyperparameter drawn from [low, high]."""

    type: Literal["int"] = "int"
    low: int
    """Smallest value."""
    high: int
    """Largest value (inclusive)."""
    log: bool = False
    """Sample on a log scale (factors, iterations spanning orders of magnitude)."""
    step: int = Field(1, ge=1)
    """Spacing of the values (ignored with `log`)."""

    @model_validator(mode="after")
    def _ordered(self) -> IntParam:
        if self.low > self.high or (self.log and self.low < 1):
            raise ValueError("need low <= high (and low >= 1 with log)")
        return self


class FloatParam(_Config):
    """A real hyperparameter drawn from [low, high]."""

    type: Literal["float"] = "float"
    low: float
    """Smallest value."""
    high: float
    """Largest value."""
    log: bool = False
    """Sample on a log scale (regularization, learning rates, alpha)."""

    @model_validator(mode="after")
    def _ordered(self) -> FloatParam:
        if self.low > self.high or (self.log and self.low <= 0):
            raise ValueError("need low <= high (and low > 0 with log)")
        return self


class CategoricalParam(_Config):
    """A hyperparameter taking one of listed values (the grid sampler needs these)."""

    type: Literal["categorical"] = "categorical"
    choices: list[bool | int | float | str] = Field(min_length=1)
    """The values to choose from."""


SearchedParam = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]
ParamSpec = SearchedParam | bool | int | float | str
"""A searched parameter (a mapping with `type`) or a fixed value (a plain scalar)."""

_SEARCHED = TypeAdapter(SearchedParam)
# Validators below the field level mark the sub-key they complain about between two of these, so
# format_validation_error can report `search_space.sgd.factors` as one dotted location.
_SUBKEY = "\x1f"


def _parse_param(where: str, value: Any) -> ParamSpec:
    # Done by hand rather than by a pydantic union, whose errors list every union member.
    if isinstance(value, IntParam | FloatParam | CategoricalParam):
        return value
    if isinstance(value, dict):
        try:
            return _SEARCHED.validate_python(value)
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(p) for p in e["loc"][1:])
            detail = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            detail = detail.removeprefix("Value error, ")
            raise ValueError(
                f"{_SUBKEY}{where}{'.' + loc if loc else ''}{_SUBKEY} {detail}"
            ) from None
    if isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"{_SUBKEY}{where}{_SUBKEY} expected a scalar or a mapping with `type`")


ModelFamily = Literal["wrmf", "sgd", "als", "baseline"]


def _default_space() -> dict[str, dict[str, Any]]:
    return {
        "wrmf": {
            "factors": IntParam(low=8, high=128, log=True),
            "regularization": FloatParam(low=1e-4, high=100.0, log=True),
            "alpha": FloatParam(low=0.1, high=100.0, log=True),
            "iterations": 15,
        }
    }


class SamplerConfig(_Config):
    """How Optuna proposes the next trial."""

    kind: Literal["tpe", "grid", "random"] = "tpe"
    """`tpe` (default), `grid` (every combination of categorical choices, the blog's grid) or
    `random`."""
    multivariate: bool = True
    """TPE models parameters jointly (they interact strongly in matrix factorization)."""
    n_startup_trials: int = Field(8, ge=0)
    """Random trials before TPE starts modelling."""
    constant_liar: bool = True
    """TPE avoids proposing what running trials already test (matters with parallel workers)."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Seed of the sampler alone (to repeat a search on the same split); default: derived
    from the study seed."""


class PrunerConfig(_Config):
    """How unpromising trials are stopped early from their per-epoch reports."""

    kind: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    """`median`, `hyperband`, `successive_halving` or `none`."""
    n_startup_trials: int = Field(4, ge=0)
    """`median`: trials finished before pruning starts."""
    n_warmup_steps: int = Field(2, ge=0)
    """`median`: epochs a trial runs before it can be pruned."""
    min_resource: int = Field(2, ge=1)
    """`hyperband`/`successive_halving`: epochs every trial gets."""
    reduction_factor: int = Field(3, ge=2)
    """`hyperband`/`successive_halving`: 1/reduction_factor of the trials advance per rung."""


class StudySettings(_Config):
    """The Optuna study: budget, parallelism, objective, sampler, pruner, storage."""

    n_trials: int = Field(20, ge=1)
    """Trials to finish (complete or pruned); a re-run resumes until this many are done."""
    workers: int = Field(1, ge=1, le=MAX_WORKERS)
    """Trial processes running at once, sharing the study storage; never more than
    `n_trials` (a process beyond the budget would start and warm up for nothing)."""
    threads_per_worker: int | None = Field(None, ge=1, le=MAX_THREADS)
    """BLAS/OpenMP/numba threads per trial; default: cores // workers (never oversubscribe)."""
    timeout: float | None = Field(None, gt=0)
    """Stop starting new trials after this many seconds."""
    metric: str | None = None
    """Objective, a key logged every epoch (e.g. `test_precision_at_5`, `test_rmse`); default
    test precision@k of `evaluation.k`."""
    direction: Literal["maximize", "minimize"] | None = None
    """Default: minimize for error metrics (`mse`, `rmse`), maximize otherwise."""
    eval_every: int = Field(1, ge=1)
    """Evaluate, log and report to the pruner every this many epochs (the blog: 2)."""
    storage: str | None = None
    """Optuna storage URL (`sqlite:///...`, `postgresql://...`) or a journal file path; default
    the journal file `<workdir>/<name>/optuna.journal` (safe with parallel processes)."""
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    """Sampler settings."""
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    """Pruner settings."""
    register_as: str | None = None
    """Registered model name for the retrained best model; default the study name."""
    on_data_change: Literal["new_study", "error"] = "new_study"
    """What a re-run does when the prepared data (interactions, weights, ids, holdout) differs
    from the data the study's trials were scored on: `new_study` (default) runs the trials in
    a new study `<name>-<first 8 characters of the data fingerprint>` (its own Optuna study
    and MLflow parent run, same experiment and registered model), resumed by later runs on
    that data; `error` stops with an error before any trial. Scores on different holdouts are
    never mixed in one study."""
    similar_items_k: int = Field(10, ge=1)
    """Neighbours per item in the item-to-item similarity artifact."""

    @model_validator(mode="before")
    @classmethod
    def _no_idle_workers(cls, data: Any) -> Any:
        # 6 workers for 1 trial took 3.4x as long as 1 (each spawns, imports and warms up).
        if isinstance(data, dict):
            n = data.get("n_trials", cls.model_fields["n_trials"].default)
            w = data.get("workers", 1)
            if isinstance(n, int) and isinstance(w, int) and 1 <= n < w <= MAX_WORKERS:
                data = {**data, "workers": n}
        return data

    @field_validator("register_as")
    @classmethod
    def _registrable(cls, value: str | None) -> str | None:
        # MLflow refuses '/' and ':' in model names, and '@' would be read as an alias in
        # `models:/<name>@champion`: refuse them now, not after the whole study has run.
        if value is not None and (not value.strip() or any(c in value for c in "/:@")):
            raise ValueError(
                f"{value!r} cannot name a registered model (no '/', ':' or '@', not empty)"
            )
        return value


class TrackingSettings(_Config):
    """Where trials are tracked."""

    uri: str | None = None
    """MLflow tracking URI; default the SQLite file `<workdir>/mlflow.db`. `http://host:port`
    for a tracking server."""
    experiment: str | None = None
    """MLflow experiment; default the study name."""
    flush_seconds: float = Field(15.0, gt=0)
    """A trial's MLflow run is created once the trial has run this long, then its metrics are
    sent every this many seconds (live learning curves), and at its end. A shorter trial shows
    up when it ends, in three requests in all, sparing the server and the trial round trips."""


# Cron fields: (name, lowest, highest, names allowed in place of numbers).
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun",
                      "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)  # fmt: skip
_CRON_MACROS = frozenset(
    ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"]
)


def _cron_value(token: str, low: int, high: int, names: tuple[str, ...]) -> int:
    lowered = token.lower()
    if lowered in names:
        return names.index(lowered) + (1 if low == 1 else 0)
    if not token.isdigit():
        raise ValueError(f"{token!r} is not a number")
    value = int(token)
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range {low}-{high}")
    return value


def check_cron(expr: str) -> str:
    """Validate a standard five-field cron expression (or an @daily-style macro).

    Stricter than Prefect's croniter (no seconds field, no `L`/`W`/`#`/`H`), so whatever
    passes here Prefect schedules too; checked here because the config is read before any
    Prefect client exists, and a typo must fail with one line, not at 03:00.
    """
    text = expr.strip()
    if text.lower() in _CRON_MACROS:
        return text
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(
            f"{expr!r} has {len(parts)} fields, expected 5 (minute hour day month weekday)"
        )
    for part, (field, low, high, names) in zip(parts, _CRON_FIELDS, strict=True):
        try:
            for item in part.split(","):
                span, _, step = item.partition("/")
                if step and (not step.isdigit() or int(step) == 0):
                    raise ValueError(f"step {step!r} is not a positive number")
                if span == "*":
                    continue
                first, dash, last = span.partition("-")
                a = _cron_value(first, low, high, names)
                if dash and a > _cron_value(last, low, high, names):
                    raise ValueError(f"range {span!r} is reversed")
        except ValueError as err:
            raise ValueError(f"{expr!r}: {field} field {part!r}: {err}") from None
    return text


def check_timezone(name: str) -> str:
    """An IANA timezone name known to this machine's tz database (e.g. `Europe/Berlin`)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA timezone name (e.g. Europe/Berlin)") from None
    return name


class ScheduleSettings(_Config):
    """When the nightly retraining deployment runs (`python -m flows.deploy <config>`)."""

    cron: str = "0 3 * * *"
    """Five-field cron expression (minute hour day-of-month month day-of-week) or a macro such
    as `@daily`; default 03:00 every day."""
    timezone: str = "UTC"
    """IANA timezone the cron expression is read in, e.g. `Europe/Berlin` (daylight saving time
    followed)."""
    active: bool = True
    """Whether the schedule is on when deployed (`false`: deployed paused)."""

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return check_timezone(value)


class RetrainSettings(_Config):
    """The nightly retraining (`flows/retrain.py`, `mfstudy.retrain`)."""

    tolerance: float = Field(0.02, ge=0.0, lt=1.0)
    """The retrained model replaces the champion unless its holdout score is worse than the
    champion's re-score by more than this fraction of it (0.02: at most 2% worse)."""
    max_shrink: float = Field(0.05, ge=0.0, lt=1.0)
    """The data gate before any retraining: when today's prepared data has lost more than this
    fraction of the champion's users or interactions, or more than this fraction of the
    champion's user or item ids are absent today (even if as many new ones came), or its
    schema (source kind, columns and dtypes read) changed, the champion is kept, nothing is
    registered and the run fails with one line saying what changed (0.05: at most 5% fewer)."""
    fallback_trials: int = Field(10, ge=1)
    """With no champion registered yet, a study of this many trials runs instead."""
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    """When the nightly retraining runs once deployed."""


class StudyConfig(_Config):
    """A whole study. `StudyConfig()` is the embedded default (`configs/quickstart.yaml`)."""

    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Study name: used for the output folder, the Optuna study and the MLflow experiment."""
    seed: int = Field(42, ge=0, le=MAX_SEED, strict=True)
    """The one seed every random choice (data generation, split, models) flows from."""
    data: DataSource = Field(default_factory=SyntheticSource)
    """Where the interactions come from."""
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    """k-core thresholding applied after de-duplication."""
    split: SplitConfig = Field(default_factory=UserHoldoutSplitConfig)
    """How train and test are made."""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """Metrics on the held-out users."""
    workdir: Path = Path("runs")
    """Folder for prepared data (`<workdir>/<name>/data`), the Optuna journal and the default
    MLflow store."""
    search_space: dict[ModelFamily, dict[str, Any]] = Field(
        default_factory=_default_space, min_length=1
    )
    """Per model family, its hyperparameters: a searched spec or a fixed value. With several
    families, the family itself is a categorical choice (`model`)."""
    study: StudySettings = Field(default_factory=StudySettings)
    """The Optuna study."""
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    """MLflow tracking."""
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    """The nightly retraining of the champion."""

    @field_validator("search_space")
    @classmethod
    def _check_space(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, ParamSpec]]:
        out: dict[str, dict[str, ParamSpec]] = {}
        for family, params in space.items():
            if not isinstance(params, dict):
                raise ValueError(f"{_SUBKEY}{family}{_SUBKEY} expected a mapping of parameters")
            out[family] = {n: _parse_param(f"{family}.{n}", v) for n, v in params.items()}
        return out

    @property
    def metric(self) -> str:
        """The objective's metric key."""
        return self.study.metric or f"test_precision_at_{self.evaluation.k}"

    @property
    def direction(self) -> str:
        """`maximize` or `minimize` for the objective."""
        if self.study.direction:
            return self.study.direction
        return "minimize" if self.metric.endswith(("mse", "rmse")) else "maximize"

    @model_validator(mode="before")
    @classmethod
    def _default_tags(cls, data: Any) -> Any:
        # A section without its tag means the default kind, so `--set data.n_users=500` works on
        # the embedded default without repeating `data.source=synthetic`.
        if isinstance(data, dict):
            data = dict(data)
            for section, tag, default in (
                ("data", "source", "synthetic"),
                ("split", "kind", "user_holdout"),
            ):
                if isinstance(data.get(section), dict) and tag not in data[section]:
                    data[section] = {tag: default, **data[section]}
        return data


# --------------------------------------------------------------------------- loading

# Discriminator values, dropped from error locations (see format_validation_error).
_TAGS = frozenset(
    [m.model_fields["source"].default for m in DataSource.__origin__.__args__]  # type: ignore[attr-defined]
    + [m.model_fields["kind"].default for m in SplitConfig.__origin__.__args__]  # type: ignore[attr-defined]
)


def format_validation_error(err: ValidationError, origin: str) -> str:
    """One line naming every offending key, e.g. `cfg.yaml: data.pth: unknown key`."""
    parts = []
    for e in err.errors():
        # Discriminated unions put the tag in the location (`data.synthetic.n_users`); drop it so
        # the path matches what the user wrote in the file.
        loc = [str(p) for p in e["loc"]]
        loc = [p for i, p in enumerate(loc) if not (i > 0 and p in _TAGS) and p != "[key]"]
        where = ".".join(loc) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(_SUBKEY):
            sub, _, msg = msg[1:].partition(_SUBKEY)
            where, msg = f"{where}.{sub}", msg.strip()
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error" and e["loc"][-1] == "[key]":
            what = "model family" if loc[0] == "search_space" else "name"
            msg = f"unknown {what}; {msg[0].lower()}{msg[1:]}"
        parts.append(f"{where}: {msg}")
    return f"{origin}: " + "; ".join(parts)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key=value, e.g. split.k=5")
    try:
        # As in a config file: a key given twice in `{a: 1, a: 2}` is an error, not the last.
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""
    except MappingKeyError as exc:
        raise ConfigError(f"override {item!r}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted `key=value` overrides applied (values parsed as YAML)."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


class MappingKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (PyYAML silently keeps the last), or a key that
    is not a plain value (`? [a, b]`)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: `study:` written twice would otherwise drop the
    first section without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise MappingKeyError(
                    f"line {key_node.start_mark.line + 1}: a key must be a plain value, not a "
                    f"{type(key).__name__}"
                )
            if key in seen:
                raise MappingKeyError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    n_trials: int | None = None,
    workers: int | None = None,
    timeout: float | None = None,
) -> StudyConfig:
    """Read and validate a study config; `None` gives the embedded default.

    `overrides` are `key=value` strings (`mfstudy --set`); `n_trials`, `workers` and `timeout`
    (the command's options, the flow's parameters) override `study.*` after them.
    Raises :class:`ConfigError` with one line naming the file and every offending key.
    """
    overrides = list(overrides)
    for key, value in (("n_trials", n_trials), ("workers", workers), ("timeout", timeout)):
        if value is not None:
            overrides.append(f"study.{key}={value}")
    origin = "<default config>"
    # The embedded default's search space, as if written in a file: `--set
    # search_space.wrmf.factors=8` then changes one parameter instead of replacing the space.
    raw: dict[str, Any] = {
        "search_space": {
            family: {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in ps.items()}
            for family, ps in _default_space().items()
        }
    }
    if path is not None:
        origin = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{origin}: config file not found")
        try:
            # A SafeLoader subclass: plain data only, as yaml.safe_load.
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{origin}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                f"{exc.start}); save the file as UTF-8"
            ) from None
        except MappingKeyError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{origin}: not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{origin}: expected a mapping of settings at the top level")
        raw = loaded
    raw = apply_overrides(raw, overrides)
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
