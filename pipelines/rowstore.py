"""Row stores: one stored table's rows laid out once in a memory-mapped file, found by id.

A partition of a million-pair corpus needs the vectors (or parses) of its own texts only. Filtering the
parquet table for them reads the whole table each time (ids are hashes, so no statistics help); a row store
copies the selected rows once into a flat file (`.npy` for vectors, Arrow IPC for parses) beside a sorted id
index, so a partition costs a binary search and a gather. Pages read are handed back after each gather, so the
process' resident memory follows the partition, not the file. A store is rebuilt when its table gained shards.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from pipelines.store import Workdir

STORE_DIR = "state/stores"
GATHER_ROWS = 1024  # rows read from a memory-mapped store between two releases of its pages


def _fingerprint(shards: list[Path], *parts: str) -> str:
    h = hashlib.sha256("|".join(parts).encode())
    for p in shards:
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _selected_rows(wd: Workdir, table: str, key_col: str, where: pl.Expr) -> pl.DataFrame:
    """(shard, row, key) of the first row of each key in scan order among the rows matching `where`."""
    frames = []
    for i, shard in enumerate(wd.shards(table)):
        part = (pl.scan_parquet(shard).select(key_col, *where.meta.root_names()).with_row_index("row")
                .filter(where).select(pl.lit(i, pl.UInt32).alias("shard"), "row", pl.col(key_col).alias("key"))
                .collect())
        if part.height:
            frames.append(part)
    if not frames:
        return pl.DataFrame(schema={"shard": pl.UInt32, "row": pl.UInt32, "key": pl.String})
    return pl.concat(frames).unique("key", keep="first", maintain_order=True)


class _Index:
    """Sorted keys and each key's row in the store file."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray):
        self.keys, self.rows = keys, rows

    @classmethod
    def of(cls, keys: pl.Series) -> _Index:
        arr = keys.cast(pl.Binary).to_numpy().astype("S") if keys.len() else np.zeros(0, dtype="S1")
        order = np.argsort(arr, kind="stable")
        return cls(arr[order], order.astype(np.int64))

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}.npz")
        with open(tmp, "wb") as f:
            np.savez(f, keys=self.keys, rows=self.rows)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> _Index:
        with np.load(path) as z:
            return cls(z["keys"], z["rows"])

    def rows_of(self, keys: pl.Series | list[str]) -> np.ndarray:
        """The store row of each key, in order; a key that is not stored raises KeyError."""
        series = keys if isinstance(keys, pl.Series) else pl.Series(keys, dtype=pl.String)
        if series.len() == 0:
            return np.zeros(0, dtype=np.int64)
        want = series.cast(pl.Binary).to_numpy().astype(self.keys.dtype if self.keys.size else "S")
        pos = np.searchsorted(self.keys, want) if self.keys.size else np.zeros(len(want), dtype=np.int64)
        ok = pos < self.keys.size
        ok[ok] = self.keys[pos[ok]] == want[ok]
        if not ok.all():
            missing = series.filter(pl.Series(~ok)).head(3).to_list()
            raise KeyError(f"{(~ok).sum()} id(s) not in the store, e.g. {missing}")
        return self.rows[pos]

    def __len__(self) -> int:
        return int(self.keys.size)


def _index_path(path: Path) -> Path:
    return path.with_suffix(".idx.npz")


def _clean_old(folder: Path, prefix: str, keep: str) -> None:
    """Remove the stale stores of one kind and any half-written file (the workdir lock makes us the writer)."""
    for p in [*folder.glob(f"{prefix}-*"), *folder.glob(".tmp-*")]:
        if not p.name.startswith(keep):
            p.unlink(missing_ok=True)


class VectorStore:
    """Every stored vector of one embedding model, as a float32 `.npy` (row per text) and an id index."""

    def __init__(self, path: Path, index: _Index):
        self.path, self.index = path, index
        self._mm = np.load(path, mmap_mode="r")
        self.dim = int(self._mm.shape[1]) if self._mm.ndim == 2 else 0

    @classmethod
    def open(cls, wd: Workdir, model_id: str) -> VectorStore:
        """The store of `model_id`'s vectors in `wd`, built (one pass over the embeddings table) if stale."""
        folder = wd.root / STORE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        shards = wd.shards("embeddings")
        name = f"vectors-{_fingerprint(shards, model_id)}"
        path = folder / f"{name}.npy"
        if not (path.exists() and _index_path(path).exists()):
            _clean_old(folder, "vectors", name)
            cls._build(wd, shards, model_id, path, _index_path(path))
        return cls.at(path)

    @classmethod
    def at(cls, path: Path) -> VectorStore:
        """A store already built (a pool worker opens the parent's by path)."""
        return cls(path, _Index.load(_index_path(path)))

    @staticmethod
    def _build(wd: Workdir, shards: list[Path], model_id: str, path: Path, idx_path: Path) -> None:
        sel = _selected_rows(wd, "embeddings", "text_id", pl.col("model_id") == model_id)
        dim = 0
        for shard in shards:  # the model's width, from its first row
            first = (pl.scan_parquet(shard).filter(pl.col("model_id") == model_id).select("embedding").head(1)
                     .collect())
            if first.height:
                dim = first.get_column("embedding").list.len()[0]
                break
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(sel.height, dim))
        at = 0
        for i, shard in enumerate(shards):
            rows = sel.filter(pl.col("shard") == i).get_column("row")
            if rows.len() == 0:
                continue
            emb = pl.read_parquet(shard, columns=["embedding"]).get_column("embedding").gather(rows)
            flat = emb.explode().to_numpy().astype(np.float32, copy=False)
            out[at: at + rows.len()] = flat.reshape(rows.len(), dim)
            at += rows.len()
            out.flush()
            out._mmap.madvise(mmap.MADV_DONTNEED)  # written pages are on disk; keep them out of our RSS
        del out
        _Index.of(sel.get_column("key")).save(idx_path)
        os.replace(tmp, path)

    def rows_of(self, text_ids: pl.Series | list[str]) -> np.ndarray:
        return self.index.rows_of(text_ids)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """A float32 copy of the vectors at `rows` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        for a in range(0, rows.size, GATHER_ROWS):  # a random row faults in up to 64 KB of the file: release often
            part = rows[a:a + GATHER_ROWS]
            order = np.argsort(part, kind="stable")
            out[a + order] = self._mm[part[order]]
            self.release()
        return out

    def vectors(self, text_ids: pl.Series | list[str]) -> np.ndarray:
        """Vectors of `text_ids`, in order (every id must be stored)."""
        return self.get(self.rows_of(text_ids))

    def release(self) -> None:
        """Hand the mapped pages back (they stay in the page cache): resident memory follows the partition."""
        self._mm._mmap.madvise(mmap.MADV_DONTNEED)

    def __len__(self) -> int:
        return len(self.index)


class RowsStore:
    """Rows of a table with variable-width columns (lemmas, trees) as an Arrow IPC file and an id index."""

    def __init__(self, path: Path, index: _Index):
        self.path, self.index = path, index

    @classmethod
    def open(cls, wd: Workdir, table: str, key_col: str, where: pl.Expr, columns: list[str],
             label: str) -> RowsStore:
        """The store of `table`'s rows matching `where` (first row per key), built if stale; `label` names it."""
        folder = wd.root / STORE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        shards = wd.shards(table)
        name = f"{table}-{_fingerprint(shards, label, key_col, *columns)}"
        path = folder / f"{name}.arrow"
        idx_path = _index_path(path)
        if not (path.exists() and idx_path.exists()):
            _clean_old(folder, table, name)
            sel = _selected_rows(wd, table, key_col, where)
            tmp = path.with_name(f".tmp-{uuid.uuid4().hex}.arrow")
            schema = wd.scan(table).select(columns).collect_schema()
            arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, arrow_schema) as writer:
                for i, shard in enumerate(shards):
                    rows = sel.filter(pl.col("shard") == i).get_column("row")
                    if rows.len():
                        part = pl.read_parquet(shard, columns=columns)[rows]
                        writer.write_table(part.to_arrow().cast(arrow_schema))
            _Index.of(sel.get_column("key")).save(idx_path)
            os.replace(tmp, path)
        return cls.at(path)

    @classmethod
    def at(cls, path: Path) -> RowsStore:
        return cls(path, _Index.load(_index_path(path)))

    def take(self, keys: pl.Series | list[str]) -> pl.DataFrame:
        """The stored rows of `keys`, in order (every key must be stored)."""
        rows = self.index.rows_of(keys)
        with pa.memory_map(str(self.path)) as src:
            table = ipc.open_file(src).read_all()
            out = table.take(pa.array(rows, type=pa.int64())).combine_chunks()
        return pl.from_arrow(out)

    def __len__(self) -> int:
        return len(self.index)


_OPENED: dict[object, object] = {}  # per process: a pool worker or Ray actor opens each store once


def _exists(path: Path | tuple[Path, ...]) -> bool:
    return all(Path(p).exists() for p in (path if isinstance(path, tuple) else (path,)))


def opened(cls, path: Path | tuple[Path, ...]):
    """`cls.at(path)` (a store file, or the files of a pair of stores), opened once per process."""
    if path not in _OPENED:
        for old in [p for p in _OPENED if not _exists(p)]:  # a later run rebuilt it
            del _OPENED[old]
        _OPENED[path] = cls.at(path)
    return _OPENED[path]
