"""Ingest operators: read user inputs into raw rows, then normalise, id, dedupe and quarantine them.

A reader returns one row per input record (`origin`, `origin_row`, `field`, `value`, `problem`); a record it
cannot use keeps its `problem`, so nothing is silently lost. `prepare_sources` turns raw rows into new
sources, duplicates of known sources, and quarantined rows.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curation.text import CONTROL_PATTERN, control_problem, normalize_expr, text_id
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
    s = _safe(value) if isinstance(value, str) else repr(value)
    return s if len(s) <= limit else s[:limit] + "..."


def _raw(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RAW_SCHEMA, orient="row")


def _utf16_codec(data: bytes) -> str | None:
    """'utf-16' (with a BOM), 'utf-16-le'/'utf-16-be' (mostly-ASCII text without one: a NUL in every other
    byte), or None for anything else."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    for codec, zeros, chars in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
        if zeros.count(0) >= 0.9 * len(zeros) and chars.count(0) <= 0.02 * len(chars):
            return codec
    return None


def _looks_binary(sample: bytes) -> bool:
    """NUL bytes plus invalid UTF-8, or NUL bytes on most lines: a binary file, not text with a stray NUL."""
    if b"\x00" not in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # not just a character cut at the sample's end
            return True
    lines = sample.split(b"\n")
    return sum(b"\x00" in ln for ln in lines) * 2 > len(lines)


def _read_bytes(path: Path) -> bytes:
    """The file as UTF-8 bytes: a UTF-8 BOM dropped, UTF-16 decoded; empty and binary files raise InputError.

    A file of only whitespace is returned as is: each of its lines is quarantined as an empty line.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read file ({e.strerror or e}); check its permissions") from None
    if not data:
        raise InputError(f"{path}: file is empty (0 bytes); nothing to ingest")
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):]
    codec = _utf16_codec(data)
    if codec is not None:
        try:
            return data.decode(codec).encode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: is UTF-16 text but does not decode at byte {e.start} ({e.reason}); convert "
                             f"it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8 {path} > {path}.utf8.txt") from None
    sample = data[:65536]
    if _looks_binary(sample):
        nul = sample.find(b"\x00")
        raise InputError(f"{path}: looks like a binary file (NUL byte at offset {nul}); expected UTF-8 text")
    return data


def _json_problem(line: bytes, e: json.JSONDecodeError) -> str:
    if not line.strip():
        return "empty line"
    msg = e.msg if e.msg.endswith(" at") else e.msg + " at"  # "Unterminated string starting at"
    return f"invalid JSON ({msg} column {e.colno})"


def _surrogate_problem(value: str, field: str) -> str | None:
    """A lone surrogate (a JSON escape such as \\ud800 without its pair) cannot be stored as UTF-8."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"field {field!r} holds a lone surrogate \\u{ord(value[e.start]):04x} at character {e.start + 1} "
                "(invalid Unicode, from a JSON escape without its pair); fix or remove it")
    return None


def _safe(value: str) -> str:
    """`value` with lone surrogates written as \\udXXX escapes, so it can be stored and shown."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


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
            rows.append((origin, i, text_column, _preview(line.decode("utf-8", "replace")), _json_problem(line, e)))
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
        bad_unicode = _surrogate_problem(value, text_column) if b"\\u" in line else None
        if bad_unicode:
            rows.append((origin, i, text_column, _preview(value), bad_unicode))
            continue
        rows.append((origin, i, text_column, value, None if value.strip() else "empty text"))
    if not has_column and seen_fields:
        raise InputError(
            f"{path}: no line has field {text_column!r} (fields seen: {', '.join(sorted(seen_fields)[:10])}); "
            "pass --text-column"
        )
    return _raw(rows)


def _column_rows(df: pl.DataFrame, origin: str, text_column: str, what: str,
                 rows: list[int] | None = None) -> pl.DataFrame:
    """Raw rows from one column of a frame: nulls, blanks and U+FFFD (lossy decoding) get a problem.

    `rows`: each row's number in the input (default 1, 2, ...), when some input rows were set aside."""
    if text_column not in df.columns:
        cols = ", ".join(df.columns[:12])
        raise InputError(f"{origin}: no column {text_column!r} (columns: {cols}); pass --text-column")
    dtype = df.schema[text_column]
    if dtype not in (pl.String, pl.Categorical, pl.Null) and not isinstance(dtype, pl.Enum):
        raise InputError(f"{origin}: {what} {text_column!r} holds {dtype}, not text; pass --text-column")
    col = df.get_column(text_column).cast(pl.String)
    numbers = (pl.Series("origin_row", rows, dtype=pl.Int64) if rows is not None
               else pl.int_range(1, df.height + 1, eager=True, dtype=pl.Int64).alias("origin_row"))
    return pl.DataFrame({"value": col, "origin_row": numbers}).select(
        pl.lit(origin).alias("origin"),
        pl.col("origin_row"),
        pl.lit(text_column).alias("field"),
        pl.col("value"),
        pl.when(pl.col("value").is_null()).then(pl.lit("empty text (null)"))
        .when(pl.col("value").str.strip_chars() == "").then(pl.lit("empty text"))
        .when(pl.col("value").str.contains("\ufffd", literal=True))
        .then(pl.lit("undecodable bytes (not UTF-8)"))
        .otherwise(None)
        .alias("problem"),
    )


@dataclass
class _CsvTable:
    """A CSV/TSV read as text: `frame`, each frame row's record number (None: 1, 2, ...) and the records set
    aside as (record number, reason, raw text) because they have more fields than the header."""

    frame: pl.DataFrame
    rows: list[int] | None = None
    ragged: list[tuple[int, str, str]] = field(default_factory=list)


def _csv_fallback(data: bytes, sep: str) -> _CsvTable:
    """The Python csv reader, record by record, for a file Polars refuses: a record with more fields than the
    header is set aside with its number; a shorter one is padded with nulls (as Polars reads it)."""
    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(data.decode("utf-8", "replace"), newline=""), delimiter=sep)
    header = next(reader, [])
    names: list[str] = []
    for i, name in enumerate(header):
        names.append(name if name not in names else f"{name}_duplicated_{i}")
    width = len(names)
    values: list[list[str | None]] = []
    rows: list[int] = []
    ragged: list[tuple[int, str, str]] = []
    start = reader.line_num + 1
    for n, record in enumerate(reader, start=1):
        if len(record) > width:
            where = f"line {start}" if reader.line_num == start else f"lines {start}-{reader.line_num}"
            ragged.append((n, f"record has {len(record)} fields, the header has {width} ({where}); "
                              "quote the field that holds the separator", sep.join(record)))
        else:
            values.append([v if v != "" else None for v in record] + [None] * (width - len(record)))
            rows.append(n)
        start = reader.line_num + 1
    frame = pl.DataFrame(values, schema={c: pl.String for c in names}, orient="row")
    return _CsvTable(frame, rows, ragged)


def _csv_frame(path: Path) -> _CsvTable:
    """A CSV/TSV read with every column as text; an unreadable file is one InputError line."""
    data = _read_bytes(path)
    if not data.strip():
        raise InputError(f"{path}: holds only whitespace (no header row); nothing to ingest")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        return _CsvTable(pl.read_csv(io.BytesIO(data), infer_schema=False, encoding="utf8-lossy", separator=sep))
    except Exception as e:  # polars raises several error types for malformed CSV
        error = first_line(e)
    try:
        table = _csv_fallback(data, sep)
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from None
    if not table.ragged:
        raise InputError(f"{path}: not a readable CSV ({error})")
    return table


def read_csv(path: Path, text_column: str) -> pl.DataFrame:
    """A CSV/TSV with a header row; every column read as text; a record with too many fields is a problem row."""
    table = _csv_frame(path)
    rows = _column_rows(table.frame, str(path), text_column, "column", table.rows)
    if not table.ragged:
        return rows
    bad = _raw([(str(path), n, text_column, _preview(raw), reason) for n, reason, raw in table.ragged])
    return pl.concat([rows, bad]).sort("origin_row")


def read_parquet(path: Path, text_column: str) -> pl.DataFrame:
    try:
        df = pl.read_parquet(path, glob=False)
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
    line, a CSV record with more fields than its header, undecodable CSV bytes; null otherwise), `_raw` (a preview
    of a broken line) and each requested column
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
        table = _csv_frame(path)
        _require_columns(str(path), table.frame.columns, columns, hints)
        records = _typed_records(table.frame, str(path), columns, lossy=True)
        if not table.ragged:
            return records
        records = records.with_columns(_origin_row=pl.Series(table.rows, dtype=pl.Int64))
        n, reasons, raw = zip(*table.ragged, strict=True)
        bad = pl.DataFrame({"_origin": [str(path)] * len(n), "_origin_row": pl.Series(n, dtype=pl.Int64),
                            "_problem": pl.Series(reasons, dtype=pl.String),
                            "_raw": pl.Series([_preview(r) for r in raw], dtype=pl.String)})
        return pl.concat([records, bad], how="diagonal").sort("_origin_row")
    if kind == "parquet":
        try:
            available = list(pl.read_parquet_schema(path))
            _require_columns(str(path), available, columns, hints)
            df = pl.read_parquet(path, columns=columns, glob=False)
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
            problem = _json_problem(line, e)
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


def _control_reasons(values: pl.Series) -> pl.Series:
    """Per value, why a NUL byte or another control character refuses it (null for ordinary text)."""
    flagged = values.str.contains(CONTROL_PATTERN).fill_null(False)
    reasons = pl.Series("control", [None] * values.len(), dtype=pl.String)
    if flagged.any():
        idx = flagged.arg_true()
        reasons = reasons.scatter(idx, [control_problem(v) for v in values.gather(idx).to_list()])
    return reasons


def prepare_sources(raw: pl.DataFrame, max_chars: int, known_ids: set[str], ingest_id: str
                    ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Split raw rows into (new sources, duplicate rows, quarantined rows); every raw row lands in one.

    Texts are NFC + whitespace normalised and named by content id; the first occurrence of a text is kept,
    later ones (and texts already in `known_ids`) are duplicates.
    """
    df = raw.with_columns(text=normalize_expr("value"), control=_control_reasons(raw.get_column("value"))).with_columns(
        n_chars=pl.col("text").str.len_chars().cast(pl.Int64),
    ).with_columns(
        problem=pl.when(pl.col("problem").is_not_null()).then(pl.col("problem"))
        .when(pl.col("control").is_not_null()).then(pl.col("control"))
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
