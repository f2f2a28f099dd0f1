"""The Hub emulator (tests/hub_server.py), driven through the real `huggingface_hub` and `datasets` clients."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import datasets
import polars as pl
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import FakeHub, hub_env

# huggingface_hub's LFS PUT passes a file object as `data=`, which httpx2 deprecates (client side, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")

TOKEN = "hf_test_write_token"
USER = "tester"
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: "data/train-*"
  - split: test
    path: "data/test-*"
---
# A tiny paraphrase set
"""
V1 = {"train": [{"text": "The cat sat.", "label": 0}, {"text": "A dog ran.", "label": 1}],
      "test": [{"text": "Birds fly.", "label": 1}]}
V2 = {"train": [{"text": "The cat sat down.", "label": 1}, {"text": "A dog ran off.", "label": 0},
                {"text": "It rained.", "label": 0}],
      "test": [{"text": "Fish swim.", "label": 0}]}
_names = itertools.count()


@pytest.fixture(scope="module")
def srv() -> Iterator[FakeHub]:
    with FakeHub(token=TOKEN, user=USER) as server:
        yield server


@pytest.fixture()
def hub(srv: FakeHub, tmp_path: Path) -> Iterator[FakeHub]:
    srv.clear_faults()
    srv.reset_stats()
    with hub_env(srv, tmp_path / "hf-home"):
        yield srv
    srv.clear_faults()
    assert srv.counts["unknown"] == 0, [e for e in srv.log if e["family"] == "unknown"]  # every call is served


@pytest.fixture()
def api(hub: FakeHub) -> HfApi:
    return HfApi(token=TOKEN)


def _repo_id() -> str:
    return f"{USER}/paraphrases-{next(_names)}"


def _write_version(folder: Path, rows: dict[str, list[dict]]) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(CARD)
    for split, split_rows in rows.items():
        pl.DataFrame(split_rows).write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def _publish_v1(api: HfApi, tmp_path: Path) -> tuple[str, str]:
    repo_id = _repo_id()
    api.create_repo(repo_id, repo_type="dataset", private=True)
    info = api.upload_folder(folder_path=_write_version(tmp_path / "v1", V1), repo_id=repo_id, repo_type="dataset")
    return repo_id, info.oid


def _rows(dsd: datasets.DatasetDict) -> dict[str, list[dict]]:
    return {split: dsd[split].to_list() for split in dsd}


# --- uploads: repo, LFS, commit, tags ------------------------------------------------------------------------------

def test_upload_folder_goes_through_lfs_in_one_commit_and_tags(api, hub, tmp_path):
    repo_id = _repo_id()
    url = api.create_repo(repo_id, repo_type="dataset", private=True)
    assert url.repo_id == repo_id and url.repo_type == "dataset" and url.startswith(hub.url)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)  # the 409 is swallowed by the client
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(repo_id, repo_type="dataset")
    assert exc.value.response.status_code == 409
    assert api.whoami()["name"] == USER

    hub.reset_stats()
    info = api.upload_folder(folder_path=_write_version(tmp_path / "v1", V1), repo_id=repo_id, repo_type="dataset",
                             commit_message="v1")
    assert hub.counts["commit"] == 1 and hub.counts["preupload"] == 1
    assert hub.counts["lfs-batch"] == 1 and hub.counts["lfs-upload"] == 2  # one batch call, one PUT per parquet
    for split in ("train", "test"):
        entry = hub.entry(repo_id, f"data/{split}-00000-of-00001.parquet")
        assert entry.lfs and entry.content is None and entry.sha256 in hub.repo(repo_id).lfs
    assert not hub.entry(repo_id, "README.md").lfs
    assert hub.files(repo_id)["README.md"].decode() == CARD
    commits = api.list_repo_commits(repo_id, repo_type="dataset")
    assert [c.commit_id for c in commits][0] == info.oid and len(commits) == 2  # + the .gitattributes commit
    assert commits[0].title == "v1" and len(info.oid) == 40

    ds_info = api.dataset_info(repo_id, files_metadata=True)
    assert ds_info.sha == info.oid and ds_info.private is True
    siblings = {s.rfilename: s for s in ds_info.siblings}
    assert siblings["data/train-00000-of-00001.parquet"].lfs.sha256 == hub.entry(
        repo_id, "data/train-00000-of-00001.parquet").sha256
    assert ds_info.card_data.configs[0]["config_name"] == "default"
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).dataset_info(repo_id)  # private: anonymous reads get a 401 RepoNotFound

    api.create_tag(repo_id, tag="1.0.0", revision=info.oid, repo_type="dataset")
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("1.0.0", "refs/tags/1.0.0", info.oid)]
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", info.oid)]
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag(repo_id, tag="1.0.0", repo_type="dataset")
    assert exc.value.response.status_code == 409 and "already exists" in str(exc.value)
    api.create_tag(repo_id, tag="1.0.0", repo_type="dataset", exist_ok=True)

    api.create_tag(repo_id, tag="tmp", repo_type="dataset")
    api.delete_tag(repo_id, tag="tmp", repo_type="dataset")
    assert [t.name for t in api.list_repo_refs(repo_id, repo_type="dataset").tags] == ["1.0.0"]


def test_commit_semantics_parent_commit_unchanged_files_and_deletes(api, hub, tmp_path):
    repo_id, v1 = _publish_v1(api, tmp_path)
    hub.reset_stats()
    same = api.upload_folder(folder_path=tmp_path / "v1", repo_id=repo_id, repo_type="dataset")
    assert same.oid == v1 and hub.counts["commit"] == 0  # preupload oids match: nothing to commit
    assert hub.counts["lfs-upload"] == 0

    new = api.create_commit(repo_id, [CommitOperationAdd("notes/a.txt", b"hello\n")], commit_message="notes",
                            repo_type="dataset", parent_commit=v1)
    with pytest.raises(HfHubHTTPError) as exc:  # main moved on: the stale parent is refused
        api.create_commit(repo_id, [CommitOperationAdd("notes/b.txt", b"x")], commit_message="stale",
                          repo_type="dataset", parent_commit=v1)
    assert exc.value.response.status_code == 412
    api.create_commit(repo_id, [CommitOperationDelete("notes/")], commit_message="rm notes", repo_type="dataset",
                      parent_commit=new.oid)
    assert "notes/a.txt" not in hub.files(repo_id) and "notes/a.txt" in hub.files(repo_id, new.oid)
    with pytest.raises(EntryNotFoundError):
        api.delete_file("missing.txt", repo_id, repo_type="dataset")


# --- datasets: tags pin versions -----------------------------------------------------------------------------------

def test_load_dataset_by_tag_returns_the_tagged_rows(api, hub, tmp_path):
    repo_id, v1 = _publish_v1(api, tmp_path)
    api.create_tag(repo_id, tag="1.0.0", revision=v1, repo_type="dataset")
    v2 = api.upload_folder(folder_path=_write_version(tmp_path / "v2", V2), repo_id=repo_id, repo_type="dataset",
                           commit_message="v2").oid
    assert v2 != v1 and api.dataset_info(repo_id, revision="1.0.0").sha == v1

    old = datasets.load_dataset(repo_id, revision="1.0.0", token=TOKEN)
    assert sorted(old) == ["test", "train"] and _rows(old) == V1
    new = datasets.load_dataset(repo_id, revision="main", token=TOKEN)
    assert _rows(new) == V2
    assert _rows(datasets.load_dataset(repo_id, revision=v1, token=TOKEN)) == V1  # a commit sha works too
    with pytest.raises(datasets.exceptions.DatasetNotFoundError):
        datasets.load_dataset(repo_id, revision="9.9.9", token=TOKEN)


# --- downloads and errors ------------------------------------------------------------------------------------------

def test_hf_hub_download_by_tag_and_the_errors_the_client_raises(api, hub, tmp_path):
    repo_id, v1 = _publish_v1(api, tmp_path)
    api.create_tag(repo_id, tag="1.0.0", revision=v1, repo_type="dataset")
    api.upload_folder(folder_path=_write_version(tmp_path / "v2", V2), repo_id=repo_id, repo_type="dataset")
    name = "data/train-00000-of-00001.parquet"

    path = hf_hub_download(repo_id, name, repo_type="dataset", revision="1.0.0", token=TOKEN)
    assert Path(path).read_bytes() == (tmp_path / "v1" / name).read_bytes()
    assert Path(path).is_relative_to(tmp_path / "hf-home" / "hub") and f"snapshots/{v1}/" in path
    assert pl.read_parquet(path).to_dicts() == V1["train"]
    readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision="main", token=TOKEN)
    assert Path(readme).read_text() == CARD

    # (files not cached yet: for a cached file, a failed HEAD falls back to the cache)
    with pytest.raises(HfHubHTTPError) as exc:
        hf_hub_download(repo_id, "data/test-00000-of-00001.parquet", repo_type="dataset", token="hf_wrong")
    assert exc.value.response.status_code == 401 and not isinstance(exc.value, RepositoryNotFoundError)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{USER}/no-such-repo", "README.md", repo_type="dataset", token=TOKEN)
    with pytest.raises(RepositoryNotFoundError):  # private repo, no token
        hf_hub_download(repo_id, name, repo_type="dataset", token=False)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "README.md", repo_type="dataset", revision="2.0.0", token=TOKEN)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "nope.txt", repo_type="dataset", token=TOKEN)
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(token="hf_wrong").dataset_info(repo_id)
    assert exc.value.response.status_code == 401


def test_tree_paths_info_and_hffs_reads(api, hub, tmp_path):
    repo_id, v1 = _publish_v1(api, tmp_path)
    tree = {e.path: e for e in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)}
    assert sorted(tree) == [".gitattributes", "README.md", "data", "data/test-00000-of-00001.parquet",
                            "data/train-00000-of-00001.parquet"]
    train = tree["data/train-00000-of-00001.parquet"]
    assert train.lfs.sha256 == hub.entry(repo_id, train.path).sha256 and tree["README.md"].lfs is None
    top = [e.path for e in api.list_repo_tree(repo_id, repo_type="dataset")]
    assert sorted(top) == [".gitattributes", "README.md", "data"]
    expanded = list(api.list_repo_tree(repo_id, "data", repo_type="dataset", expand=True))
    assert {e.last_commit.oid for e in expanded} == {v1}
    infos = api.get_paths_info(repo_id, ["README.md", "data", "absent"], repo_type="dataset", revision=v1)
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "README.md"), ("RepoFolder", "data")]

    fs = HfFileSystem(token=TOKEN)
    assert sorted(fs.glob(f"datasets/{repo_id}/data/*.parquet")) == [
        f"datasets/{repo_id}/data/test-00000-of-00001.parquet", f"datasets/{repo_id}/data/train-00000-of-00001.parquet"]
    with fs.open(f"datasets/{repo_id}/README.md", "rb", block_size=8) as f:
        f.seek(4)
        assert f.read(9) == CARD.encode()[4:13]  # served through Range requests
    assert fs.cat(f"datasets/{repo_id}@{v1}/README.md") == CARD.encode()


def test_multipart_lfs_and_paginated_tree(tmp_path):
    with FakeHub(token=TOKEN, multipart_chunk_size=300, tree_page_size=2) as srv, hub_env(srv, tmp_path / "hf"):
        api = HfApi(token=TOKEN)
        repo_id = _repo_id()
        api.create_repo(repo_id, repo_type="dataset")
        api.upload_folder(folder_path=_write_version(tmp_path / "v1", V1), repo_id=repo_id, repo_type="dataset")
        puts = [e for e in srv.log if e["family"] == "lfs-upload"]
        assert len(puts) > 4 and any(e["path"].endswith("/complete") for e in puts)  # parts + completions
        assert srv.files(repo_id)["data/test-00000-of-00001.parquet"] == (
            tmp_path / "v1/data/test-00000-of-00001.parquet").read_bytes()
        srv.reset_stats()
        assert len(list(api.list_repo_tree(repo_id, repo_type="dataset", recursive=True))) == 5
        assert srv.counts["tree"] == 3  # 5 entries, 2 per page, followed through Link: rel="next"
        assert _rows(datasets.load_dataset(repo_id, token=TOKEN)) == V1  # public repo
        assert srv.counts["unknown"] == 0


def test_model_repo_snapshot_branch_and_hffs_write(api, hub):
    repo_id = _repo_id()
    api.create_repo(repo_id)
    weights = bytes(range(256)) * 8
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id=repo_id)
    fs = HfFileSystem(token=TOKEN)
    with fs.open(f"{repo_id}/config.json", "w") as f:
        f.write('{"hidden_size": 8}')
    assert hub.entry(repo_id, "model.safetensors", repo_type="model").lfs  # binary -> LFS
    info = api.model_info(repo_id, files_metadata=True)
    assert {s.rfilename: s.size for s in info.siblings}["model.safetensors"] == len(weights)
    folder = Path(snapshot_download(repo_id, token=TOKEN))
    assert (folder / "model.safetensors").read_bytes() == weights and folder.name == info.sha
    api.create_branch(repo_id, branch="dev")
    api.upload_file(path_or_fileobj=b"draft", path_in_repo="notes.txt", repo_id=repo_id, revision="dev")
    assert "notes.txt" in api.list_repo_files(repo_id, revision="dev")
    assert "notes.txt" not in api.list_repo_files(repo_id)
    assert api.file_exists(repo_id, "config.json") and not api.file_exists(repo_id, "nope.json")
    api.delete_repo(repo_id)
    assert not api.repo_exists(repo_id)


# --- fault injection ---------------------------------------------------------------------------------------------

def test_lfs_batch_faults_are_retried_by_the_client(api, hub, tmp_path):
    repo_id = _repo_id()
    api.create_repo(repo_id, repo_type="dataset")
    data = tmp_path / "shard.parquet"
    pl.DataFrame(V1["train"]).write_parquet(data)
    hub.reset_stats()
    hub.inject("lfs-batch", 429, 500)
    info = api.upload_file(path_or_fileobj=data, path_in_repo="data/train-0.parquet", repo_id=repo_id,
                           repo_type="dataset")
    assert hub.statuses("lfs-batch") == [429, 500, 200]  # http_backoff: Retry-After 0 -> ~1 s per retry
    assert hub.counts["lfs-upload"] == 1 and hub.counts["commit"] == 1
    assert hub.files(repo_id, info.oid)["data/train-0.parquet"] == data.read_bytes()


def test_commit_faults_surface_as_http_errors(api, hub, tmp_path):
    repo_id = _repo_id()
    api.create_repo(repo_id, repo_type="dataset")
    data = tmp_path / "shard.parquet"
    pl.DataFrame(V2["train"]).write_parquet(data)
    head = api.dataset_info(repo_id).sha
    hub.reset_stats()
    hub.inject("commit", 429, 500)
    for status in (429, 500):  # the commit POST is not retried by huggingface_hub
        with pytest.raises(HfHubHTTPError) as exc:
            api.upload_file(path_or_fileobj=data, path_in_repo="x.parquet", repo_id=repo_id, repo_type="dataset")
        assert exc.value.response.status_code == status
    assert hub.statuses("commit") == [429, 500] and api.dataset_info(repo_id).sha == head
    assert hub.counts["lfs-upload"] == 1  # uploaded once: the second batch call found the object already there
    api.upload_file(path_or_fileobj=data, path_in_repo="x.parquet", repo_id=repo_id, repo_type="dataset")
    assert hub.statuses("commit") == [429, 500, 200] and hub.pending_faults("commit") == 0
    with pytest.raises(ValueError, match="unknown route family"):
        hub.inject("comit", 500)


def test_hub_env_switches_online_and_restores(srv, tmp_path):
    import datasets.config as dc

    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET, constants.HF_HUB_CACHE,
              dc.HF_ENDPOINT, dc.HF_HUB_OFFLINE, dc.HF_DATASETS_CACHE)
    with hub_env(srv, tmp_path / "home") as home:
        assert constants.ENDPOINT == dc.HF_ENDPOINT == srv.url
        assert constants.HF_HUB_OFFLINE is False and dc.HF_HUB_OFFLINE is False and constants.HF_HUB_DISABLE_XET
        assert Path(constants.HF_HUB_CACHE).is_relative_to(home) and dc.HF_DATASETS_CACHE.is_relative_to(home)
    assert (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET, constants.HF_HUB_CACHE,
            dc.HF_ENDPOINT, dc.HF_HUB_OFFLINE, dc.HF_DATASETS_CACHE) == before
