"""The workdir: append-only parquet shards per table (atomic), a DuckDB catalog of views, a run lock.

Layout: `tables/<table>/part-*.parquet`, `catalog.duckdb` (views only), `runs/<run_id>/manifest.json`,
`state/` (completed-stage markers), `exports/<name>/<version>/`.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from pathlib import Path

import duckdb
import polars as pl

from schemas.errors import StateError
from schemas.tables import TABLES, VERSIONED, conform, empty_frame

CATALOG_MARKER = "paradistill_catalog"  # a one-row view: the root the catalog's views were written for
CATALOG_LAYOUT = 2  # bump when the views' SQL changes: older catalogs are rewritten by the next command


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp name in the same folder, fsync, rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


_GLOB_ESCAPES = {"[": "[[]", "*": "[*]", "?": "[?]"}  # DuckDB glob: a literal character in a class


def glob_escape(path: str) -> str:
    """`path` as a DuckDB glob that matches only itself (user folders may hold [, * or ?)."""
    return "".join(_GLOB_ESCAPES.get(ch, ch) for ch in path)

class Workdir:
    """One corpus project's store. Tables are read with Polars and queried through DuckDB views."""

    def __init__(self, root: str | Path):
        self._given_root = Path(os.path.abspath(root))  # as spelled (through symlinks), for the catalog guard
        self.root = self._given_root.resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StateError(f"{root}: exists and is not a directory; choose another --workdir")
        self.tables_dir = self.root / "tables"
        self.catalog_path = self.root / "catalog.duckdb"
        self._lock_file = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def create(self) -> Workdir:
        """Make the folders and the catalog (idempotent)."""
        if "?" in str(self.root):  # DuckDB reads '?' in a database path as the start of URI options
            raise StateError(f"{self._given_root}: a workdir path cannot contain '?' (DuckDB cannot keep its "
                             "catalog there); pick another folder name")
        for sub in ("tables", "runs", "state", "exports"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        missing = [t for t in TABLES if not self.shards(t)]
        for table in missing:  # a zero-row shard: every view is a glob view from the start, never rewritten
            self._write_shard(table, empty_frame(table), "part-00000000000000000000-schema.parquet")
        if missing or self.catalog_is_current() is False:  # new tables, or a copied/moved/older catalog
            # (None: a reader holds it; its views still see new shards, so no need to wait for it)
            self.refresh_catalog()
        return self

    def exists(self) -> bool:
        return self.tables_dir.is_dir()

    def require(self) -> Workdir:
        if not self.exists():
            raise StateError(f"{self.root}: not a paradistill workdir (no tables/); run `paradistill ingest` "
                             "or `paradistill run RECIPE` first, or pass the right --workdir")
        return self

    def lock(self) -> None:
        """Hold an exclusive lock for a writing run; a second writer gets a clear error."""
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise StateError(f"{self.root}: another paradistill process is writing this workdir; wait for it "
                             "or use another --workdir") from None
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Workdir:
        self.lock()
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    # -- tables ----------------------------------------------------------------------------------------
    def shards(self, table: str) -> list[Path]:
        return sorted((self.tables_dir / table).glob("part-*.parquet"))

    def append(self, table: str, df: pl.DataFrame, key: str | None = None) -> Path | None:
        """Write `df` as one new shard of `table` (atomic); zero rows write nothing.

        With `key`, the shard is named by it, so writing the same result set again replaces it (idempotent).
        """
        if df.height == 0:
            return None
        df = conform(df, table) if table in TABLES else df
        first = next((self.tables_dir / table).glob("part-*.parquet"), None) is None  # not a listing per append
        name = f"part-set-{key}.parquet" if key else f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self._write_shard(table, df, name)
        if first:  # a view over a glob sees later shards by itself; only a new table needs a view
            self.refresh_catalog()
        return path

    def _write_shard(self, table: str, df: pl.DataFrame, name: str) -> Path:
        folder = self.tables_dir / table
        folder.mkdir(parents=True, exist_ok=True)
        path, tmp = folder / name, folder / f".tmp-{name}"
        df.write_parquet(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def scan(self, table: str) -> pl.LazyFrame:
        shards = self.shards(table)
        if not shards:
            return empty_frame(table).lazy() if table in TABLES else pl.LazyFrame()
        if table not in TABLES:
            return pl.scan_parquet(shards, glob=False)
        # shards written before a column was declared read it as null (older workdirs keep working)
        return pl.scan_parquet(shards, glob=False, schema=TABLES[table], missing_columns="insert",
                               extra_columns="ignore")

    def read(self, table: str) -> pl.DataFrame:
        return self.scan(table).collect()

    def count(self, table: str) -> int:
        if not self.shards(table):
            return 0
        return self.scan(table).select(pl.len()).collect().item()

    def table_names(self) -> list[str]:
        names = set(TABLES)
        if self.tables_dir.is_dir():
            names |= {p.name for p in self.tables_dir.iterdir() if p.is_dir()}
        return sorted(names)

    # -- catalog ---------------------------------------------------------------------------------------
    def _read_sql(self, table: str) -> str:
        folder = glob_escape(str(self.tables_dir / table))  # a root like 'w [1]' is a folder, not a pattern
        glob = f"{folder}/part-*.parquet".replace("'", "''")
        return f"read_parquet('{glob}', union_by_name=true)"

    def _view_sql(self, table: str) -> str:
        return f"SELECT * FROM {self._read_sql(table)}"

    def _views(self, table: str) -> dict[str, str]:
        """View name -> SQL. A versioned table's view shows its current set; `<table>_history` shows all.

        `labels` shows the newest row of each label id, `labels_history` every row. `request_failures` shows the
        requests still failed (no generation since; the latest failure of each);
        `request_failures_history` every failure row.
        """
        answered = [t for t in ("generations", "labels") if self.shards(t)]  # a response, or a judge's label
        if table == "request_failures" and answered:
            exists = " AND ".join(f"NOT EXISTS (SELECT 1 FROM {self._read_sql(t)} AS g WHERE g.request_id = "
                                  "f.request_id)" for t in answered)
            still = (f"SELECT f.* FROM {self._read_sql(table)} AS f WHERE {exists} "
                     "QUALIFY row_number() OVER (PARTITION BY f.request_id ORDER BY f.\"at\" DESC) = 1")
            return {f"{table}_history": self._view_sql(table), table: still}
        if table == "labels":  # a newer label of the same pair (and judge) replaces an older one
            newest = (f"SELECT * FROM {self._read_sql(table)} "
                      "QUALIFY row_number() OVER (PARTITION BY label_id ORDER BY \"at\" DESC) = 1")
            return {f"{table}_history": self._view_sql(table), table: newest}
        if table not in VERSIONED:
            return {table: self._view_sql(table)}
        key = VERSIONED[table]
        current = (f"(SELECT set_id FROM ({self._view_sql('current_sets')}) WHERE \"table\" = '{table}' "
                   "ORDER BY \"at\" DESC LIMIT 1)") if self.shards("current_sets") else "NULL"
        return {f"{table}_history": self._view_sql(table),
                table: f"SELECT * FROM ({self._view_sql(table)}) WHERE {key} = {current}"}

    def current_set(self, table: str) -> str | None:
        """The id of `table`'s current result set (see schemas.tables.VERSIONED), or None."""
        rows = (self.scan("current_sets").filter(pl.col("table") == table).sort("at")
                .select("set_id").collect())
        return rows.get_column("set_id")[-1] if rows.height else None

    def make_current(self, table: str, set_id: str) -> None:
        self.append("current_sets", pl.DataFrame({"table": [table], "set_id": [set_id], "at": [time.time_ns()]}))

    def read_current(self, table: str) -> pl.DataFrame:
        """Rows of the current set of a versioned table (empty when none)."""
        set_id = self.current_set(table)
        return self.scan(table).filter(pl.col(VERSIONED[table]) == set_id).collect()

    def views(self) -> dict[str, str]:
        """Every view of the catalog (name -> SELECT) over this workdir's shards, built from where it is now."""
        return {v: sql for t in self.table_names() if self.shards(t) for v, sql in self._views(t).items()}

    def _guard(self) -> str:
        """A condition that raises unless the database holding the view is this workdir's catalog file.

        The stored views read absolute paths: a copied catalog would silently read the original's shards and
        a moved one its old place. DuckDB reports the absolute path of every attached database file, so a view
        compares it with the path it was written for, as resolved and as the caller spelled it (symlinks).
        """
        paths = sorted({str(self.catalog_path), str(self._given_root / "catalog.duckdb")})
        listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        msg = (f"this catalog.duckdb was written for the workdir {self.root} and has been copied or moved: "
               "run any paradistill command on the workdir it is in now (e.g. paradistill sql -w DIR "
               "\"SHOW TABLES\") to rewrite its views, or query it with paradistill sql")
        msg = msg.replace("'", "''")
        return (f"(SELECT CASE WHEN count(*) > 0 THEN true ELSE error('{msg}') END "
                f"FROM duckdb_databases() WHERE path IN ({listed}))")

    def catalog_matches(self, con: duckdb.DuckDBPyConnection, database: str) -> bool:
        """Whether the catalog attached to `con` as `database` was written for this folder, by this layout, and
        has a view for every table that has shards."""
        try:
            row = con.execute(f'SELECT root, layout FROM "{database}".{CATALOG_MARKER}').fetchone()
            names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE database_name = ?",
                                               [database]).fetchall()}
        except duckdb.Error:  # written before the marker existed
            return False
        return row == (str(self.root), CATALOG_LAYOUT) and set(self.views()) <= names

    def catalog_is_current(self) -> bool | None:
        """True when catalog.duckdb's views were written for this folder by this layout; None if it is busy."""
        if not self.catalog_path.exists():
            return False
        try:
            # the file's views are not ours until checked: whatever they hold may read no file
            con = duckdb.connect(str(self.catalog_path), read_only=True, config={"enable_external_access": False})
        except duckdb.Error:  # a writer holds it, or it cannot be read: nothing to decide now
            return None
        try:
            database = con.execute("SELECT current_database()").fetchone()[0]
            return self.catalog_matches(con, database)
        finally:
            con.close()

    def refresh_catalog(self, attempts: int = 20) -> bool:
        """(Re)create one view per table. Holds the catalog only for that moment; retries if a reader has it.

        Every stored view carries a guard (see `_guard`) and the catalog records the root it was written for
        in the `paradistill_catalog` view, so `create()` rewrites a copied or moved catalog.
        Returns False (and leaves the old views, which still see new shards) if it stayed busy or unwritable.
        """
        views = self.views()  # create() gives declared tables one shard
        guard = self._guard()
        root = str(self.root).replace("'", "''")
        for _ in range(attempts):
            try:
                con = duckdb.connect(str(self.catalog_path))
            except (duckdb.IOException, duckdb.ConnectionException):  # a reader holds it (other/same process)
                time.sleep(0.1)
                continue
            try:  # one transaction: a reader never sees half the views rewritten
                con.execute("BEGIN")
                for view, sql in views.items():
                    con.execute(f'CREATE OR REPLACE VIEW "{view}" AS SELECT * FROM ({sql}) WHERE {guard}')
                con.execute(f"CREATE OR REPLACE VIEW {CATALOG_MARKER} AS "
                            f"SELECT '{root}' AS root, {CATALOG_LAYOUT} AS layout")
                con.execute("COMMIT")
            finally:
                con.close()
            return True
        return False

    # -- stage markers ---------------------------------------------------------------------------------
    def stage_done(self, stage: str, key: str) -> dict | None:
        path = self.root / "state" / f"{stage}-{key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def mark_stage_done(self, stage: str, key: str, info: dict) -> None:
        atomic_write_json(self.root / "state" / f"{stage}-{key}.json", info)
