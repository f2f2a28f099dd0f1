"""Ingest operators: read user inputs into raw rows, then normalise, id, dedupe and quarantine them.

A reader returns one row per input record (`origin`, `origin_row`, `field`, `value`, `problem`); a record it
cannot use keeps its `problem`, so nothing is silently lost. `prepare_sources` turns raw rows into new
sources, duplicates of known sources, and quarantined rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from curation.text import normalize_expr, text_id
from schemas.errors import InputError, first_line

RAW_SCHEMA = {
    "origin": pl.String,
    "origin_row": pl.Int64,
    "field": pl.String,
    "value": pl.String,
    "problem": pl.String,
}
FILE_TYPES = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
              ".tsv": "csv", ".parquet": "parquet"}
_HF_DIR_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
_DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv")


def _preview(value: object, limit: int = 200) -> str:
    s = value if isinstance(value, str) else repr(value)
    return s if len(s) <= limit else s[:limit] + "..."


def _raw(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RAW_SCHEMA, orient="row")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read file ({e.strerror or e}); check its permissions") from None
    if not data.strip():
        raise InputError(f"{path}: file is empty; nothing to ingest")
    nul = data.find(b"\x00", 0, 65536)
    if nul >= 0:
        raise InputError(f"{path}: looks like a binary file (NUL byte at offset {nul}); expected UTF-8 text")
    return data


def _lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def read_txt(path: Path) -> pl.DataFrame:
    """One text per line; undecodable or blank lines become rows with a problem."""
    origin = str(path)
    rows = []
    for i, line in enumerate(_lines(_read_bytes(path)), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.append((origin, i, "line", _preview(line), f"undecodable bytes (not UTF-8) at byte {e.start}"))
            continue
        rows.append((origin, i, "line", text, None if text.strip() else "empty line"))
    return _raw(rows)


def read_jsonl(path: Path, text_column: str) -> pl.DataFrame:
    """One JSON object per line, the text in `text_column`; broken lines become rows with a problem."""
    origin = str(path)
    rows, seen_fields, has_column = [], set(), False
    for i, line in enumerate(_lines(_read_bytes(path)), start=1):
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            rows.append((origin, i, text_column, _preview(line), f"undecodable bytes (not UTF-8) at byte {e.start}"))
            continue
        except json.JSONDecodeError as e:
            problem = "empty line" if not line.strip() else f"invalid JSON ({e.msg} at column {e.colno})"
            rows.append((origin, i, text_column, _preview(line.decode("utf-8", "replace")), problem))
            continue
        if not isinstance(obj, dict):
            rows.append((origin, i, text_column, _preview(obj), f"expected a JSON object, got {type(obj).__name__}"))
            continue
        seen_fields.update(obj)
        if text_column not in obj:
            rows.append((origin, i, text_column, _preview(obj), f"missing field {text_column!r}"))
            continue
        has_column = True
        value = obj[text_column]
        if not isinstance(value, str):
            problem = "empty text (null)" if value is None else f"field is {type(value).__name__}, expected string"
            rows.append((origin, i, text_column, _preview(value), problem))
            continue
        rows.append((origin, i, text_column, value, None if value.strip() else "empty text"))
    if not has_column and seen_fields:
        raise InputError(
            f"{path}: no line has field {text_column!r} (fields seen: {', '.join(sorted(seen_fields)[:10])}); "
            "pass --text-column"
        )
    return _raw(rows)


def _column_rows(df: pl.DataFrame, origin: str, text_column: str, what: str) -> pl.DataFrame:
    """Raw rows from one column of a frame: nulls, blanks and U+FFFD (lossy decoding) get a problem."""
    if text_column not in df.columns:
        cols = ", ".join(df.columns[:12])
        raise InputError(f"{origin}: no column {text_column!r} (columns: {cols}); pass --text-column")
    dtype = df.schema[text_column]
    if dtype not in (pl.String, pl.Categorical, pl.Null) and not isinstance(dtype, pl.Enum):
        raise InputError(f"{origin}: {what} {text_column!r} holds {dtype}, not text; pass --text-column")
    col = df.get_column(text_column).cast(pl.String)
    return pl.DataFrame({"value": col}).with_row_index("origin_row", offset=1).select(
        pl.lit(origin).alias("origin"),
        pl.col("origin_row").cast(pl.Int64),
        pl.lit(text_column).alias("field"),
        pl.col("value"),
        pl.when(pl.col("value").is_null()).then(pl.lit("empty text (null)"))
        .when(pl.col("value").str.strip_chars() == "").then(pl.lit("empty text"))
        .when(pl.col("value").str.contains("\ufffd", literal=True))
        .then(pl.lit("undecodable bytes (not UTF-8)"))
        .otherwise(None)
        .alias("problem"),
    )


def _csv_frame(path: Path) -> pl.DataFrame:
    """A CSV/TSV read with every column as text; an unreadable file is one InputError line."""
    _read_bytes(path)
    try:
        return pl.read_csv(path, infer_schema=False, encoding="utf8-lossy",
                           separator="\t" if path.suffix.lower() == ".tsv" else ",")
    except Exception as e:  # polars raises several error types for malformed CSV
        raise InputError(f"{path}: not a readable CSV ({first_line(e)})") from None


def read_csv(path: Path, text_column: str) -> pl.DataFrame:
    """A CSV/TSV with a header row; every column read as text."""
    return _column_rows(_csv_frame(path), str(path), text_column, "column")


def read_parquet(path: Path, text_column: str) -> pl.DataFrame:
    try:
        df = pl.read_parquet(path)
    except Exception as e:
        raise InputError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    return _column_rows(df, str(path), text_column, "column")


def is_hf_dataset_dir(path: Path) -> bool:
    """A folder `datasets` can load: save_to_disk output, or a dataset repo with data files."""
    if any((path / m).exists() for m in _HF_DIR_MARKERS):
        return True
    return any(p.suffix in _DATA_SUFFIXES for p in path.rglob("*") if p.is_file() and ".git" not in p.parts)


def _load_hf(ref: str, split: str):
    """One split of a Hugging Face dataset (local folder or Hub id) as a `datasets.Dataset`."""
    import datasets  # heavy import, only when needed

    path = Path(ref)
    try:
        if path.is_dir() and any((path / m).exists() for m in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(ref, split=split)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise InputError(f"{ref}: no split {split!r} (splits: {', '.join(ds)}); pass --split")
            ds = ds[split]
    except InputError:
        raise
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "split" in msg.lower():
            raise InputError(f"{ref}: {msg}; pass --split") from None
        raise InputError(f"{ref}: cannot load dataset ({msg})") from None
    except Exception as e:
        raise InputError(f"{ref}: cannot load Hugging Face dataset ({first_line(e)})") from None
    return ds


def _hf_origin(ref: str) -> str:
    return f"hf:{ref}" if not Path(ref).exists() else str(Path(ref))


def read_hf(ref: str, split: str, text_column: str) -> pl.DataFrame:
    """A Hugging Face dataset by local folder or Hub id (`datasets` follows HF_ENDPOINT / HF_HUB_OFFLINE)."""
    ds = _load_hf(ref, split)
    if text_column not in ds.column_names:
        raise InputError(f"{ref}: no column {text_column!r} (columns: {', '.join(ds.column_names)}); "
                         "pass --text-column")
    df = pl.from_arrow(ds.select_columns([text_column]).with_format("arrow")[:])
    return _column_rows(df, _hf_origin(ref), text_column, "column")


def resolve_input(ref: str) -> tuple[str, str]:
    """Which reader an input reference needs: ("hf", dataset ref) or (file kind, path); user mistakes raise."""
    if ref.startswith("hf:"):
        return "hf", ref[3:]
    path = Path(ref)
    if path.is_dir():
        if is_hf_dataset_dir(path):
            return "hf", ref
        raise InputError(f"{ref}: is a directory with no dataset files; pass a file (.txt, .jsonl, .csv, "
                         ".tsv, .parquet) or a Hugging Face dataset folder")
    if not path.exists():
        if ref.count("/") == 1 and not path.suffix and not ref.startswith((".", "/")):
            return "hf", ref
        raise InputError(f"{ref}: no such file; check the path (relative paths start from the current "
                         "directory, or the recipe's folder in a recipe)")
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{ref}: unknown file type {path.suffix or '(none)'!r}; expected .txt, .jsonl, .csv, "
                         ".tsv, .parquet, a Hugging Face dataset folder, or hf:OWNER/NAME")
    return kind, ref


def read_input(ref: str, text_column: str = "text", split: str = "train") -> pl.DataFrame:
    """Dispatch one input reference (file, dataset folder, `hf:ID` or `OWNER/NAME`) to its reader."""
    kind, target = resolve_input(ref)
    if kind == "hf":
        return read_hf(target, split, text_column)
    path = Path(target)
    if kind == "txt":
        return read_txt(path)
    if kind == "jsonl":
        return read_jsonl(path, text_column)
    if kind == "csv":
        return read_csv(path, text_column)
    return read_parquet(path, text_column)


# -- multi-column records (pairs, lists) -------------------------------------------------------------------
class _Missing:
    """A JSON Lines record lacks the field (distinct from an explicit null)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def _require_columns(origin: str, available: list[str], columns: list[str], hints: dict[str, str]) -> None:
    for col in columns:
        if col not in available:
            shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
            hint = f"; pass {hints[col]}" if col in hints else ""
            raise InputError(f"{origin}: no column {col!r} (columns: {shown}){hint}")


def _records_frame(origin: str, problems: list, values: dict[str, object], raws: list | None = None
                   ) -> pl.DataFrame:
    n = len(problems)
    meta = {"_origin": pl.Series([origin] * n, dtype=pl.String),
            "_origin_row": pl.int_range(1, n + 1, eager=True, dtype=pl.Int64),
            "_problem": pl.Series(problems, dtype=pl.String),
            "_raw": pl.Series(raws if raws is not None else [None] * n, dtype=pl.String)}
    return pl.DataFrame({**meta, **values})


def _typed_records(df: pl.DataFrame, origin: str, columns: list[str], lossy: bool) -> pl.DataFrame:
    """Records from a typed frame; with `lossy` (CSV read as utf8-lossy) U+FFFD marks undecodable bytes."""
    problems = pl.Series([None] * df.height, dtype=pl.String)
    if lossy:
        for col in reversed(columns):
            bad = df.get_column(col).cast(pl.String).str.contains("\ufffd", literal=True).fill_null(False)
            problems = pl.select(pl.when(bad).then(pl.lit(f"undecodable bytes (not UTF-8) in column {col!r}"))
                                 .otherwise(problems)).to_series()
    values = {c: df.get_column(c).cast(pl.String) if df.schema[c] == pl.Categorical else df.get_column(c)
              for c in dict.fromkeys(columns)}
    return _records_frame(origin, problems.to_list(), values)


def read_records(ref: str, columns: list[str], split: str = "train", hints: dict[str, str] | None = None
                 ) -> pl.DataFrame:
    """Rows of several columns from a .jsonl/.csv/.tsv/.parquet file, dataset folder or Hub id.

    Returns `_origin`, `_origin_row` (1-based), `_problem` (a row the format could not deliver: broken JSON
    line, undecodable CSV bytes; null otherwise), `_raw` (a preview of a broken JSON line) and each requested column
    as the format typed it (CSV: strings; Parquet/HF: their dtypes, lists stay lists; JSON Lines: Python
    objects, `MISSING` where a line lacks the field). A column absent from the whole input raises `InputError`
    listing the available ones; `hints`
    maps a column to the option that names it (e.g. "--source-column") for that message.
    """
    hints = hints or {}
    columns = list(dict.fromkeys(columns))
    kind, target = resolve_input(ref)
    if kind == "txt":
        raise InputError(f"{ref}: a .txt file has no columns; give a .jsonl, .csv, .tsv, .parquet file or a "
                         "Hugging Face dataset with columns " + ", ".join(repr(c) for c in columns))
    if kind == "hf":
        ds = _load_hf(target, split)
        origin = _hf_origin(target)
        _require_columns(origin, list(ds.column_names), columns, hints)
        df = pl.from_arrow(ds.select_columns(columns).with_format("arrow")[:])
        return _typed_records(df, origin, columns, lossy=False)
    path = Path(target)
    if kind == "csv":
        df = _csv_frame(path)
        _require_columns(str(path), df.columns, columns, hints)
        return _typed_records(df, str(path), columns, lossy=True)
    if kind == "parquet":
        try:
            available = list(pl.read_parquet_schema(path))
            _require_columns(str(path), available, columns, hints)
            df = pl.read_parquet(path, columns=columns)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
        return _typed_records(df, str(path), columns, lossy=False)
    return _jsonl_records(path, columns, hints)


def _jsonl_records(path: Path, columns: list[str], hints: dict[str, str]) -> pl.DataFrame:
    problems: list[str | None] = []
    raws: list[str | None] = []
    values: dict[str, list] = {c: [] for c in columns}
    seen: dict[str, None] = {}
    has = dict.fromkeys(columns, False)
    for line in _lines(_read_bytes(path)):
        obj, problem = MISSING, None
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            problem = f"undecodable bytes (not UTF-8) at byte {e.start}"
        except json.JSONDecodeError as e:
            problem = "empty line" if not line.strip() else f"invalid JSON ({e.msg} at column {e.colno})"
        if problem is None and not isinstance(obj, dict):
            problem = f"expected a JSON object, got {type(obj).__name__}"
        problems.append(problem)
        raws.append(None if problem is None else
                    _preview(line.decode("utf-8", "replace")) if obj is MISSING else _preview(obj))
        if problem is not None:
            for c in columns:
                values[c].append(MISSING)
            continue
        seen.update(dict.fromkeys(obj))
        for c in columns:
            values[c].append(obj.get(c, MISSING))
            has[c] = has[c] or c in obj
    for c in columns:
        if not has[c] and seen:
            hint = f"; pass {hints[c]}" if c in hints else ""
            raise InputError(f"{path}: no line has field {c!r} (fields seen: {', '.join(list(seen)[:20])}){hint}")
    return _records_frame(str(path), problems, {c: pl.Series(c, v, dtype=pl.Object) for c, v in values.items()},
                          raws)


def prepare_sources(raw: pl.DataFrame, max_chars: int, known_ids: set[str], ingest_id: str
                    ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Split raw rows into (new sources, duplicate rows, quarantined rows); every raw row lands in one.

    Texts are NFC + whitespace normalised and named by content id; the first occurrence of a text is kept,
    later ones (and texts already in `known_ids`) are duplicates.
    """
    df = raw.with_columns(text=normalize_expr("value")).with_columns(
        n_chars=pl.col("text").str.len_chars().cast(pl.Int64),
    ).with_columns(
        problem=pl.when(pl.col("problem").is_not_null()).then(pl.col("problem"))
        .when(pl.col("n_chars") > max_chars)
        .then(pl.format("text is {} characters, over max_chars={}; raise ingest.max_chars or split it",
                        pl.col("n_chars"), pl.lit(max_chars)))
        .otherwise(None)
    )
    bad = df.filter(pl.col("problem").is_not_null())
    quarantine = bad.select(
        "origin", "origin_row", "field", reason=pl.col("problem"),
        raw=pl.col("value").map_elements(_preview, return_dtype=pl.String),
        stage=pl.lit("ingest"), ingest_id=pl.lit(ingest_id),
    )
    good = df.filter(pl.col("problem").is_null()).with_columns(
        source_id=pl.col("text").map_elements(text_id, return_dtype=pl.String)
    ).with_row_index("_order")
    first = pl.col("_order") == pl.col("_order").min().over("source_id")
    is_new = first & ~pl.col("source_id").is_in(list(known_ids))
    sources = good.filter(is_new).select(
        "source_id", "text", "origin", "origin_row", "n_chars", ingest_id=pl.lit(ingest_id)
    )
    duplicates = good.filter(~is_new).select("origin", "origin_row", "source_id", ingest_id=pl.lit(ingest_id))
    return sources, duplicates, quarantine
