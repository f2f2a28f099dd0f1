"""Read-only SQL over the workdir's catalog: DuckDB views over the parquet tables."""

from __future__ import annotations

import duckdb
import polars as pl

from pipelines.store import Workdir
from schemas.errors import QueryError

_ALLOWED = {"SELECT", "EXPLAIN"}


def check_read_only(query: str) -> None:
    """Refuse anything but SELECT/EXPLAIN (SHOW, DESCRIBE and SUMMARIZE are SELECTs), before running it."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"SQL: {str(e).splitlines()[0]}") from None
    if not statements:
        raise QueryError("SQL: empty statement; pass a SELECT, e.g. \"SELECT count(*) FROM sources\"")
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in _ALLOWED:
            raise QueryError(f"SQL: {kind} statements are refused (the catalog is read-only); "
                             "use SELECT, SHOW TABLES or DESCRIBE")


def query(workdir: str | Workdir, sql: str) -> pl.DataFrame:
    """Run read-only SQL on the workdir's catalog and return the last statement's result as Polars."""
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    wd.require()
    check_read_only(sql)
    if not wd.catalog_path.exists():
        wd.refresh_catalog()
    try:
        con = duckdb.connect(str(wd.catalog_path), read_only=True)
    except duckdb.Error as e:
        raise QueryError(f"{wd.catalog_path}: cannot open catalog ({str(e).splitlines()[0]})") from None
    try:
        frame = pl.DataFrame()
        for st in duckdb.extract_statements(sql):
            rel = con.sql(st.query)
            frame = rel.pl() if rel is not None else pl.DataFrame()
        return frame
    except duckdb.Error as e:
        raise QueryError(f"SQL: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
