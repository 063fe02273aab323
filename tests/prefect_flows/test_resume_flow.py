"""The `mf-study` flow picks the study for the data as `mfstudy study` does
(`mfstudy.study.study_for_data`): on grown data its trials go to `<name>-<fingerprint[:8]>`,
which the flow reports (result, study artifact), and a re-run on that data resumes it.
The CLI side is tests/test_resume.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from test_resume import SETS

from helpers import journal_study
from mfstudy.config import SyntheticSource, load_config
from mfstudy.data import generate_synthetic
from mfstudy.prepare import data_fingerprint, prepare
from mfstudy.study import run_study
from mfstudy.tuning._factories import make_storage


def _overrides(csv: Path, workdir: Path, uri: str) -> list[str]:
    return [
        "name=flow-grow",
        f"workdir={workdir}",
        f"tracking.uri={uri}",
        f"data={{source: table, path: {csv}}}",
        *SETS,  # the same small study as the command's resume tests
    ]


def _markdown(key: str) -> str:
    """The newest version of the artifact `key`."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key}"
    return str(found[0].data)


def test_flow_runs_grown_data_in_the_new_study_and_resumes_it(
    tmp_path: Path, prefect_server: Any, tracking_uri: str
) -> None:
    from flows.study import study_flow

    raw = generate_synthetic(
        SyntheticSource(n_users=300, n_items=150, n_interactions=9_000, affinity=3.0), 7
    )
    frame = raw.frame[["user", "item", "weight"]].drop_duplicates(["user", "item"])
    keep = np.sort(np.random.default_rng(7).permutation(len(frame))[: int(0.6 * len(frame))])
    csv, work = tmp_path / "likes.csv", tmp_path / "runs"
    frame.iloc[keep].to_csv(csv, index=False)
    overrides = _overrides(csv, work, tracking_uri)
    run_study(load_config(None, [*overrides, "study.n_trials=2"]))
    journal = work / "flow-grow" / "optuna.journal"
    before = [(t.number, t.value) for t in journal_study(journal, "flow-grow").get_trials()]

    pd.DataFrame(frame).to_csv(csv, index=False)
    new = f"flow-grow-{data_fingerprint(prepare(load_config(None, overrides)))[:8]}"
    result = study_flow(n_trials=2, workers=1, overrides=overrides)
    assert result.study_name == new and result.model_name == "flow-grow"
    trials = journal_study(journal, new).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert result.best.value == max(t.value for t in trials)
    assert [(t.number, t.value) for t in journal_study(journal, "flow-grow").get_trials()] == before
    version = MlflowClient(tracking_uri).get_model_version("flow-grow", result.model_version)
    assert version.run_id == result.parent_run_id
    assert f"# Study `{new}`" in _markdown(f"study-{new}")

    again = study_flow(n_trials=2, workers=1, overrides=overrides)
    assert again.study_name == new and again.parent_run_id == result.parent_run_id
    assert len(journal_study(journal, new).get_trials()) == 2
    assert set(optuna.get_all_study_names(make_storage(str(journal)))) == {"flow-grow", new}
