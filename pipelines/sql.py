"""Read-only SQL over the workdir's tables: DuckDB views over the parquet shards, confined to the workdir."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import duckdb
import polars as pl

from pipelines.store import Workdir, glob_escape
from schemas.errors import QueryError

_ALLOWED = {"SELECT", "EXPLAIN"}
_COMMENTS = re.compile(r"\s+|--[^\n]*(\n|$)|/\*.*?\*/", re.S)


def _statement_name(st: duckdb.Statement) -> tuple[str, str]:
    """(DuckDB's statement type, the statement as the user wrote it: its leading keyword(s), upper case)."""
    try:
        kind = str(st.type).rsplit(".", 1)[-1]
    except ValueError:  # a statement type this duckdb's Python enum does not name (e.g. UPDATE EXTENSIONS)
        kind = "UNKNOWN"
    text = st.query
    while (m := _COMMENTS.match(text)) and m.end() > 0:
        text = text[m.end():]
    words = re.findall(r"[A-Za-z_]+", text[:40])
    word = words[0].upper() if words and text[:1].isalpha() else kind
    if word == "FORCE" and len(words) > 1:
        word = f"FORCE {words[1].upper()}"
    elif word == "WITH":  # WITH ... INSERT: the CTE's statement
        word = kind
    return kind, word


def check_read_only(query: str) -> None:
    """Refuse anything but SELECT/EXPLAIN (SHOW, DESCRIBE and SUMMARIZE are SELECTs), before running it."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"SQL: {str(e).splitlines()[0]}") from None
    if not statements:
        raise QueryError("SQL: empty statement; pass a SELECT, e.g. \"SELECT count(*) FROM sources\"")
    for st in statements:
        kind, name = _statement_name(st)
        if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs what it explains: that must be a SELECT too
            inner = _explained(st.query)
            kind, name = _statement_name(inner) if inner is not None else ("UNKNOWN", "EXPLAIN")
            name = f"EXPLAIN of {name}"
        if kind not in _ALLOWED:
            raise QueryError(f"SQL: {name} statements are refused (the catalog is read-only); "
                             "use SELECT, SHOW TABLES or DESCRIBE")


_EXPLAIN = re.compile(r"EXPLAIN\s+(ANALY[SZ]E\s+)?(\([^)]*\)\s*)?", re.I)


def _explained(query: str) -> duckdb.Statement | None:
    """The statement an EXPLAIN [ANALYZE] [(options)] wraps, or None when it cannot be parsed alone."""
    text = query
    while (m := _COMMENTS.match(text)) and m.end() > 0:
        text = text[m.end():]
    m = _EXPLAIN.match(text)
    if m is None:
        return None
    try:
        inner = duckdb.extract_statements(text[m.end():])
    except duckdb.Error:
        return None
    return inner[0] if len(inner) == 1 else None


def confine(con: duckdb.DuckDBPyConnection, allowed_dirs: Iterable[str | Path]) -> None:
    """Let `con` read files only under `allowed_dirs`, and lock that in.

    After this the connection's SQL cannot read, glob, write or attach any other file, reach the network,
    or install or load an extension, and cannot change a setting back (`lock_configuration`). Objects made
    before the call (views over the allowed folders) keep working. The order matters: allowed_directories
    must be set while external access is still on.
    """
    dirs = [str(Path(d).resolve()).rstrip("/") + "/" for d in allowed_dirs]
    listed = ", ".join("'" + d.replace("'", "''") + "'" for d in dirs)
    # DuckDB adds its spill folder (default `.tmp` under the current directory) to the allowed list: keep it
    # inside the first allowed folder's parent, hidden, instead of wherever the user stands
    spill = str(Path(dirs[0]).parent / ".duckdb-spill").replace("'", "''")
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute(f"SET allowed_directories = [{listed}]")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _attach_catalog(con: duckdb.DuckDBPyConnection, wd: Workdir) -> bool:
    """Attach catalog.duckdb read-only as "catalog"; False when missing, busy or unreadable."""
    if not wd.catalog_path.exists():
        return False
    path = str(wd.catalog_path).replace("'", "''")
    try:
        con.execute(f"ATTACH '{path}' AS \"catalog\" (READ_ONLY)")
    except duckdb.Error:  # a writer holds it for a moment, or it is damaged: the in-memory views serve
        return False
    return True


def _mend_catalog(wd: Workdir) -> None:
    """Rewrite catalog.duckdb (missing, or written for another folder), so a plain DuckDB client reads this
    workdir too. Best effort: a read-only or busy catalog is left as it is (paradistill sql does not need it)."""
    try:
        wd.refresh_catalog(attempts=1)
    except (duckdb.Error, OSError):
        pass


def connect(workdir: str | Workdir, mend: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose views read `workdir`'s tables, confined to its tables/ folder (see `confine`).

    It uses catalog.duckdb when the catalog was written for the folder the workdir is in now; otherwise (a copy
    or a move, a read-only or busy catalog) it builds the same views in memory from where the workdir is, so
    the SQL always reads this workdir's rows, never another folder's. With `mend`, a catalog written for
    another folder is also rewritten on the way (when it can be) for plain DuckDB clients.
    """
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    wd.require()
    con = duckdb.connect(":memory:")
    try:
        attached = _attach_catalog(con, wd)
        # before any of the file's views runs (they are not ours until checked); DuckDB checks the glob as
        # written, so a root holding [, * or ? is allowed in its escaped spelling too
        confine(con, [wd.tables_dir, glob_escape(str(wd.tables_dir))])
        if attached and wd.catalog_matches(con, "catalog"):  # written for this folder: its views are ours
            con.execute('USE "catalog"')
        else:  # missing, busy, or written for another folder (a copy, a move) or an older layout
            if attached:
                con.execute('DETACH "catalog"')
                if mend:
                    _mend_catalog(wd)
            elif mend and not wd.catalog_path.exists():
                _mend_catalog(wd)
            for view, sql in wd.views().items():
                con.execute(f'CREATE VIEW "{view}" AS {sql}')
    except duckdb.Error as e:
        con.close()
        raise QueryError(f"{wd.tables_dir}: cannot read the tables ({str(e).splitlines()[0]})") from None
    return con


def query(workdir: str | Workdir, sql: str) -> pl.DataFrame:
    """Run read-only SQL on the workdir's tables and return the last statement's result as Polars.

    The SQL sees the same views as catalog.duckdb (sources, generations, ..., `<table>_history`) and can read
    no file outside the workdir's tables/ folder.
    """
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    wd.require()
    check_read_only(sql)
    con = connect(wd)
    try:
        frame = pl.DataFrame()
        for st in duckdb.extract_statements(sql):
            rel = con.sql(st.query)
            frame = rel.pl() if rel is not None else pl.DataFrame()
        return frame
    except pl.exceptions.PolarsError as e:  # a DuckDB type Polars cannot hold (INTERVAL, UNION, ...)
        raise QueryError("SQL: a result column has a type paradistill cannot show "
                         f"({str(e).splitlines()[0].split('. ')[0]}); cast it, e.g. CAST(x AS VARCHAR)") from None
    except duckdb.PermissionException as e:
        raise QueryError(f"SQL: {str(e).splitlines()[0]} (paradistill sql reads only the workdir's tables)"
                         ) from None
    except duckdb.Error as e:
        raise QueryError(f"SQL: {str(e).splitlines()[0]}") from None
    except RuntimeError as e:  # DuckDB's answer to Ctrl-C while a query runs
        if "interrupted" in str(e).lower():
            raise KeyboardInterrupt from None
        raise
    finally:
        con.close()


def frame_to_csv(df: pl.DataFrame) -> str:
    """CSV text of `df` as Polars writes it; list, array, struct and map columns as JSON text (NaN/inf as null,
    nulls empty), binary ones as hex, since CSV has no cell types of its own for them."""
    from pipelines.report import jsonable

    def as_text(c: str, t: pl.DataType) -> pl.Series:
        values = df.get_column(c).to_list()
        if t == pl.Binary:
            return pl.Series(c, [None if v is None else v.hex() for v in values], dtype=pl.String)
        return pl.Series(c, [None if v is None else json.dumps(jsonable(v), ensure_ascii=False, allow_nan=False)
                             for v in values], dtype=pl.String)

    no_csv_cell = (pl.List, pl.Array, pl.Struct, pl.Binary, *((pl.Map,) if hasattr(pl, "Map") else ()))
    nested = {c: t for c, t in df.schema.items() if isinstance(t, no_csv_cell)}
    if nested:
        df = df.with_columns(as_text(c, t) for c, t in nested.items())
    return df.write_csv()
