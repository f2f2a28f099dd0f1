"""Store, catalog, SQL and export on a workdir filled through the real ingest and candidates steps."""

import json

import duckdb
import polars as pl
import pytest

from curation.export import SPLITS, assign_splits
from pipelines import runner
from pipelines.sql import query
from pipelines.store import Workdir
from schemas.errors import QueryError
from tests.conftest import cli, error_line, fake_generations


@pytest.fixture()
def filled(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("".join(f"Sentence number {i} is here.\n" for i in range(30)))
    wd_path = tmp_path / "wd"
    runner.ingest([str(src)], wd_path, progress=False)
    with Workdir(wd_path) as wd:
        fake_generations(wd, 30)
    runner.candidates(wd_path)
    return wd_path


def test_shards_are_atomic_and_catalog_sees_new_ones(filled):
    wd = Workdir(filled)
    assert not list((filled / "tables").rglob(".tmp-*"))
    con = duckdb.connect(str(wd.catalog_path), read_only=True)  # a user holding the catalog open
    try:
        before = con.execute("select count(*) from candidates").fetchall()[0][0]
        with wd:
            wd.append("candidates", wd.read("candidates").head(1))
        after = con.execute("select count(*) from candidates").fetchall()[0][0]
    finally:
        con.close()
    assert (before, after) == (60, 61)


def test_candidates_flag_source_copies(filled):
    df = query(filled, "select count(*) filter (where is_source_copy) as copies, count(*) as n from candidates")
    assert df.row(0) == (30, 60)


def test_sql_is_read_only_and_formats(filled):
    with pytest.raises(QueryError, match="INSERT statements are refused"):
        query(filled, "insert into sources select * from sources")
    for stmt in ("COPY sources TO 'x.csv'", "CREATE TABLE t AS SELECT 1", "ATTACH 'other.db'"):
        proc = cli("sql", "-w", str(filled), stmt)
        assert proc.returncode == 6 and "refused" in error_line(proc)
    proc = cli("sql", "-w", str(filled), "select count(*) as n from sources", "--format", "json", check=True)
    assert json.loads(proc.stdout) == [{"n": 30}]
    proc = cli("sql", "-w", str(filled), "select count(*) as n from sources", "--format", "csv", check=True)
    assert proc.stdout.splitlines() == ["n", "30"]
    proc = cli("sql", "-w", str(filled), "select nope from sources")
    assert proc.returncode == 6 and "nope" in error_line(proc)


def test_export_versions_splits_and_loads_with_datasets(filled):
    import datasets

    proc = cli("export", "-w", str(filled), "--name", "para", check=True)
    path = filled / "exports/para/0.1.0"
    assert str(path) in proc.stdout
    ds = datasets.load_dataset(str(path))
    assert set(ds) == set(SPLITS)
    assert sum(d.num_rows for d in ds.values()) == 30  # source copies are left out
    by_split = {s: set(ds[s]["source_id"]) for s in SPLITS}
    assert not (by_split["train"] & by_split["validation"]) and not (by_split["train"] & by_split["test"])
    card = (path / "README.md").read_text()
    assert "configs:" in card and "dataset_info:" in card and "license: cc-by-4.0" in card
    assert "| candidate pairs | 60 |" in card
    # patch bump, then an explicit existing version is refused
    cli("export", "-w", str(filled), "--name", "para", check=True)
    assert (filled / "exports/para/0.1.1/README.md").exists()
    proc = cli("export", "-w", str(filled), "--name", "para", "--version", "0.1.0")
    assert proc.returncode == 5 and "never overwritten" in error_line(proc)


def test_split_assignment_is_stable_and_fills_every_split():
    ids = [f"s{i}" for i in range(5)]
    pairs = pl.DataFrame({"source_id": ids * 2})
    a = assign_splits(pairs, {"train": 0.8, "validation": 0.1, "test": 0.1})
    assert set(a["split"]) == set(SPLITS)
    assert a.group_by("source_id").agg(pl.col("split").n_unique())["split"].max() == 1
    assert a.equals(assign_splits(pairs, {"train": 0.8, "validation": 0.1, "test": 0.1}))


def test_a_workdir_from_before_a_column_was_declared_still_curates(filled):
    """candidates.context_id came with the contextual teacher: shards written before it read it as null."""
    folder = filled / "tables" / "candidates"
    for shard in folder.glob("part-*.parquet"):
        pl.read_parquet(shard).drop("context_id").write_parquet(shard)
    wd = Workdir(filled)
    assert wd.read("candidates").get_column("context_id").null_count() == 60
    out = runner.curate(filled, upto="filter", progress=False)
    decided = query(filled, "select count(*) from decisions").item()
    assert decided > 0 and out["filter"]["pairs"] == decided
