"""Every stored table's columns and Polars dtypes: the one place that names them."""

from __future__ import annotations

import polars as pl

SOURCES = {
    "source_id": pl.String,  # content hash of the normalised text
    "text": pl.String,  # NFC, whitespace-normalised
    "origin": pl.String,  # file path or dataset id the text came from (first occurrence)
    "origin_row": pl.Int64,  # 1-based row/line in that origin
    "n_chars": pl.Int64,
    "ingest_id": pl.String,
}

QUARANTINE = {
    "origin": pl.String,
    "origin_row": pl.Int64,
    "field": pl.String,
    "reason": pl.String,
    "raw": pl.String,  # a printable preview of the offending value (truncated)
    "stage": pl.String,
    "ingest_id": pl.String,
}

SOURCE_DUPLICATES = {
    "origin": pl.String,
    "origin_row": pl.Int64,
    "source_id": pl.String,  # the kept source this row duplicates
    "ingest_id": pl.String,
}

GENERATIONS = {
    "request_id": pl.String,
    "source_id": pl.String,
    "teacher_kind": pl.String,
    "model": pl.String,
    "prompt_name": pl.String,
    "prompt_version": pl.String,
    "strategy": pl.String,  # "list": one request asks for n; "single": n requests ask for one each
    "sample_index": pl.Int64,
    "n_requested": pl.Int64,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "max_new_tokens": pl.Int64,
    "dtype": pl.String,
    "seed": pl.Int64,
    "params_json": pl.String,  # every sampling parameter, canonical JSON
    "raw_output": pl.String,
    "items": pl.List(pl.String),  # paraphrases parsed from raw_output
    "parse_error": pl.String,  # null when at least one item was parsed
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "finish_reason": pl.String,  # "stop" | "length"
    "latency_s": pl.Float64,  # wall time of the batch the request ran in
    "run_id": pl.String,
}

CANDIDATES = {
    "pair_id": pl.String,  # hash(source_id, candidate_id)
    "source_id": pl.String,
    "candidate_id": pl.String,  # content hash of the normalised paraphrase
    "paraphrase": pl.String,
    "request_id": pl.String,
    "item_index": pl.Int64,
    "is_source_copy": pl.Boolean,  # the paraphrase equals the source after normalisation
    "is_repeat": pl.Boolean,  # this pair already came from an earlier request/item
}

TABLES: dict[str, dict[str, pl.DataType]] = {
    "sources": SOURCES,
    "quarantine": QUARANTINE,
    "source_duplicates": SOURCE_DUPLICATES,
    "generations": GENERATIONS,
    "candidates": CANDIDATES,
}


def empty_frame(table: str) -> pl.DataFrame:
    """A zero-row frame with the table's columns and dtypes."""
    return pl.DataFrame(schema=TABLES[table])


def conform(df: pl.DataFrame, table: str) -> pl.DataFrame:
    """Select and cast `df` to the table's declared columns, in order; missing columns are an error."""
    schema = TABLES[table]
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"frame for table {table!r} lacks columns {missing}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])
