"""Write-ahead journal for rows that must never be lost once produced (teacher responses cost money).

Each finished row is one JSON line, flushed to the OS before its request counts as done, so a `kill -9` loses at
most a line being written (its request is simply sent again). Journal files are compacted into one parquet shard
each, named after the file, so compacting the same file twice (a crash between the shard and the delete) writes
the same shard again instead of duplicating rows. Leftover files from a killed run are compacted at the next start.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import polars as pl

from pipelines.store import Workdir
from schemas.tables import TABLES


class Journal:
    """Append-only JSON lines for one table, rotated into parquet every `rotate_rows` rows or `rotate_s` seconds."""

    def __init__(self, wd: Workdir, table: str, rotate_rows: int = 20_000, rotate_s: float = 30.0):
        self.wd, self.table = wd, table
        self.folder = wd.root / "journal" / table
        self.rotate_rows, self.rotate_s = rotate_rows, rotate_s
        self._file = None
        self._path: Path | None = None
        self._rows = 0
        self._opened = 0.0

    def write(self, row: dict) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._path = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
            self._file = open(self._path, "a", encoding="utf-8")
            self._rows, self._opened = 0, time.monotonic()
        self._file.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._file.flush()
        self._rows += 1
        if self._rows >= self.rotate_rows or time.monotonic() - self._opened >= self.rotate_s:
            self.rotate()

    def rotate(self) -> None:
        """Close the current file and compact it (so DuckDB views see the rows while a long run goes on)."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        compact_file(self.wd, self.table, self._path)

    def close(self) -> None:
        self.rotate()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_lines(path: Path) -> list[dict]:
    """Every complete line of a journal file; a torn last line (killed mid-write) is ignored."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def compact_file(wd: Workdir, table: str, path: Path) -> int:
    """One parquet shard from one journal file (idempotent by file name), then the file is removed."""
    rows = read_lines(path)
    if rows:
        df = pl.DataFrame(rows, schema=TABLES[table], orient="row") if table in TABLES else pl.DataFrame(rows)
        wd.append(table, df, key=f"journal-{path.stem}")
    path.unlink(missing_ok=True)
    return len(rows)


def recover(wd: Workdir, table: str) -> int:
    """Compact journal files left by an interrupted run; returns the rows recovered."""
    folder = wd.root / "journal" / table
    if not folder.is_dir():
        return 0
    return sum(compact_file(wd, table, p) for p in sorted(folder.glob("*.jsonl")))
