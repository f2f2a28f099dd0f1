"""A copied or moved workdir answers SQL with its own rows; SQL reads nothing outside the workdir.

Through `paradistill sql`, the Python `query()` and a plain `duckdb.connect(catalog, read_only=True)`.
"""

import shutil
import subprocess

import duckdb
import polars as pl
import pytest

from pipelines import runner
from pipelines.sql import confine, frame_to_csv, query
from pipelines.store import Workdir
from schemas.errors import QueryError
from schemas.tables import TABLES
from tests.conftest import cli, error_line

N = 12


@pytest.fixture()
def work(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("".join(f"Sentence number {i} is here.\n" for i in range(N)))
    runner.ingest([str(src)], tmp_path / "work", progress=False)
    return tmp_path / "work"


def _add_sources(root, n: int, tag: str) -> None:
    """New source rows written straight to a shard, without any paradistill command touching the catalog."""
    df = pl.DataFrame({"source_id": [f"{tag}{i}" for i in range(n)], "text": [f"{tag} text {i}." for i in range(n)],
                       "origin": "x", "origin_row": list(range(1, n + 1)), "n_chars": 9, "ingest_id": tag})
    Workdir(root)._write_shard("sources", df, f"part-{tag}.parquet")


def _plain(root, sql: str):
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _count_cli(root) -> int:
    proc = cli("sql", "-w", str(root), "SELECT count(*) AS n FROM sources", "--format", "csv", check=True)
    return int(proc.stdout.splitlines()[1])


COUNT = "SELECT count(*) FROM sources"


def test_a_copy_answers_with_its_own_rows_before_any_command(work, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(work), str(copy)], check=True)
    _add_sources(copy, 5, "c")
    # a plain client on the copy's catalog refuses loudly rather than reading the original's shards
    with pytest.raises(duckdb.Error, match="copied or moved"):
        _plain(copy, COUNT)
    with pytest.raises(duckdb.Error, match="copied or moved"):
        _plain(copy, "SELECT count(*) FROM quarantine")  # an empty table too: no silent zero
    assert query(copy, COUNT).item() == N + 5
    assert _count_cli(copy) == N + 5
    # that paradistill sql rewrote the copy's views: now a plain client reads the copy
    assert _plain(copy, COUNT) == [(N + 5,)]
    # the original answers as before, everywhere
    assert _plain(work, COUNT) == [(N,)] and query(work, COUNT).item() == N and _count_cli(work) == N


def test_a_moved_workdir_answers_and_is_mended(work, tmp_path):
    moved = tmp_path / "moved"
    work.rename(moved)
    with pytest.raises(duckdb.Error):  # its views point at a folder that is gone: an error, never rows
        _plain(moved, COUNT)
    assert query(moved, COUNT).item() == N
    assert _count_cli(moved) == N
    assert _plain(moved, COUNT) == [(N,)]


def test_a_move_onto_another_workdirs_old_place_never_reads_the_newcomer(work, tmp_path):
    """mv work moved; cp -a of another workdir to `work`: moved's catalog must not read the new `work`."""
    moved = tmp_path / "moved"
    work.rename(moved)
    other = tmp_path / "other"
    shutil.copytree(moved, other, symlinks=True)
    _add_sources(other, 3, "o")
    other.rename(work)
    with pytest.raises(duckdb.Error, match="copied or moved"):
        _plain(moved, COUNT)
    assert query(moved, COUNT).item() == N and query(work, COUNT).item() == N + 3


def test_a_copy_whose_catalog_cannot_be_rewritten_still_answers_its_own_rows(work, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    _add_sources(copy, 4, "r")
    holder = duckdb.connect(str(copy / "catalog.duckdb"))  # another process writing it: the rewrite must wait
    try:
        assert _count_cli(copy) == N + 4
    finally:
        holder.close()


def test_any_command_rewrites_a_copied_catalog(work, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    more = tmp_path / "more.txt"
    more.write_text("A brand new sentence.\n")
    cli("ingest", "-w", str(copy), str(more), check=True)
    assert _plain(copy, COUNT) == [(N + 1,)] and _plain(work, COUNT) == [(N,)]


def test_a_catalog_written_before_the_guard_is_rewritten_and_answers_the_same(work):
    """A workdir made by an earlier version (views without guard, no paradistill_catalog) keeps answering."""
    wd = Workdir(work)
    con = duckdb.connect(str(wd.catalog_path))
    con.execute("DROP VIEW paradistill_catalog")
    for view, sql in wd.views().items():
        con.execute(f'CREATE OR REPLACE VIEW "{view}" AS {sql}')
    con.close()
    assert _plain(work, COUNT) == [(N,)] and not wd.catalog_is_current()
    assert query(work, COUNT).item() == N
    assert wd.catalog_is_current() and _plain(work, COUNT) == [(N,)]


# -- confinement ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT count(*) FROM glob('/**')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('TABLES/../../x.parquet')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
])
def test_sql_reads_nothing_outside_the_workdir(work, sql):
    proc = cli("sql", "-w", str(work), sql.replace("TABLES", str(work / "tables")))
    line = error_line(proc)
    assert proc.returncode == 6 and "Permission Error" in line and "reads only the workdir's tables" in line
    assert "root:" not in proc.stdout


def test_sql_cannot_read_another_workdir_by_path(work, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    proc = cli("sql", "-w", str(copy), f"SELECT count(*) FROM read_parquet('{work}/tables/sources/*.parquet')")
    assert proc.returncode == 6 and "Permission Error" in error_line(proc)


@pytest.mark.parametrize(("sql", "name"), [
    ("INSTALL httpfs", "INSTALL"), ("FORCE INSTALL httpfs", "FORCE INSTALL"), ("LOAD httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"), ("  -- a comment\n attach 'x.db'", "ATTACH"),
    ("COPY sources TO 'x.csv'", "COPY"), ("UPDATE EXTENSIONS", "UPDATE"),
])
def test_refusals_name_the_statement_written(work, sql, name):
    proc = cli("sql", "-w", str(work), sql)
    assert proc.returncode == 6 and error_line(proc).startswith(f"error: SQL: {name} statements are refused")


def test_confine_keeps_views_and_locks_settings(work, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    wd = Workdir(work)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW sources AS {wd.views()['sources']}")
    confine(con, [wd.tables_dir])
    assert con.execute(COUNT).fetchone() == (N,)
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"SELECT * FROM read_csv('{outside}')")
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")
    con.close()


# -- still-failed requests ------------------------------------------------------------------------------------
def _rows(table: str, rows: list[dict]) -> pl.DataFrame:
    """Rows of `table` with every declared column (null unless given)."""
    return pl.DataFrame([{c: r.get(c) for c in TABLES[table]} for r in rows], schema=TABLES[table])


def test_request_failures_shows_what_is_still_failed(work):
    with Workdir(work) as wd:
        wd.append("request_failures", _rows("request_failures", [
            {"request_id": "r1", "error": "HTTP 500", "at": 1}, {"request_id": "r2", "error": "HTTP 500", "at": 1},
            {"request_id": "r2", "error": "HTTP 429", "at": 2}]))
        wd.append("generations", _rows("generations", [{"request_id": "r1", "items": ["a"]}]))
    still = "SELECT request_id, error FROM request_failures ORDER BY 1"
    assert query(work, still).rows() == [("r2", "HTTP 429")]  # r1 succeeded later; r2's latest failure
    assert _plain(work, still) == [("r2", "HTTP 429")]
    assert query(work, "SELECT count(*) FROM request_failures_history").item() == 3
    assert set(query(work, "SELECT * FROM request_failures").columns) == set(TABLES["request_failures"])


# -- CSV of list columns --------------------------------------------------------------------------------------
def test_frame_to_csv_writes_nested_columns_as_json():
    df = pl.DataFrame({"id": [1, 2], "items": [["é \"q\"", "b"], None], "s": [{"a": 1}, {"a": None}]})
    assert frame_to_csv(df).splitlines() == ["id,items,s", '1,"[""é \\""q\\"""", ""b""]","{""a"": 1}"',
                                             '2,,"{""a"": null}"']
    assert frame_to_csv(pl.DataFrame({"n": [30]})) == pl.DataFrame({"n": [30]}).write_csv()


def test_sql_csv_of_a_list_column(work):
    with Workdir(work) as wd:
        wd.append("generations", _rows("generations", [{"request_id": "r1", "items": ["a", "b"]}]))
    proc = cli("sql", "-w", str(work), "SELECT request_id, items FROM generations", "--format", "csv")
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["request_id,items", 'r1,"[""a"", ""b""]"']


def test_query_errors_are_query_errors(work):
    with pytest.raises(QueryError, match="Permission Error"):
        query(work, "SELECT * FROM read_text('/etc/hostname')")


def test_views_built_in_memory_answer_like_the_stored_catalog(work, tmp_path):
    """The copy (views built from where it is) and the original (its catalog) list and count the same."""
    with Workdir(work) as wd:
        wd.append("request_failures", _rows("request_failures", [{"request_id": "r9", "at": 1}]))
        wd.make_current("scores", "none")
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    (copy / "catalog.duckdb").unlink()
    (copy / "catalog.duckdb").mkdir()  # cannot be rewritten: the views are built in memory
    names = [v for v in query(work, "SHOW TABLES").get_column("name") if v != "paradistill_catalog"]
    assert "request_failures_history" in names and "scores_history" in names
    assert query(copy, "SHOW TABLES").get_column("name").to_list() == names
    counts = " UNION ALL ".join(f"SELECT '{v}', count(*) FROM \"{v}\"" for v in names)
    assert query(copy, counts).rows() == query(work, counts).rows() == _plain(work, counts)


# -- found in review: writes through EXPLAIN ANALYZE, DuckDB's spill folder, the file's own views, odd roots --
@pytest.mark.parametrize("verb", ["EXPLAIN ANALYZE", "EXPLAIN (ANALYZE)", "explain  analyse"])
def test_explain_analyze_cannot_write_into_the_store(work, verb):
    shard = Workdir(work).shards("sources")[-1]
    proc = cli("sql", "-w", str(work), f"{verb} COPY (SELECT * FROM sources WHERE false) TO '{shard}' "
                                       "(FORMAT parquet)")
    assert proc.returncode == 6 and error_line(proc).startswith("error: SQL: EXPLAIN of COPY statements are refused")
    assert _count_cli(work) == N
    assert cli("sql", "-w", str(work), "EXPLAIN ANALYZE SELECT count(*) FROM sources").returncode == 0


def test_duckdbs_spill_folder_in_the_current_directory_is_not_readable(work, tmp_path):
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("not yours\n")
    proc = cli("sql", "-w", str(work), "SELECT content FROM read_text('.tmp/secret.txt')", cwd=tmp_path)
    assert proc.returncode == 6 and "Permission Error" in error_line(proc)
    assert "not yours" not in proc.stdout


def test_a_crafted_catalog_view_runs_confined(work, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("x\n")
    con = duckdb.connect(str(work / "catalog.duckdb"))
    con.execute(f"CREATE OR REPLACE VIEW paradistill_catalog AS SELECT CASE WHEN (SELECT count(*) FROM "
                f"read_text('{outside}')) > 0 THEN '{Workdir(work).root}' END AS root, 2 AS layout")
    con.close()
    from pipelines.sql import connect

    con = connect(work, mend=False)
    try:  # the marker could not read the outside file, so the catalog is not trusted: in-memory views serve
        assert con.execute("SELECT current_database()").fetchone()[0] == "memory"
        assert con.execute(COUNT).fetchone()[0] == N
    finally:
        con.close()


@pytest.mark.parametrize("name", ["it's [w]", "w*", "[bold]w[/bold]"])
def test_a_workdir_named_like_a_glob_works(tmp_path, name):
    src = tmp_path / "s.txt"
    src.write_text("one sentence here.\nanother sentence here.\n")
    root = tmp_path / name
    cli("ingest", str(src), "-w", str(root), check=True)
    assert _count_cli(root) == 2
    assert _plain(root, COUNT) == [(2,)]


@pytest.mark.parametrize("sql", ["SELECT INTERVAL 1 DAY AS i", "SELECT union_value(k := 1) AS u"])
def test_result_types_polars_cannot_hold_are_one_line(work, sql):
    proc = cli("sql", "-w", str(work), sql)
    assert proc.returncode == 6 and "cast it, e.g. CAST(x AS VARCHAR)" in error_line(proc)


def test_csv_of_maps_blobs_and_nan(work):
    proc = cli("sql", "-w", str(work), "SELECT map([1], [2]) AS m, 'a'::BLOB AS b, [1.0, 'nan'::DOUBLE] AS l",
               "--format", "csv", check=True)
    assert proc.stdout.splitlines() == ["m,b,l", '"{""1"": 2}",61,"[1.0, null]"']


def test_a_workdir_path_with_a_question_mark_is_one_line(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("one sentence here.\n")
    proc = cli("ingest", str(src), "-w", str(tmp_path / "w?x"))
    assert proc.returncode == 5 and "a workdir path cannot contain '?'" in error_line(proc)
