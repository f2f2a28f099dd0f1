"""Partitioned, pooled curation gives the tables of one pass, and a killed curation resumes to the same tables."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bench import synthetic
from pipelines import runner
from pipelines.partitions import by_source
from pipelines.recipes_io import load_recipe
from pipelines.rowstore import RowsStore, VectorStore
from pipelines.store import Workdir

ROOT = Path(__file__).resolve().parents[1]

TABLES = {"scores": "pair_id", "decisions": "pair_id", "dedup_links": "pair_id", "funnel": "step",
          "corpus_metrics": "selection"}
SET_COLUMNS = ["score_set", "filter_id", "dedup_id"]
PAIRS = 1500


def current_tables(root: Path) -> dict[str, pl.DataFrame]:
    wd = Workdir(root)
    return {t: wd.read_current(t).drop(SET_COLUMNS, strict=False).sort(key) for t, key in TABLES.items()}


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = current_tables(a), current_tables(b)
    for table, frame in ta.items():
        assert frame.height > 0 or table == "dedup_links", table
        assert frame.equals(tb[table]), f"{table} differs"


def assert_same_vectors(root: Path, ref: Path) -> None:
    """Every text's vector equals the reference's bit for bit (the same chunks through the same model); the
    reference may hold more (a test adds one)."""
    got = Workdir(root).read("embeddings").sort("text_id")
    want = Workdir(ref).read("embeddings").join(got.select("text_id"), on="text_id", how="semi").sort("text_id")
    assert got.height > 0 and got.equals(want)


def recipe(partition_size: int, workers: int | str):
    r = load_recipe(str(ROOT / "pipelines/recipes/diverse.yaml"))[0]
    r.execution.partition_size, r.execution.workers = partition_size, workers
    return r


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """A synthetic corpus (planted duplicates included) imported into a workdir, not yet curated."""
    base = tmp_path_factory.mktemp("corpus")
    synthetic.generate(base / "pairs.parquet", PAIRS, seed=3)
    runner.ingest_pairs(str(base / "pairs.parquet"), base / "wd", progress=False)
    return base / "wd"


@pytest.fixture(scope="module")
def one_pass(imported, tmp_path_factory) -> Path:
    """The reference: everything in this process, one partition."""
    root = tmp_path_factory.mktemp("one") / "wd"
    shutil.copytree(imported, root)
    runner.curate(root, recipe(10_000_000, 1), progress=False)
    return root


def test_by_source_partitions_cover_every_pair_once_and_never_split_a_source():
    rng = np.random.default_rng(0)
    df = pl.DataFrame({"source_id": rng.integers(0, 40, 500).astype(str), "pair_id": [f"p{i:04d}" for i in range(500)]})
    for size in (1, 7, 64, 499, 10_000):
        parts = by_source(df, size)
        rows = np.concatenate(parts)
        assert sorted(rows.tolist()) == list(range(500))
        owners = [set(df.get_column("source_id").gather(p).to_list()) for p in parts]
        assert sum(len(o) for o in owners) == len(set().union(*owners))  # no source in two partitions
        assert all(len(p) >= size for p in parts[:-1])  # a partition is cut only at a source after `size` pairs
    assert by_source(df.head(0), 10) == []


def test_pooled_small_partitions_give_the_tables_of_one_pass(imported, one_pass, tmp_path, monkeypatch):
    """The memory-bounded mode (the smallest partition size) with two worker processes, the parse running beside
    the encoder as it does when the encoder is on a GPU (the encoder itself stays on the CPU here)."""
    monkeypatch.setattr(runner, "resolve_device", lambda device: "cuda")
    root = tmp_path / "wd"
    shutil.copytree(imported, root)
    res = runner.curate(root, recipe(64, 2), progress=False)
    assert res["parse"]["parsed"] > 0  # parsed in the background, beside the encoder
    assert res["score"]["parse"]["parsed"] == 0
    assert res["score"]["partitions"] > 10 and res["score"]["workers"] == 2
    assert res["parse"]["task_texts"] == 32
    assert len(Workdir(root).shards("analyses")) > 10  # one shard per parse task
    assert_same_tables(root, one_pass)


def test_row_stores_return_what_the_tables_hold(one_pass):
    wd = Workdir(one_pass)
    mid = wd.scan("embeddings").select("model_id").head(1).collect().item()
    ids = wd.scan("embeddings").select("text_id").collect().get_column("text_id").sample(200, seed=1)
    vs = VectorStore.open(wd, mid)
    stored = wd.read("embeddings").filter(pl.col("model_id") == mid).unique("text_id", keep="first")
    want = pl.DataFrame({"text_id": ids}).join(stored, on="text_id", how="left", maintain_order="left")
    assert np.array_equal(vs.vectors(ids), want.get_column("embedding").list.to_array(vs.dim).to_numpy())
    assert VectorStore.open(wd, mid).path == vs.path  # reused while the table is unchanged
    aid = wd.scan("analyses").select("analyzer").head(1).collect().item()
    rs = RowsStore.open(wd, "analyses", "text_id", pl.col("analyzer") == aid, ["lemmas", "tree", "n_tokens"], aid)
    got = rs.take(ids).with_columns(text_id=ids)
    want = (pl.DataFrame({"text_id": ids}).join(wd.read("analyses").unique("text_id", keep="first"), on="text_id",
                                                how="left", maintain_order="left"))
    cols = ["text_id", "lemmas", "tree", "n_tokens"]
    assert got.select(cols).equals(want.select(cols))
    with pytest.raises(KeyError):
        vs.vectors(["not-a-text-id"])
    extra = stored.head(1).with_columns(text_id=pl.lit("a-new-text"))
    wd.append("embeddings", extra)  # the table gained a shard: the store is rebuilt and sees it
    rebuilt = VectorStore.open(wd, mid)
    assert rebuilt.path != vs.path and not vs.path.exists()
    assert np.array_equal(rebuilt.vectors(["a-new-text"])[0], np.asarray(extra.get_column("embedding")[0]))


def _shards(root: Path, table: str, pattern: str = "part-*.parquet") -> int:
    return len([p for p in (root / "tables" / table).glob(pattern) if "schema" not in p.name])


def _kill_when(cmd: list[str], ready, env: dict, timeout: float = 240.0) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; fail if it ended first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "the stage never started"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers, as an OOM kill or a lost machine would
        proc.wait()


def test_killed_mid_parse_and_mid_score_resumes_to_the_same_tables(imported, one_pass, tmp_path):
    root = tmp_path / "wd"
    shutil.copytree(imported, root)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text((ROOT / "pipelines/recipes/diverse.yaml").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PARADISTILL_PROGRESS": "plain"}
    cmd = [sys.executable, "-m", "pipelines.cli", "curate", "-w", str(root), "-r", str(recipe_file),
           "--partition-size", "64", "--workers", "1"]
    _kill_when(cmd, lambda: _shards(root, "analyses") >= 3, env)
    parsed_before = Workdir(root).count("analyses")
    _kill_when(cmd, lambda: _shards(root, "scores", "part-set-*-*-*.parquet") >= 3, env)
    partial = _shards(root, "scores", "part-set-*-*-*.parquet")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    wd = Workdir(root)
    runs = sorted((root / "runs").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    last = json.loads(runs[-1].read_text())["stages"]["score"]
    assert last["partitions_reused"] >= 3 and last["partitions_reused"] <= partial
    assert last["parse"]["parsed"] == 0  # every text was parsed by the second run; none again
    assert wd.read("analyses").get_column("text_id").is_unique().all()  # nothing parsed twice
    assert parsed_before > 0
    assert_same_tables(root, one_pass)


def _is_worker(proc) -> bool:
    """A live pool worker (the parse's workers end before scoring starts and may linger as zombies)."""
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def test_a_worker_killed_mid_run_is_one_error_line_and_a_rerun_resumes(imported, one_pass, tmp_path):
    import psutil

    root = tmp_path / "wd"
    shutil.copytree(imported, root)
    cmd = [sys.executable, "-m", "pipelines.cli", "curate", "-w", str(root), "-r", "diverse",
           "--partition-size", "64", "--workers", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while True:  # a spawned worker that has parsed something: kill it as the OOM killer would
        workers = [k for k in psutil.Process(proc.pid).children(recursive=True) if _is_worker(k)]
        if workers and _shards(root, "scores", "part-set-*-*-*.parquet") >= 2:
            workers[0].kill()
            break
        assert proc.poll() is None, "the run ended before a worker could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 10, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert "worker process died" in lines[0] and "rerun" in lines[0]
    stale = _shards(root, "scores", "part-set-*-*-*.parquet")
    assert stale >= 2
    other = [*cmd[:-4], "--partition-size", "100", "--workers", "2"]  # resumed with another partition layout
    done = subprocess.run(other, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    names = [p.name for p in (root / "tables" / "scores").glob("part-set-*-*-*.parquet")]
    assert names and all("-50-" in n for n in names)  # the 32-pair tasks' shards were dropped, not mixed in
    assert_same_tables(root, one_pass)


def test_the_ray_backend_gives_the_tables_of_one_pass(imported, one_pass, tmp_path, ray_local):
    """Parse and score on Ray Data actor pools (small partitions: many tasks) write the local backend's tables."""
    root = tmp_path / "wd"
    shutil.copytree(imported, root)
    r = recipe(200, 2)
    r.execution.backend = "ray"
    res = runner.curate(root, r, progress=False)
    assert res["score"]["partitions"] > 5 and res["score"]["parse"]["parsed"] > 0
    assert res["embed"]["embedded"] == res["embed"]["texts"]  # encoded by the actors, none in the driver
    assert_same_tables(root, one_pass)
    assert_same_vectors(root, one_pass)
    assert not list((root / "state" / "ray").glob("plan-*"))  # the plans are removed once read


def _links(root: Path) -> pl.DataFrame:
    return Workdir(root).read_current("dedup_links").drop("dedup_id", "index").sort("pair_id")


def test_kmeans_search_is_the_flat_search_with_one_cluster_and_reaches_its_recall_with_several(
        one_pass, tmp_path, ray_local):
    """Corpus-wide semantic dedup spread over tasks: one cluster gives the flat search's links exactly; four
    clusters at a lower threshold (many cross-source links) reach recall >= 0.95 against exact search, and the
    local pool runs the same plan to the same links."""
    from pipelines.pool import Pool
    from pipelines.steps.dedup import dedup

    root = tmp_path / "one-cluster"
    shutil.copytree(one_pass, root)  # its vectors are reused; the dedup runs again (another dedup id)
    r = recipe(200, 2)
    r.execution.backend, r.dedup.index, r.dedup.kmeans_clusters = "ray", "kmeans", 1
    res = runner.curate(root, r, upto="dedup", progress=False)
    assert res["dedup"]["search"]["label"] == "kmeans:clusters=1,probe=1" and res["dedup"]["removed"]["exact"] > 0
    assert _links(root).equals(_links(one_pass))
    got = {}
    for name in ("ray", "pool"):
        r = recipe(200, 2)
        r.dedup.index, r.dedup.kmeans_clusters, r.dedup.across_sources = "kmeans", 4, 0.85
        root = tmp_path / name
        shutil.copytree(one_pass, root)
        if name == "ray":
            r.execution.backend = "ray"
            search = runner.curate(root, r, upto="dedup", progress=False)["dedup"]["search"]
            assert search["clusters"] == 4 and search["recall_exact_links"] >= 30 and search["recall"] >= 0.95
        else:
            with Workdir(root) as wd, Pool(2) as pool:
                ids = runner.unique_pairs(wd, texts=False)
                dedup(wd, r.dedup, r.embed, r.nli, ids, backend=pool)
        got[name] = _links(root)
    assert got["ray"].height > _links(one_pass).height and got["ray"].equals(got["pool"])


def test_nli_on_ray_actors_gives_the_probabilities_of_this_process(imported, tmp_path, ray_local, monkeypatch):
    from pipelines.ray_backend import RayBackend
    from pipelines.steps import nli
    from schemas.recipe import ExecutionConfig, NLIConfig
    from tests.nli_fixture import build_tiny_nli

    monkeypatch.setattr(nli, "CHUNK", 50)  # several actor tasks
    cfg = NLIConfig(model=str(build_tiny_nli(tmp_path / "tiny")))
    pairs = Workdir(imported).read("candidates").head(120).select(
        pl.col("source_id"), pl.col("pair_id").alias("candidate_id"), pl.lit("The cat sat.").alias("source"),
        pl.col("paraphrase"))
    probs = {}
    for name in ("here", "ray"):
        root = tmp_path / name
        shutil.copytree(imported, root)
        with Workdir(root) as wd:
            backend = RayBackend(ExecutionConfig(backend="ray"), root / "state" / "ray") if name == "ray" else None
            probs[name] = nli.both_directions(wd, cfg, pairs, backend=backend)
    for a, b in zip(probs["here"], probs["ray"], strict=True):
        assert a.size == 120 and np.array_equal(a, b)
    caches = [Workdir(tmp_path / n).read("nli_cache").sort("premise_id", "hypothesis_id") for n in ("here", "ray")]
    assert caches[0].height == 240 and caches[0].equals(caches[1])


def test_a_ray_run_killed_mid_score_resumes_and_embeds_nothing_twice(imported, one_pass, tmp_path, ray_local):
    """A driver on the session's Ray instance SIGKILLed mid-score; the rerun ends with the one-pass tables and
    neither embeds nor parses a text again."""
    root = tmp_path / "wd"
    shutil.copytree(imported, root)
    address = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PARADISTILL_PROGRESS": "plain"}
    cmd = [sys.executable, "-m", "pipelines.cli", "curate", "-w", str(root), "-r", "diverse",
           "--partition-size", "64", "--workers", "2", "--ray-address", address]
    _kill_when(cmd, lambda: _shards(root, "scores", "part-set-*-*-*.parquet") >= 2, env, timeout=400)
    embedded = Workdir(root).count("embeddings")
    assert embedded > 0
    r = recipe(64, 2)
    r.execution.backend = "ray"
    res = runner.curate(root, r, progress=False)
    assert res["embed"]["embedded"] == 0 and res["score"]["parse"]["parsed"] == 0
    assert res["score"]["partitions_reused"] >= 2
    wd = Workdir(root)
    assert wd.count("embeddings") == embedded and wd.read("embeddings").get_column("text_id").is_unique().all()
    assert_same_tables(root, one_pass)


CLUSTER_SCRIPT = """
import sys
from pathlib import Path
from ray.cluster_utils import Cluster
from pipelines import runner
from tests.test_partitions import recipe

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 80 * 1024 ** 2,
                                                        "include_dashboard": False})
cluster.add_node(num_cpus=2, object_store_memory=80 * 1024 ** 2)
cluster.wait_for_nodes()
r = recipe(200, "auto")
r.execution.backend, r.execution.ray_address = "ray", cluster.address
try:
    runner.curate(Path(sys.argv[1]), r, progress=False)
    import ray
    print("nodes", sum(1 for n in ray.nodes() if n["Alive"]), "cpus", int(ray.cluster_resources()["CPU"]))
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
"""


def test_a_two_node_ray_cluster_gives_the_tables_of_one_pass(imported, one_pass, tmp_path):
    """A `ray.cluster_utils.Cluster` of two nodes (its own processes, beside the session's instance): the run
    joins it by address and writes the one-pass tables."""
    root = tmp_path / "wd"
    shutil.copytree(imported, root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, str(root)], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nodes 2 cpus 4" in proc.stdout
    assert_same_tables(root, one_pass)
    assert_same_vectors(root, one_pass)


def test_the_ray_backend_without_ray_installed_is_one_line(imported, tmp_path, monkeypatch):
    from schemas.errors import RecipeError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as it does without the extra
    r = recipe(200, 2)
    r.execution.backend = "ray"
    root = tmp_path / "wd"
    shutil.copytree(imported, root)
    with pytest.raises(RecipeError, match=r"pip install 'paradistill\[ray\]'"):
        runner.curate(root, r, upto="score", progress=False)


def test_an_unknown_backend_on_the_command_line_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", "-w", str(tmp_path), "--backend", "spark"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")][0].count("backend") >= 1


def test_parse_workers_are_replaced_in_rounds_and_parse_the_same(imported, one_pass, tmp_path, monkeypatch):
    """Fresh parse workers every few tasks (spaCy's vocabulary grows with what a worker has parsed): the
    analyses equal one pass's."""
    from pipelines.pool import Pool
    from pipelines.steps import analyses
    from pipelines.steps.pairs import PairTexts, unique_pairs, unique_texts

    monkeypatch.setattr(analyses, "WORKER_TASKS", 2)
    recycled = []
    monkeypatch.setattr(Pool, "recycle", lambda self: (recycled.append(1), Pool.close(self)))
    root = tmp_path / "wd"
    shutil.copytree(imported, root)
    wd = Workdir(root)
    spacy_model = recipe(64, 2).score.spacy_model
    with wd, Pool(2) as pool:
        stats = analyses.parse_missing(wd, unique_texts(unique_pairs(wd, texts=False)), spacy_model, pool, 400,
                                       store=PairTexts.open(wd))
    assert stats["task_texts"] == 200 and len(recycled) >= 2
    cols = ["text_id", "lemmas", "tree", "n_tokens"]
    got, ref = (Workdir(r).read("analyses").select(cols).sort("text_id") for r in (root, one_pass))
    assert got.equals(ref)
