"""Deploy one study config: its study deployment and its nightly retraining, on its schedule.

    python -m flows.deploy configs/my-study.yaml [--pool mfstudy-process] [--no-nightly]

`prefect deploy --all` deploys what `prefect.yaml` lists (the shipped configs, and the lastfm-2k
nightly at 03:00 UTC). This is for any other config, or to move a nightly: it reads the
config's `retrain.schedule` (cron, timezone, active), so the schedule lives beside the study
it retrains and is validated with the rest of the config: a bad cron expression or timezone is
a one-line error (exit 2) before any deployment is touched. The work pool and the flow runs'
environment are `prefect.yaml`'s, so both routes deploy alike.

Creates (or updates) `mf-study/<name>` and `mf-retrain/<name>-nightly`; the flow code is read
from this repository folder when the worker runs it, like `prefect.yaml`'s pull step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from mfstudy.config import StudyConfig, load_config
from mfstudy.errors import MFStudyError

__all__ = ["deploy_config", "main", "pool_definition"]

REPO = Path(__file__).resolve().parents[1]


def pool_definition(prefect_file: Path = REPO / "prefect.yaml") -> dict[str, Any]:
    """The work pool (name, job variables) `prefect.yaml`'s deployments use."""
    doc = yaml.safe_load(prefect_file.read_text())
    return dict(doc["definitions"]["work_pool"])


def deploy_config(
    config: Path, pool: str | None = None, nightly: bool = True
) -> tuple[StudyConfig, list[str]]:
    """Deploy the study (and its nightly retraining) of `config`; returns the deployment names.

    The config is validated first, so nothing is deployed from a config that would fail.
    """
    cfg = load_config(config, [])
    from prefect import Flow
    from prefect.schedules import Cron

    definition = pool_definition()
    pool_name = pool or definition["name"]
    job_variables = definition.get("job_variables") or {}
    params = {"config": str(Path(config).resolve())}
    names = []
    study = Flow.from_source(str(REPO), "flows/study.py:study_flow")
    study.deploy(
        name=cfg.name,
        work_pool_name=pool_name,
        job_variables=job_variables,
        parameters=params,
        description=f"Study `{cfg.name}` ({config}).",
        tags=["mfstudy", "study"],
        build=False,
        push=False,
        print_next_steps=False,
        ignore_warnings=True,  # the "use .serve for local development" hint: not our case
    )
    names.append(f"mf-study/{cfg.name}")
    if nightly:
        sched = cfg.retrain.schedule
        retrain = Flow.from_source(str(REPO), "flows/retrain.py:retrain_flow")
        retrain.deploy(
            name=f"{cfg.name}-nightly",
            work_pool_name=pool_name,
            job_variables=job_variables,
            parameters=params,
            schedules=[Cron(sched.cron, timezone=sched.timezone, active=sched.active)],
            description=f"Nightly retraining of the `{cfg.name}` champion ({config}).",
            tags=["mfstudy", "retrain"],
            build=False,
            push=False,
            print_next_steps=False,
            ignore_warnings=True,  # the "use .serve for local development" hint: not our case
        )
        names.append(f"mf-retrain/{cfg.name}-nightly")
    return cfg, names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, help="Study config (YAML).")
    ap.add_argument("--pool", default=None, help="Work pool (default: prefect.yaml's).")
    ap.add_argument("--no-nightly", action="store_true", help="Deploy the study only.")
    args = ap.parse_args(argv)
    try:
        cfg, names = deploy_config(args.config, args.pool, nightly=not args.no_nightly)
    except MFStudyError as err:
        sys.stderr.write(f"mfstudy: error: {err}\n")
        return err.exit_code
    sched = cfg.retrain.schedule
    for name in names:
        when = f" (cron '{sched.cron}' {sched.timezone})" if name.startswith("mf-retrain") else ""
        print(f"deployed {name}{when}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
