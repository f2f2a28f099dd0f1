"""Embed step: every unique text embedded once per workdir and model (embeddings table), then reused."""

from __future__ import annotations

import gc
import time

import polars as pl

from curation.embedding import embedder_id, encode, load_embedder, resolve_device, resolve_dtype
from pipelines.pool import trim_heap
from pipelines.ray_backend import actor_device
from pipelines.rowstore import opened
from pipelines.steps.pairs import PairTexts, unique_texts
from pipelines.store import Workdir
from schemas.recipe import EmbedConfig

CHUNK = 4096  # texts per stored shard: an interrupted embed loses at most one chunk


def model_id(cfg: EmbedConfig) -> str:
    return embedder_id(cfg.model, cfg.dtype, cfg.backend, cfg.device)


def on_backend(cfg: EmbedConfig, backend) -> tuple[EmbedConfig, int]:
    """The settings a backend embeds with and the GPUs each actor takes (see `actor_device`): the model id then
    names what the actors run."""
    device, gpus = actor_device(cfg.device, backend)
    return cfg.model_copy(update={"device": device}), gpus


def _embed_rows(ctx: dict, rows: pl.DataFrame) -> pl.DataFrame:
    """Vectors of one chunk of texts (on a backend's actor: the model loads once per actor, the texts come from
    the text stores); the same chunk, model and batch size give the vectors the driver's encoder gives."""
    store = None if "text" in rows.columns else opened(PairTexts, ctx["texts"])
    return _vectors(load_embedder(*ctx["model"]), rows, ctx["batch_size"], store)


def _vectors(embedder, chunk: pl.DataFrame, batch_size: int, store: PairTexts | None) -> pl.DataFrame:
    """(text_id, embedding) of a chunk of `unique_texts` rows (with texts, or ids whose texts are in `store`)."""
    texts = chunk.get_column("text") if "text" in chunk.columns else store.texts(chunk)
    vecs = encode(embedder, texts.to_list(), batch_size)
    return pl.DataFrame({"text_id": chunk.get_column("text_id"),
                         "embedding": pl.Series(list(vecs), dtype=pl.List(pl.Float32))})


def embed_missing(wd: Workdir, cfg: EmbedConfig, pairs: pl.DataFrame, progress=None,
                  store: PairTexts | None = None, backend=None) -> dict:
    """Embed the texts of `pairs` that have no stored vector for this model; returns counts and settings.

    `pairs` may be ids only (`unique_pairs(wd, texts=False)`): each chunk's texts then come from the text stores
    (`store`, or opened here). On a distributed backend (Ray) the chunks are encoded by an actor pool (a GPU per
    actor when the cluster has GPUs); locally this process encodes them, on every core."""
    t0 = time.perf_counter()
    cfg, gpus = on_backend(cfg, backend)
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
    task = progress.add_task("embed", total=todo.height, unit="texts") if progress else None
    if "text" not in todo.columns:
        store = store or PairTexts.open(wd)
    t1 = time.perf_counter()
    if getattr(backend, "distributed", False):
        device = resolve_device(cfg.device)
        stats.update(dtype=resolve_dtype(cfg.dtype, device) if cfg.backend == "torch" else "float32",
                     device=device, actors_gpus=gpus)
        ctx = {"model": (cfg.model, cfg.dtype, cfg.backend, cfg.device), "batch_size": cfg.batch_size,
               "texts": store.paths if store is not None else None}
        plan = todo.with_columns(task=(pl.int_range(pl.len(), dtype=pl.Int64) // CHUNK))
        chunks = backend.map_groups(_embed_rows, ctx, plan, "task", num_gpus=gpus,
                                    threads=None if gpus else backend.model_threads)
    else:
        embedder = load_embedder(cfg.model, cfg.dtype, cfg.backend, cfg.device)
        stats.update({k: embedder.settings[k] for k in ("dtype", "device")})
        chunks = _encoded_here(embedder, todo, cfg.batch_size, store)
        del embedder  # the generator holds it until its last chunk
    for _, chunk in chunks:
        stats["dim"] = len(chunk.get_column("embedding")[0])
        wd.append("embeddings", chunk.select("text_id", model_id=pl.lit(mid), embedding="embedding"))
        stats["embedded"] += chunk.height
        if task is not None:
            progress.advance(task, chunk.height)
    secs = time.perf_counter() - t1
    load_embedder.cache_clear()  # the stages after this one never encode: hand the model's memory back
    gc.collect()
    trim_heap()
    stats["texts_per_s"] = round(stats["embedded"] / secs, 1) if secs > 0 else None
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def _encoded_here(embedder, todo: pl.DataFrame, batch_size: int, store: PairTexts | None):
    """(chunk index, vectors) of each CHUNK of `todo`, encoded in this process (on every core)."""
    for k, start in enumerate(range(0, todo.height, CHUNK)):
        yield k, _vectors(embedder, todo.slice(start, CHUNK), batch_size, store)
