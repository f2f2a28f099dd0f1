"""Labels step: human label files into the `labels` table, and the labels a calibration fits to.

An import is keyed by the file's content and the column options, so importing the same file again writes
nothing; a changed file's rows replace the older labels of the same pairs (`labels` shows the newest row per
label id, `labels_history` every row). Pairs of the workdir are marked `in_corpus`; the others are outside
pairs: scored for calibration (`label_scores`), never filtered or exported.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from curation.ingest import read_records
from curation.labels import label_rows
from pipelines.manifest import RunManifest, file_fingerprint
from pipelines.steps.pairs import content_key
from pipelines.store import Workdir
from schemas.errors import InputError
from schemas.recipe import LabelFileSpec


def current_labels(wd: Workdir) -> pl.DataFrame:
    """The newest row of every label id (what the `labels` view shows)."""
    return (wd.scan("labels").sort("at").group_by("label_id", maintain_order=True).last()
            .sort("pair_id", "label_id").collect())


def import_labels(wd: Workdir, spec: LabelFileSpec, max_chars: int, manifest: RunManifest, progress=None) -> dict:
    """Import one human label file; returns counts (rows = labels + quarantined), `skipped` when already done."""
    t0 = time.perf_counter()
    columns = [spec.source_column, spec.paraphrase_column, spec.label_column,
               *([spec.rewrite_column] if spec.rewrite_column else [])]
    if len(set(columns)) < len(columns):
        raise InputError(f"{spec.path}: the source, paraphrase, label (and rewrite) columns must differ; got "
                         f"{', '.join(columns)}; pass --source-column / --paraphrase-column / --label-column")
    path = Path(spec.path)
    fp = file_fingerprint(path) if path.exists() else {"path": spec.path}
    manifest.add_input(fp)
    key = content_key("labels-v1", fp.get("sha256") or spec.path, spec.model_dump(), max_chars)
    done = wd.stage_done("labels", key)
    if done:
        return {**done, "skipped": True, "seconds": round(time.perf_counter() - t0, 3)}
    hints = {spec.source_column: "--source-column", spec.paraphrase_column: "--paraphrase-column",
             spec.label_column: "--label-column"}
    records = read_records(spec.path, columns, hints=hints)
    task = progress.add_task(f"labels {path.name or spec.path}", total=records.height, unit="rows") \
        if progress is not None else None
    labels, quarantine = label_rows(records, spec.source_column, spec.paraphrase_column, spec.label_column,
                                    spec.rewrite_column, max_chars=max_chars, file=str(spec.path))
    corpus = wd.scan("candidates").select("pair_id").unique().collect().get_column("pair_id")
    labels = labels.with_columns(in_corpus=pl.col("pair_id").is_in(corpus.implode()),
                                 run_id=pl.lit(manifest.run_id), at=pl.lit(time.time_ns()))
    # a run killed between the two appends wrote its labels already: only what is not stored goes again
    stored = wd.scan("labels").filter(pl.col("file") == str(spec.path)).select(
        "label_id", "label", "rewrite", "origin_row").collect()
    new = labels.join(stored, on=["label_id", "label", "rewrite", "origin_row"], how="anti", nulls_equal=True)
    wd.append("labels", new)
    stored_q = (wd.scan("quarantine").filter((pl.col("stage") == "labels") & (pl.col("ingest_id") == key))
                .select("origin_row").collect().get_column("origin_row"))
    wd.append("quarantine", quarantine.with_columns(ingest_id=pl.lit(key))
              .filter(~pl.col("origin_row").is_in(stored_q.implode())))
    if task is not None:
        progress.update(task, advance=records.height)
    stats = {"input": str(spec.path), "rows": records.height, "labels": labels.height,
             "positive": int(labels.get_column("label").sum()), "in_corpus": int(labels.get_column("in_corpus").sum()),
             "outside": int((~labels.get_column("in_corpus")).sum()), "quarantined": quarantine.height,
             "written": new.height, "seconds": round(time.perf_counter() - t0, 3)}
    wd.mark_stage_done("labels", key, stats)
    return stats
