"""Ingest step: read each input, normalise and id its texts, append sources/duplicates/quarantine shards.

An input whose content and options were ingested before is skipped; the ingest id is derived from them,
so a run killed between two table appends resumes without writing any row twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import polars as pl

from curation.ingest import prepare_sources, read_input
from pipelines.manifest import RunManifest, file_fingerprint
from pipelines.store import Workdir
from schemas.recipe import SourceSpec


def _ingest_key(fingerprint: dict, spec: SourceSpec, max_chars: int) -> str:
    canon = json.dumps({"fp": fingerprint.get("sha256"), "col": spec.text_column, "split": spec.split,
                        "max_chars": max_chars}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _has_ingest(wd: Workdir, table: str, ingest_id: str) -> bool:
    return wd.scan(table).filter(pl.col("ingest_id") == ingest_id).select(pl.len()).collect().item() > 0


def ingest_sources(wd: Workdir, specs: list[SourceSpec], max_chars: int, manifest: RunManifest,
                   progress=None) -> dict:
    """Ingest every spec into the workdir; returns per-input counts (read = kept + duplicates + quarantined)."""
    t0 = time.perf_counter()
    per_input = []
    for spec in specs:
        path = Path(spec.path)
        local = path.exists() and not spec.path.startswith("hf:")
        fp = file_fingerprint(path) if local else None
        raw = None
        if fp is None:  # a Hub dataset: fingerprint its content
            raw = read_input(spec.path, spec.text_column, spec.split)
            digest = hashlib.sha256(raw.get_column("value").hash().to_numpy().tobytes()).hexdigest()
            fp = {"path": spec.path, "sha256": digest, "rows": raw.height}
        manifest.add_input(fp)
        key = _ingest_key(fp, spec, max_chars)
        done = wd.stage_done("ingest", key)
        if done:
            per_input.append({**done, "skipped": True})
            continue
        if raw is None:
            raw = read_input(spec.path, spec.text_column, spec.split)
        task = progress.add_task(f"ingest {path.name}", total=raw.height, unit="rows") if progress else None
        known = set(wd.scan("sources").select("source_id").collect().get_column("source_id"))
        sources, dups, quarantine = prepare_sources(raw, max_chars, known, key)
        for table, df in (("quarantine", quarantine), ("source_duplicates", dups), ("sources", sources)):
            if not _has_ingest(wd, table, key):
                wd.append(table, df)
        info = {"input": spec.path, "ingest_id": key, "read": raw.height, "kept": sources.height,
                "duplicates": dups.height, "quarantined": quarantine.height}
        wd.mark_stage_done("ingest", key, info)
        per_input.append(info)
        if progress:
            progress.update(task, completed=raw.height)
    totals = {k: sum(p[k] for p in per_input if not p.get("skipped")) for k in
              ("read", "kept", "duplicates", "quarantined")}
    return {**totals, "inputs": per_input, "seconds": round(time.perf_counter() - t0, 3)}
