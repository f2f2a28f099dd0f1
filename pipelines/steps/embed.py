"""Embed step: every unique text embedded once per workdir and model (embeddings table), then reused."""

from __future__ import annotations

import gc
import time

import polars as pl

from curation.embedding import embedder_id, encode, load_embedder
from pipelines.pool import trim_heap
from pipelines.steps.pairs import PairTexts, unique_texts
from pipelines.store import Workdir
from schemas.recipe import EmbedConfig

CHUNK = 4096  # texts per stored shard: an interrupted embed loses at most one chunk


def model_id(cfg: EmbedConfig) -> str:
    return embedder_id(cfg.model, cfg.dtype, cfg.backend, cfg.device)


def embed_missing(wd: Workdir, cfg: EmbedConfig, pairs: pl.DataFrame, progress=None,
                  store: PairTexts | None = None) -> dict:
    """Embed the texts of `pairs` that have no stored vector for this model; returns counts and settings.

    `pairs` may be ids only (`unique_pairs(wd, texts=False)`): each chunk's texts then come from the text stores
    (`store`, or opened here)."""
    t0 = time.perf_counter()
    mid = model_id(cfg)
    texts = unique_texts(pairs)
    done = (wd.scan("embeddings").filter(pl.col("model_id") == mid).select("text_id").collect()
            .get_column("text_id"))
    todo = texts.filter(~pl.col("text_id").is_in(done.implode()))
    stats = {"model_id": mid, "texts": texts.height, "cached": texts.height - todo.height, "embedded": 0,
             "batch_size": cfg.batch_size, "backend": cfg.backend}
    if todo.height == 0:
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        return stats
    embedder = load_embedder(cfg.model, cfg.dtype, cfg.backend, cfg.device)
    stats.update({k: embedder.settings[k] for k in ("dtype", "device", "dim")})
    task = progress.add_task("embed", total=todo.height, unit="texts") if progress else None
    t1 = time.perf_counter()
    if "text" not in todo.columns:
        store = store or PairTexts.open(wd)
    for start in range(0, todo.height, CHUNK):
        chunk = todo.slice(start, CHUNK)
        texts_of = chunk.get_column("text") if "text" in chunk.columns else store.texts(chunk)
        vecs = encode(embedder, texts_of.to_list(), cfg.batch_size)
        wd.append("embeddings", pl.DataFrame({
            "text_id": chunk.get_column("text_id"), "model_id": [mid] * chunk.height,
            "embedding": pl.Series(list(vecs), dtype=pl.List(pl.Float32))}))
        stats["embedded"] += chunk.height
        if task is not None:
            progress.advance(task, chunk.height)
    secs = time.perf_counter() - t1
    del embedder
    load_embedder.cache_clear()  # the stages after this one never encode: hand the model's memory back
    gc.collect()
    trim_heap()
    stats["texts_per_s"] = round(stats["embedded"] / secs, 1) if secs > 0 else None
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats

