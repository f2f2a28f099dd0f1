"""Human label files: rows of (source, paraphrase, label) become `labels` rows or quarantine rows.

Records come from `curation.ingest.read_records` (csv/tsv/jsonl/parquet, the same readers as ingest); every
row ends as a label or in quarantine with its reason. A label reads true/false, yes/no, y/n, 1/0 or
paraphrase/not (case-insensitive); the same pair twice in one file keeps the first row.
"""

from __future__ import annotations

import polars as pl

from curation.import_pairs import _text_problem
from curation.ingest import MISSING, _preview
from curation.text import _hash, normalize, pair_id, text_id
from schemas.tables import conform, empty_frame

YES = {"true", "yes", "y", "1", "1.0", "paraphrase", "keep", "kept"}
NO = {"false", "no", "n", "0", "0.0", "not", "not paraphrase", "not_paraphrase", "non-paraphrase", "drop",
      "dropped"}
LABEL_VALUES = "true/false, yes/no, 1/0 or paraphrase/not"


def parse_label(value: object) -> tuple[bool | None, str | None]:
    """(the label, None), or (None, why it is not one). Booleans, 0/1 numbers and the words in YES/NO."""
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value), None
    if isinstance(value, str):
        word = " ".join(value.strip().lower().split())
        if word in YES:
            return True, None
        if word in NO:
            return False, None
    if value is None:
        return None, "empty label"
    return None, f"label {_preview(value, 40)!r} is not {LABEL_VALUES}"


def human_label_id(pid: str) -> str:
    """A pair's human label: one per pair, the newest import replaces an older one."""
    return _hash("label", "human", pid)


def label_rows(records: pl.DataFrame, source_column: str, paraphrase_column: str, label_column: str,
               rewrite_column: str | None, *, max_chars: int, file: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(labels rows without run_id/at/in_corpus, quarantine rows without stage/ingest_id) from `read_records`
    records (`_origin`, `_origin_row`, `_problem`, `_raw` and the named columns)."""
    cols = {c: records.get_column(c).to_list() for c in (source_column, paraphrase_column, label_column,
                                                         *([rewrite_column] if rewrite_column else []))}
    origins, rows = records.get_column("_origin").to_list(), records.get_column("_origin_row").to_list()
    problems, raws = records.get_column("_problem").to_list(), records.get_column("_raw").to_list()
    kept: list[dict] = []
    bad: list[tuple] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if problems[i] is not None:
            bad.append((origins[i], row, "row", problems[i], raws[i]))
            continue
        texts = []
        for column, what in ((source_column, "source"), (paraphrase_column, "paraphrase")):
            value = cols[column][i]
            problem = (f"missing field {column!r}" if value is MISSING else f"empty {what} (null)" if value is None
                       else f"{what} is {type(value).__name__}, expected string" if not isinstance(value, str)
                       else _text_problem(value, column))
            text = normalize(value) if problem is None else ""
            if problem is None and not text:
                problem = f"empty {what}"
            if problem is None and len(text) > max_chars:
                problem = f"{what} is {len(text)} characters, over max_chars={max_chars}"
            if problem:
                bad.append((origins[i], row, column, problem, None if value in (None, MISSING) else _preview(value)))
                break
            texts.append(text)
        if len(texts) < 2:
            continue
        value = cols[label_column][i]
        label, problem = parse_label(None if value is MISSING else value)
        if problem:
            bad.append((origins[i], row, label_column, f"missing field {label_column!r}" if value is MISSING
                        else problem, None if value in (None, MISSING) else _preview(value)))
            continue
        rewrite = None
        if rewrite_column:
            value = cols[rewrite_column][i]
            if value not in (None, MISSING, ""):
                rewrite, problem = parse_label(value)
                if problem:
                    bad.append((origins[i], row, rewrite_column, problem.replace("label", "rewrite label", 1),
                                _preview(value)))
                    continue
        sid, cid = text_id(texts[0]), text_id(texts[1])
        pid = pair_id(sid, cid)
        if pid in seen:
            bad.append((origins[i], row, "row", f"the same pair as row {seen[pid]}; the first row's label is "
                        "kept", None))
            continue
        seen[pid] = row
        kept.append({"label_id": human_label_id(pid), "pair_id": pid, "source_id": sid, "candidate_id": cid,
                     "source": texts[0], "paraphrase": texts[1], "label": label, "rewrite": rewrite,
                     "origin": "human", "file": file, "origin_row": row})
    constants = {"judge_model": None, "prompt_version": None, "raw": None, "cost_usd": None, "request_id": None,
                 "run_id": None, "at": None, "in_corpus": None}
    labels = (pl.DataFrame(kept).with_columns(**{k: pl.lit(v) for k, v in constants.items()})
              if kept else empty_frame("labels"))
    quarantine = (pl.DataFrame(bad, schema=["origin", "origin_row", "field", "reason", "raw"], orient="row")
                  .with_columns(stage=pl.lit("labels"), ingest_id=pl.lit(None, pl.String))
                  if bad else empty_frame("quarantine"))
    return conform(labels, "labels"), conform(quarantine, "quarantine")
