"""Parse step: spaCy lemmas and dependency trees, once per unique text and analyser (analyses table).

Texts are parsed in tasks of bounded size by the process pool (one spaCy per worker) and each task's result is
a shard, so an interrupted parse resumes after its last written task and memory follows the task size.
"""

from __future__ import annotations

import threading
import time

import polars as pl

from pipelines.pool import Pool
from pipelines.rowstore import RowsStore, opened
from pipelines.steps.pairs import PairTexts
from pipelines.store import Workdir

WORKER_TASKS = 32  # parse tasks a worker runs before a fresh one takes over: spaCy's vocabulary grows with the
# texts it has seen (a worker reached 1.1 GB after 600k texts), a fresh worker costs about a second
TASK_TEXTS = 2048  # most texts per pool task and stored shard: an interrupted parse loses at most this many per worker


def analyzer_id(spacy_model: str) -> str:
    import spacy

    version = spacy.util.get_package_version(spacy_model) or "unknown"
    return f"spacy:{spacy_model}@{version}"


def _parse_rows(ctx: dict, rows: pl.DataFrame) -> pl.DataFrame:
    """(text_id, lemmas, tree, n_tokens) of each text of `rows` (text_id, text) or ids (text_id, pair_id), whose
    texts come from the text stores named in `ctx`; runs in a pool worker or a Ray actor (spaCy loaded once)."""
    from curation.metrics.syntax import analyse, load_spacy

    texts = rows.get_column("text") if "text" in rows.columns else opened(PairTexts, ctx["texts"]).texts(rows)
    return analyse(texts.to_list(), load_spacy(ctx["spacy_model"])).with_columns(text_id=rows.get_column("text_id"))


def parse_missing(wd: Workdir, texts: pl.DataFrame, spacy_model: str, pool: Pool, partition_size: int,
                  progress=None, stop: threading.Event | None = None, store: PairTexts | None = None) -> dict:
    """Parse the texts of `texts` (text_id, text), or of `unique_texts` ids (text_id, pair_id) through the text
    stores (`store`, or opened here), that have no stored analysis for this analyser, in tasks of at most
    TASK_TEXTS and at most `partition_size` in flight across the pool's workers."""
    from curation.metrics.syntax import load_spacy

    t0 = time.perf_counter()
    aid = analyzer_id(spacy_model)
    load_spacy(spacy_model)  # a missing model is one clear error here, not one per worker
    done = wd.scan("analyses").filter(pl.col("analyzer") == aid).select("text_id").collect().get_column("text_id")
    todo = texts.filter(~pl.col("text_id").is_in(done.implode()))
    stats = {"analyzer": aid, "texts": texts.height, "cached": texts.height - todo.height, "parsed": 0,
             "workers": pool.workers}
    task = progress.add_task("parse", total=todo.height, unit="texts") if (progress and todo.height) else None
    size = max(1, min(TASK_TEXTS, -(-partition_size // pool.workers)))
    stats["task_texts"] = size
    ctx = {"spacy_model": spacy_model}
    if "text" not in todo.columns and todo.height:
        ctx["texts"] = (store or PairTexts.open(wd)).paths
    plan = todo.with_columns(task=pl.int_range(pl.len(), dtype=pl.Int64) // size)
    for _, parsed in pool.map_groups(_parse_rows, ctx, plan, "task", stop=stop, tasks_per_worker=WORKER_TASKS):
        wd.append("analyses", parsed.with_columns(analyzer=pl.lit(aid)))
        stats["parsed"] += parsed.height
        if task is not None:
            progress.advance(task, parsed.height)
    secs = time.perf_counter() - t0
    stats["texts_per_s"] = round(stats["parsed"] / secs, 1) if stats["parsed"] and secs > 0 else None
    stats["seconds"] = round(secs, 3)
    return stats


def analyses_store(wd: Workdir, spacy_model: str) -> RowsStore:
    """Every stored analysis of this analyser, by text_id (built once after the parse)."""
    aid = analyzer_id(spacy_model)
    return RowsStore.open(wd, "analyses", "text_id", pl.col("analyzer") == aid, ["lemmas", "tree", "n_tokens"], aid)

