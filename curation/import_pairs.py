"""Import operator: a teacher corpus made elsewhere becomes sources, generations and quarantine rows.

Two layouts are read from the records of `curation.ingest.read_records`:
- one pair per row: the paraphrase column holds one string (strategy "single"); rows sharing a source are
  grouped under that one source (same `source_id`);
- one source per row with a list of paraphrases (strategy "list"): a real list column, or a string holding a
  JSON list or a Python-literal list (as `humarin/chatgpt-paraphrases` stores it), parsed with `json.loads`
  then `ast.literal_eval`, never `eval`.

Every input row ends in exactly one place: a generation row (whose items later become candidates) or a
quarantine row with a reason. Per-item problems (an empty item inside a list) only drop that item; they are
counted in the stats. No workdir knowledge here: the step filters what the store already holds.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from curation.ingest import MISSING, _preview, _surrogate_problem
from curation.text import control_problem, normalize, request_id, text_id
from schemas.tables import GENERATIONS, conform, empty_frame

TEACHER_KIND = "import"
PROMPT_NAME = "import"
FINISH_REASON = "imported"

_LIST_START = re.compile(r"\[\s*(?:['\"]|\]\s*$)")  # `['`, `["`, `[]`: written as a list literal
_LIST_SEP = re.compile(r"['\"]\s*,\s*['\"]")  # `', '` between two quoted items


@dataclass(frozen=True)
class ParsedParaphrases:
    """What one paraphrase cell holds: `items` (as given, not yet normalised) or a `problem`."""

    strategy: str  # "list" | "single"
    items: list[str] | None
    raw_output: str | None  # the original value as text
    problem: str | None = None


def _type_name(value: object) -> str:
    return type(value).__name__


def _literal_list(text: str) -> tuple[list | None, str | None]:
    """(the list, None) if `text` is a JSON or Python list literal; (None, reason) if it is written as one
    but does not parse; (None, None) for an ordinary string (e.g. "[laughs] Sure." or "[sic]")."""
    t = text.strip()
    if not t.startswith("["):
        return None, None
    error = None
    try:
        value = json.loads(t)
        if isinstance(value, list):
            return value, None
    except (ValueError, RecursionError):
        pass
    try:
        value = ast.literal_eval(t)
        if isinstance(value, list):
            return value, None
    except SyntaxError as e:
        error = e.msg
    except (ValueError, TypeError, MemoryError, RecursionError) as e:
        error = str(e).splitlines()[0] if str(e) else _type_name(e)
    if _LIST_START.match(t) and (t.endswith("]") or _LIST_SEP.search(t)):
        return None, f"unparseable paraphrase list ({error or 'not a list literal'})"
    return None, None


def parse_paraphrase_value(value: object) -> ParsedParaphrases:
    """Classify one paraphrase cell: a string (one paraphrase, or a list literal), a real list, or a problem."""
    if value is MISSING:
        return ParsedParaphrases("single", None, None, "missing paraphrase field")
    if value is None:
        return ParsedParaphrases("single", None, None, "empty paraphrase (null)")
    if isinstance(value, str):
        parsed, problem = _literal_list(value)
        if problem:
            return ParsedParaphrases("list", None, value, problem)
        if parsed is None:
            if not value.strip():
                return ParsedParaphrases("single", None, value, "empty paraphrase")
            return ParsedParaphrases("single", [value], value, None)
        return _check_list(parsed, value)
    if isinstance(value, list | tuple):
        try:
            raw = json.dumps(list(value), ensure_ascii=False)
        except (TypeError, ValueError):
            raw = repr(list(value))
        return _check_list(list(value), raw)
    return ParsedParaphrases("single", None, _preview(value),
                             f"paraphrase is {_type_name(value)}, expected a string or a list of strings")


def _check_list(items: list, raw: str) -> ParsedParaphrases:
    if not items:
        return ParsedParaphrases("list", None, raw, "empty paraphrase list")
    for i, item in enumerate(items, start=1):
        if item is not None and not isinstance(item, str):
            return ParsedParaphrases("list", None, raw,
                                     f"paraphrase list item {i} is {_type_name(item)}, expected string")
    return ParsedParaphrases("list", [("" if it is None else it) for it in items], raw, None)


def _text_problem(text: str, column: str) -> str | None:
    """A lone surrogate (cannot be stored as UTF-8) or a NUL / control character: the row is quarantined."""
    return _surrogate_problem(text, column) or control_problem(text)


@dataclass
class ImportResult:
    """Frames conforming to `schemas.tables` (sources, quarantine, generations) and per-import counts."""

    sources: pl.DataFrame
    quarantine: pl.DataFrame
    generations: pl.DataFrame
    stats: dict = field(default_factory=dict)


def import_rows(records: pl.DataFrame, source_column: str, paraphrase_column: str, *, teacher: str,
                prompt_version: str, import_id: str, run_id: str, max_chars: int,
                known_source_ids: set[str] | frozenset[str] = frozenset(),
                on_progress: Callable[[int], None] | None = None, chunk: int = 20_000) -> ImportResult:
    """Turn records (`_origin`, `_origin_row`, `_problem`, `_raw` + the two columns) into table frames.

    Sources: unique normalised texts of the rows kept, first occurrence, minus `known_source_ids`.
    Generations: one per kept row; `request_id` = request_id("import", teacher, prompt_version, {},
    source_id, origin_row), stable across reruns. Quarantine (stage "import", `ingest_id` = `import_id`):
    every other row, with its reason. `on_progress(n)` is called after each `chunk` rows.
    """
    origins = records.get_column("_origin").to_list()
    rows = records.get_column("_origin_row").to_list()
    problems = records.get_column("_problem").to_list()
    raws = records.get_column("_raw").to_list()
    src_values = records.get_column(source_column).to_list()
    para_values = records.get_column(paraphrase_column).to_list()

    quarantine: list[tuple] = []
    g_ids: list[str] = []
    g_sources: list[str] = []
    g_strategy: list[str] = []
    g_n: list[int] = []
    g_raw: list[str | None] = []
    g_items: list[list[str]] = []
    sources: dict[str, tuple] = {}
    n_items = n_empty = n_list = 0
    constants = {"teacher_kind": TEACHER_KIND, "model": teacher, "prompt_name": PROMPT_NAME,
                 "prompt_version": prompt_version, "sample_index": 0, "temperature": None, "top_p": None,
                 "max_new_tokens": None, "dtype": None, "seed": None, "params_json": "{}", "parse_error": None,
                 "prompt_tokens": None, "completion_tokens": None, "finish_reason": FINISH_REASON,
                 "latency_s": None, "run_id": run_id,
                 "cost_usd": None, "attempts": None, "batch_id": None, "refusal": None}

    def bad(i: int, fld: str, reason: str, raw: object) -> None:
        quarantine.append((origins[i], rows[i], fld, reason, None if raw is None else _preview(raw)))

    for i in range(len(rows)):
        if on_progress is not None and i and i % chunk == 0:
            on_progress(chunk)
        if problems[i] is not None:
            bad(i, "row", problems[i], raws[i])
            continue
        src = src_values[i]
        if src is MISSING:
            bad(i, source_column, f"missing field {source_column!r}", None)
            continue
        if src is None:
            bad(i, source_column, "empty source (null)", None)
            continue
        if not isinstance(src, str):
            bad(i, source_column, f"source is {_type_name(src)}, expected string", src)
            continue
        unusable = _text_problem(src, source_column)
        if unusable:
            bad(i, source_column, unusable, src)
            continue
        text = normalize(src)
        if not text:
            bad(i, source_column, "empty source", src)
            continue
        if len(text) > max_chars:
            bad(i, source_column, f"source is {len(text)} characters, over max_chars={max_chars}; "
                                  "raise ingest.max_chars or split it", src)
            continue
        value = para_values[i]
        parsed = parse_paraphrase_value(value)
        if parsed.problem:
            reason = (f"missing field {paraphrase_column!r}" if value is MISSING else parsed.problem)
            bad(i, paraphrase_column, reason, None if value is MISSING else parsed.raw_output or value)
            continue
        unusable = next(filter(None, (_text_problem(it, paraphrase_column) for it in parsed.items)), None)
        if unusable:
            bad(i, paraphrase_column, unusable, parsed.raw_output or value)
            continue
        items = [normalize(it) for it in parsed.items]
        kept = [it for it in items if it]
        if not kept:
            bad(i, paraphrase_column, "every paraphrase in the list is empty", parsed.raw_output)
            continue
        n_empty += len(items) - len(kept)
        n_items += len(kept)
        n_list += parsed.strategy == "list"
        sid = text_id(text)
        if sid not in sources:
            sources[sid] = (sid, text, origins[i], rows[i], len(text))
        g_ids.append(request_id(TEACHER_KIND, teacher, prompt_version, {}, sid, rows[i]))
        g_sources.append(sid)
        g_strategy.append(parsed.strategy)
        g_n.append(len(items))
        g_raw.append(parsed.raw_output)
        g_items.append(kept)
    if on_progress is not None and rows:
        on_progress(len(rows) - (len(rows) - 1) // chunk * chunk)

    new_sources = [s for sid, s in sources.items() if sid not in known_source_ids]
    src_df = (pl.DataFrame(new_sources, schema=["source_id", "text", "origin", "origin_row", "n_chars"],
                           orient="row").with_columns(ingest_id=pl.lit(import_id))
              if new_sources else empty_frame("sources"))
    q_df = (pl.DataFrame(quarantine, schema=["origin", "origin_row", "field", "reason", "raw"], orient="row")
            .with_columns(stage=pl.lit("import"), ingest_id=pl.lit(import_id))
            if quarantine else empty_frame("quarantine"))
    gen_df = pl.DataFrame({
        "request_id": pl.Series(g_ids, dtype=pl.String), "source_id": pl.Series(g_sources, dtype=pl.String),
        "strategy": pl.Series(g_strategy, dtype=pl.String), "n_requested": pl.Series(g_n, dtype=pl.Int64),
        "raw_output": pl.Series(g_raw, dtype=pl.String), "items": pl.Series(g_items, dtype=pl.List(pl.String)),
    }).with_columns(**{k: pl.lit(v, dtype=GENERATIONS[k]) for k, v in constants.items()})
    stats = {"rows": len(rows), "generations": len(g_ids), "items": n_items, "empty_items": n_empty,
             "list_rows": n_list, "single_rows": len(g_ids) - n_list, "sources": len(sources),
             "sources_new": len(new_sources), "quarantined": len(quarantine)}
    return ImportResult(conform(src_df, "sources"), conform(q_df, "quarantine"), conform(gen_df, "generations"),
                        stats)
