"""Import step (`teacher.kind: import`): bring a teacher corpus made elsewhere into the workdir's tables.

Appends `sources` (texts not yet stored), `generations` (one per usable input row, teacher_kind "import") and
`quarantine` (every other row, with its reason); the candidates step then turns generations into pairs.

Idempotent and resumable: the prompt version is derived from the input's content fingerprint and the column
options, so request ids are the same on every rerun. A finished import is recognised by its stage marker and
skipped; an import killed between two appends is redone and writes only the rows that are not stored yet
(generations by request id, quarantine by import id + row, sources by content id).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import polars as pl

from curation.import_pairs import import_rows
from curation.ingest import read_records
from pipelines.manifest import RunManifest, file_fingerprint
from pipelines.store import Workdir
from schemas.errors import InputError
from schemas.recipe import ImportTeacherConfig

_TEXT_DTYPES = (pl.String, pl.Categorical, pl.Null, pl.Object)
IMPORT_SLICE = 100_000  # input rows turned into table rows and appended at once: memory follows the slice


def _sha(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def import_keys(fingerprint: dict, cfg: ImportTeacherConfig, max_chars: int) -> dict[str, str]:
    """The ids of one import: `prompt_version` (content + columns: names the requests), `import_id` (+ max_chars:
    tags its sources/quarantine rows) and `stage_key` (+ teacher label and limit: the finished-stage marker)."""
    version = "import@" + _sha({"fp": fingerprint.get("sha256"), "source_column": cfg.source_column,
                                "paraphrase_column": cfg.paraphrase_column, "split": cfg.split})
    import_id = _sha({"version": version, "max_chars": max_chars})
    stage_key = _sha({"import_id": import_id, "teacher": cfg.teacher, "limit": cfg.limit})
    return {"prompt_version": version, "import_id": import_id, "stage_key": stage_key}


def _check_dtypes(records: pl.DataFrame, cfg: ImportTeacherConfig) -> None:
    origin = records.get_column("_origin")[0] if records.height else cfg.path
    src = records.schema[cfg.source_column]
    if not (src in _TEXT_DTYPES or isinstance(src, pl.Enum)):
        raise InputError(f"{origin}: source column {cfg.source_column!r} holds {src}, not text; "
                         "pass --source-column")
    para = records.schema[cfg.paraphrase_column]
    inner = para.inner if isinstance(para, pl.List | pl.Array) else para
    if not (inner in _TEXT_DTYPES or isinstance(inner, pl.Enum)):
        raise InputError(f"{origin}: paraphrase column {cfg.paraphrase_column!r} holds {para}, not text or a "
                         "list of texts; pass --paraphrase-column")


def _read(cfg: ImportTeacherConfig) -> pl.DataFrame:
    hints = {cfg.source_column: "--source-column (teacher.source_column in a recipe)",
             cfg.paraphrase_column: "--paraphrase-column (teacher.paraphrase_column in a recipe)"}
    records = read_records(cfg.path, [cfg.source_column, cfg.paraphrase_column], cfg.split, hints)
    _check_dtypes(records, cfg)
    return records


def _content_digest(records: pl.DataFrame, cfg: ImportTeacherConfig) -> str:
    cols = list(dict.fromkeys([cfg.source_column, cfg.paraphrase_column]))
    try:
        hashes = records.select(cols).hash_rows(seed=0).to_numpy().tobytes()
    except Exception:  # a dtype polars cannot hash: fall back to the values' text
        hashes = repr(records.select(cols).rows()).encode()
    return hashlib.sha256(hashes).hexdigest()


def import_pairs(wd: Workdir, cfg: ImportTeacherConfig, max_chars: int, manifest: RunManifest,
                 progress=None) -> dict:
    """Import `cfg.path` into `wd`; returns counts for the input (rows = generations + quarantined).

    `rows`, `generations`, `items`, `empty_items` (empty items dropped from lists), `quarantined` describe
    the input (first `cfg.limit` rows); `sources_new` and `written` are what this call appended; `skipped`
    is true when this import (same content, options, teacher and limit) had already finished.
    """
    t0 = time.perf_counter()
    if cfg.source_column == cfg.paraphrase_column:
        raise InputError(f"{cfg.path}: source_column and paraphrase_column are both {cfg.source_column!r}; "
                         "pass --source-column / --paraphrase-column")
    path = Path(cfg.path)
    local = path.exists() and not cfg.path.startswith("hf:")
    records = None
    if local:
        fp = file_fingerprint(path)
    else:  # a Hub dataset: fingerprint its content
        records = _read(cfg)
        fp = {"path": cfg.path, "sha256": _content_digest(records, cfg), "rows": records.height}
    manifest.add_input(fp)
    keys = import_keys(fp, cfg, max_chars)
    base_info = {"input": cfg.path, "teacher": cfg.teacher, **keys}
    zeros = {"generations": 0, "quarantine": 0, "sources": 0}
    done = wd.stage_done("import", keys["stage_key"])
    if done:
        return {**done, "sources_new": 0, "written": zeros, "skipped": True,
                "seconds": round(time.perf_counter() - t0, 3)}
    if records is None:
        records = _read(cfg)
    if cfg.limit:
        records = records.head(cfg.limit)

    task = None
    if progress is not None:
        task = progress.add_task(f"import {path.name or cfg.path}", total=records.height, unit="rows")
    known = set(wd.scan("sources").select("source_id").collect().get_column("source_id"))
    # resume: keep only rows the store does not hold yet (a run killed between appends)
    stored_requests = (wd.scan("generations").filter(pl.col("prompt_version") == keys["prompt_version"])
                       .select("request_id").collect().get_column("request_id"))
    stored_rows = (wd.scan("quarantine").filter((pl.col("ingest_id") == keys["import_id"])
                                                & (pl.col("stage") == "import"))
                   .select("origin_row").collect().get_column("origin_row"))
    totals: dict[str, int] = {}
    written = {"generations": 0, "quarantine": 0, "sources": 0}
    seen: set[str] = set()  # the input's sources so far (the Python objects of one slice only are alive at once)
    for start in range(0, records.height, IMPORT_SLICE):
        result = import_rows(
            records.slice(start, IMPORT_SLICE), cfg.source_column, cfg.paraphrase_column, teacher=cfg.teacher,
            prompt_version=keys["prompt_version"], import_id=keys["import_id"], run_id=manifest.run_id,
            max_chars=max_chars, known_source_ids=known,
            on_progress=(lambda n: progress.update(task, advance=n)) if progress is not None else None,
        )
        gens = result.generations.filter(~pl.col("request_id").is_in(stored_requests.implode()))
        quarantine = result.quarantine.filter(~pl.col("origin_row").is_in(stored_rows.implode()))
        # sources first: a generation row never points at a source that is not stored
        wd.append("sources", result.sources)
        wd.append("generations", gens)
        wd.append("quarantine", quarantine)
        for k, v in result.stats.items():
            totals[k] = totals.get(k, 0) + v
        for table, frame in (("generations", gens), ("quarantine", quarantine), ("sources", result.sources)):
            written[table] += frame.height
        chunk_sources = set(result.generations.get_column("source_id").to_list())
        seen |= chunk_sources
        known |= chunk_sources
    totals["sources"] = len(seen)  # a source repeated in several slices counts once
    stats = {"rows": 0, "generations": 0, "items": 0, "empty_items": 0, "list_rows": 0, "single_rows": 0,
             "quarantined": 0, **totals}
    info = {**base_info, "rows": stats["rows"], "generations": stats["generations"], "items": stats["items"],
            "empty_items": stats["empty_items"], "list_rows": stats["list_rows"],
            "single_rows": stats["single_rows"], "sources": stats["sources"], "quarantined": stats["quarantined"]}
    wd.mark_stage_done("import", keys["stage_key"], info)
    return {**info, "sources_new": written["sources"], "written": written,
            "skipped": False, "seconds": round(time.perf_counter() - t0, 3)}
