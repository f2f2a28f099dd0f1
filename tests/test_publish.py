"""`paradistill publish` against the loopback Hub emulator (tests/hub_server.py), over real HTTP.

The CLI runs as a subprocess with the environment a user would set (HF_ENDPOINT, HF_TOKEN); the published
versions are read back with the real `datasets.load_dataset(repo_id, revision=VERSION)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import polars as pl
import pytest

from pipelines.publish import with_retries
from tests.conftest import error_line
from tests.hub_server import FakeHub, hub_env
from tests.student_fixtures import write_export

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")

TOKEN = "hf_publish_secret_7f3a9c"
ROWS = [(f"Sentence number {i} is here.", f"Here is sentence number {i}.") for i in range(12)]


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub(token=TOKEN, user="me") as server:
        yield server


def _export(folder: Path, version: str, rows=ROWS) -> Path:
    path = write_export(folder / "exports" / "para" / version, rows,
                        {"train": list(range(0, 8)), "validation": [8, 9], "test": [10, 11]})
    (path / "paradistill.json").write_text(json.dumps({"name": "para", "version": version}))
    return path


def _publish(hub: FakeHub, home: Path, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "publish", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=home)


def _rows(path: Path, split: str) -> list[dict]:
    return pl.read_parquet(path / "data" / f"{split}-00000-of-00001.parquet").to_dicts()


def test_publish_then_load_each_version_and_refuse_a_republish(hub, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    v1 = _export(tmp_path, "0.1.0")
    proc = _publish(hub, home, str(v1), "--repo-id", "me/para", "--private")
    assert proc.returncode == 0, proc.stderr
    assert "published me/para version 0.1.0" in proc.stdout
    repo = hub.repo("me/para")
    assert repo.private and set(repo.tags) == {"0.1.0"}
    assert hub.entry("me/para", "data/train-00000-of-00001.parquet", "0.1.0").lfs  # parquet went through LFS
    assert hub.counts["commit"] == 1 and hub.counts["lfs-upload"] == 3
    # the same version again: refused before anything is uploaded
    commits = len(repo.commits)
    again = _publish(hub, home, str(v1), "--repo-id", "me/para")
    assert again.returncode == 5 and "already published" in error_line(again)
    assert len(repo.commits) == commits and hub.counts["commit"] == 1
    # a new version with other rows (and one stale shard dropped) becomes 0.1.1; 0.1.0 stays as it was
    v2 = write_export(tmp_path / "exports" / "para" / "0.1.1", ROWS[:6], {"train": [0, 1, 2, 3], "test": [4, 5]})
    (v2 / "paradistill.json").write_text(json.dumps({"name": "para", "version": "0.1.1"}))
    assert _publish(hub, home, str(v2), "--repo-id", "me/para").returncode == 0
    assert "data/validation-00000-of-00001.parquet" not in hub.files("me/para", "0.1.1")
    with hub_env(hub, tmp_path / "reader", token=TOKEN):
        old = datasets.load_dataset("me/para", revision="0.1.0", token=TOKEN)
        new = datasets.load_dataset("me/para", revision="0.1.1", token=TOKEN)
    assert set(old) == {"train", "validation", "test"} and set(new) == {"train", "test"}
    for split in old:
        assert old[split].to_list() == _rows(v1, split)
    for split in new:
        assert new[split].to_list() == _rows(v2, split)
    # the token reached no file: not the exports, not the client's home, not the reader's cache
    scanned = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(scanned) > 10
    for f in scanned:
        assert TOKEN.encode() not in f.read_bytes(), f


def test_publish_retries_429_and_5xx(hub, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    v1 = _export(tmp_path, "1.0.0")
    hub.reset_stats()
    hub.inject("create-repo", 429)
    hub.inject("commit", 503, 429)
    hub.inject("tag", 500)
    proc = _publish(hub, home, str(v1), "--repo-id", "me/flaky")
    assert proc.returncode == 0, proc.stderr
    assert hub.statuses("commit") == [503, 429, 200] and hub.statuses("tag") == [500, 200]
    repo = hub.repo("me/flaky")
    assert repo.tags["1.0.0"] == repo.branches["main"] and len(repo.commits) == 2  # initial + ours, once
    # --private never publishes into an existing public repo
    v2 = _export(tmp_path, "1.0.1")
    proc = _publish(hub, home, str(v2), "--repo-id", "me/flaky", "--private")
    assert proc.returncode == 5 and "is public" in error_line(proc) and "1.0.1" not in repo.tags


def test_user_mistakes_are_one_line(hub, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    v1 = _export(tmp_path, "2.0.0")
    proc = _publish(hub, home, str(v1), "--repo-id", "me/x", token="hf_wrong")
    assert proc.returncode == 8 and "refused the token" in error_line(proc)
    assert "hf_wrong" not in proc.stderr
    proc = _publish(hub, home, str(tmp_path), "--repo-id", "me/x")
    assert proc.returncode == 3 and "not a dataset folder" in error_line(proc)
    proc = _publish(hub, home, str(v1), "--repo-id", "not-a-repo-id")
    assert proc.returncode == 3 and "OWNER/NAME" in error_line(proc)


def test_with_retries_gives_up_after_its_attempts_and_passes_other_errors_at_once():
    calls, waits = [], []

    class Flaky(ConnectionError):
        pass

    def fail():
        calls.append(1)
        raise Flaky("reset by peer")

    with pytest.raises(Flaky):
        with_retries(fail, "x", attempts=3, sleep=waits.append)
    assert len(calls) == 3 and waits == [0.5, 1.0]
    calls.clear()

    def bad():
        calls.append(1)
        raise ValueError("not transient")

    with pytest.raises(ValueError):
        with_retries(bad, "x", sleep=waits.append)
    assert len(calls) == 1
