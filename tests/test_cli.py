"""The `mfstudy` command as a user runs it: a real process, its exit code and its output.

Bad input (one-line errors, nothing left behind) is catalogued in test_bad_input.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from helpers import EXE, REPO, cli_sets, tiny_data

# Every test runs the `mfstudy` command, most of them a whole study.
pytestmark = pytest.mark.slow


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_version(tmp_path: Path) -> None:
    res = run("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("mfstudy ")


def test_prepare_embedded_default(tmp_path: Path) -> None:
    res = run("prepare", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "runs" / "quickstart" / "data"
    assert res.stdout.strip().endswith(str(Path("runs") / "quickstart" / "data"))
    names = {p.name for p in out.iterdir()}
    assert names == {
        "full.npz", "train.npz", "test.npz", "users.csv", "items.csv",
        "users_evaluated.npy", "stats.json", ".mfstudy-prepared",
    }  # fmt: skip
    stats = json.loads((out / "stats.json").read_text())
    for key in ("rows_read", "duplicates_dropped", "before_threshold", "after_threshold", "seed"):
        assert key in stats
    assert stats["split"]["heldout_users"] > 0
    assert stats["split"]["eligible_users"] >= stats["split"]["heldout_users"]
    # Nothing but the final folder is left behind (no temporary siblings).
    assert [p.name for p in (tmp_path / "runs" / "quickstart").iterdir()] == ["data"]


def test_prepare_lastfm_matches_the_recipe(tmp_path: Path, data_dir: Path) -> None:
    res = run("prepare", str(REPO / "configs" / "lastfm-2k.yaml"), "--out", "o", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["after_threshold"]["users"] == 1859
    assert stats["after_threshold"]["items"] == 2823
    assert stats["after_threshold"]["interactions"] == 71355
    assert stats["split"]["heldout_users"] == 371  # floor(0.2 * 1859)


TINY = cli_sets(tiny_data())


def test_study_then_recommend_from_the_registered_champion(tmp_path: Path) -> None:
    res = run("study", "--n-trials", "3", *TINY, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "models:/quickstart/1"
    assert "now champion" in res.stderr and "mlflow ui --backend-store-uri sqlite:///" in res.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    items = set(
        pd.read_csv(tmp_path / "runs" / "quickstart" / "data" / "items.csv")["item_id"].astype(str)
    )
    rec = run("recommend", "--model", "models:/quickstart@champion", "--user", "3", "-k", "4",
              cwd=tmp_path)  # fmt: skip
    assert rec.returncode == 0, rec.stderr
    rows = [line.split() for line in rec.stdout.strip().splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert {r[1] for r in rows} <= items
    sim = run("recommend", "--model", "models:/quickstart@champion", "--similar-to", rows[0][1],
              cwd=tmp_path)  # fmt: skip
    assert sim.returncode == 0 and rows[0][1] not in [
        r.split()[1] for r in sim.stdout.strip().splitlines()[1:]
    ]
    bad = run("recommend", "--model", "models:/quickstart@champion", "--user", "nobody",
              cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "user 'nobody' is not known" in bad.stderr


def test_text_ids_round_trip_through_the_registered_model(tmp_path: Path) -> None:
    from test_prepare import _odd_ids_table

    _odd_ids_table(tmp_path / "likes.csv")
    res = run("study", "--n-trials", "1", "--set", "name=odd-ids", "--set",
              f"data={{source: table, path: {tmp_path / 'likes.csv'}}}", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    for user in ("7", "007", "3.0"):
        rec = run("recommend", "--model", "models:/odd-ids@champion", "--user", user, "-k", "3",
                  cwd=tmp_path)  # fmt: skip
        assert rec.returncode == 0, rec.stderr
        rows = [line.split() for line in rec.stdout.strip().splitlines()[1:]]
        assert [r[0] for r in rows] == ["1", "2", "3"], rec.stdout  # ranks
    # `7` and `007` are two users: the model knows both, and `7.0` is neither of them.
    bad = run("recommend", "--model", "models:/odd-ids@champion", "--user", "7.0", cwd=tmp_path)
    assert bad.returncode == 2 and "user '7.0' is not known" in bad.stderr


def test_the_champion_is_read_as_checked_data_never_as_code(tmp_path: Path) -> None:
    """`recommend` (and the nightly) read the registered model's JSON, NumPy and CSV files,
    each checked against the sha256 recorded at registration; the pyfunc code stored beside
    them is never imported, so writing to the artifact store does not run code here."""
    from mlflow import MlflowClient

    res = run("study", "--n-trials", "1", *TINY, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("quickstart", "champion")
    recorded = json.loads(version.tags["mfstudy.checksums"])
    assert set(recorded) == {"model/model.json", "model/state.npz", "model/seen.npz",
                             "users.csv", "items.csv"}  # fmt: skip
    (root,) = (tmp_path / "runs" / "artifacts" / "models").iterdir()
    data = root / "artifacts" / "artifacts"
    ask = ("recommend", "--model", "models:/quickstart@champion", "--user", "3")

    # Code planted in the stored pyfunc wrapper: never run by mfstudy's loading path.
    marker = tmp_path / "pwned"
    (root / "artifacts" / "pyfunc_model.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    assert run(*ask, cwd=tmp_path).returncode == 0
    assert not marker.exists()

    # A data file changed after registration: refused in one line.
    state = data / "model" / "state.npz"
    original = state.read_bytes()
    state.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    bad = run(*ask, cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "state.npz does not match the checksum recorded at registration" in bad.stderr
    state.write_bytes(original)
    # A file slipped in beside the model's: refused too.
    (data / "model" / "extra.npz").write_bytes(b"x")
    bad = run(*ask, cwd=tmp_path)
    assert bad.returncode == 2 and "model/extra.npz was not there at registration" in bad.stderr
    (data / "model" / "extra.npz").unlink()

    # A version registered before checksums were recorded: read (data only), with a warning.
    client.delete_model_version_tag("quickstart", version.version, "mfstudy.checksums")
    client.delete_logged_model_tag(version.source.removeprefix("models:/"), "mfstudy.checksums")
    old = run(*ask, cwd=tmp_path)
    assert old.returncode == 0, old.stderr
    assert "registered before mfstudy recorded checksums" in old.stderr


def test_recommend_fails_fast_and_creates_nothing(tmp_path: Path) -> None:
    """No store where none exists (it used to leave `runs/` behind); an unreachable server
    and an unusable SQLite store are one line each, without MLflow's minutes of retries (the
    command would otherwise outlive this test's timeout)."""
    from servers import free_port

    ask = ("recommend", "--model", "models:/quickstart@champion", "--user", "1")
    empty = run(*ask, cwd=tmp_path)
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1, empty.stderr
    assert "no MLflow tracking store at sqlite:///" in empty.stderr
    assert list(tmp_path.iterdir()) == []

    down = subprocess.run(
        [EXE, *ask, "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr
    assert "is unreachable: Connection refused" in down.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    study = subprocess.run(
        [EXE, "study", "--n-trials", "1", *TINY, "--set", f"tracking.uri=sqlite:///{blocker}/x.db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert study.returncode == 2 and len(study.stderr.strip().splitlines()) == 1, study.stderr
    assert f"cannot be used: {blocker} is not a folder" in study.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
