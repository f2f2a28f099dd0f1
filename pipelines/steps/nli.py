"""NLI entailment probabilities, cached per (premise, hypothesis, model) in the nli_cache table."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.ray_backend import actor_device
from pipelines.store import Workdir
from schemas.recipe import NLIConfig

CHUNK = 2048  # premise/hypothesis pairs per stored shard


def nli_model(cfg: NLIConfig):
    from curation.nli import load_nli

    return load_nli(cfg.model, cfg.device, cfg.dtype)


def settings_key(cfg: NLIConfig) -> dict:
    """The NLI settings plus, for a local folder, its content fingerprint (a changed model is a new result set)."""
    from pathlib import Path

    from curation.nli import folder_fingerprint

    path = Path(cfg.model).expanduser() if cfg.model else None
    return {**cfg.model_dump(), "fingerprint": folder_fingerprint(path) if path and path.is_dir() else None}


def cache_id(model, cfg: NLIConfig) -> str:
    """nli_cache key: the model's content id plus what changes its probabilities (device, dtype, max_length);
    without a loaded `model`, from `cfg` (its config only: the weights load on the actors)."""
    if model is None:  # the device is the actors' (cpu or cuda), which this driver may lack
        from curation.nli import nli_model_id

        return f"{nli_model_id(cfg.model)}|{cfg.device}|{cfg.dtype}|{cfg.max_length}"
    return f"{model.model_id}|{model.device}|{cfg.dtype}|{cfg.max_length}"


def entailment(wd: Workdir, cfg: NLIConfig, premises: pl.DataFrame, progress=None, label: str = "nli",
               backend=None) -> np.ndarray:
    """p(premise => hypothesis) for each row of `premises` (premise_id, premise, hypothesis_id, hypothesis).

    Pairs already in nli_cache for this model are read back; the rest go to the model and are stored, CHUNK pairs
    per shard: in this process, or on a distributed backend (Ray) by an actor pool (a GPU per actor when the
    cluster has GPUs) that loads the model once per actor.
    """
    if premises.height == 0:
        return np.zeros(0, dtype=np.float32)
    device, gpus = actor_device(cfg.device, backend)
    cfg = cfg.model_copy(update={"device": device})
    distributed = getattr(backend, "distributed", False)
    model = None if distributed else nli_model(cfg)
    mid = cache_id(model, cfg)
    keys = premises.select("premise_id", "hypothesis_id")
    cached = (wd.scan("nli_cache").filter(pl.col("model_id") == mid)
              .select("premise_id", "hypothesis_id", "entailment").collect()
              .unique(["premise_id", "hypothesis_id"], keep="first"))
    todo = (premises.unique(["premise_id", "hypothesis_id"], keep="first", maintain_order=True)  # fixed chunks
            .join(cached, on=["premise_id", "hypothesis_id"], how="anti", maintain_order="left"))
    task = progress.add_task(label, total=todo.height, unit="pairs") if (progress and todo.height) else None
    ctx = {"model": (cfg.model, cfg.device, cfg.dtype), "batch_size": cfg.batch_size, "max_length": cfg.max_length}
    if distributed:
        plan = todo.with_columns(task=pl.int_range(pl.len(), dtype=pl.Int64) // CHUNK)
        chunks = backend.map_groups(_nli_rows, ctx, plan, "task", num_gpus=gpus,
                                    threads=None if gpus else backend.model_threads)
    else:
        chunks = ((k, _nli_rows(ctx, todo.slice(a, CHUNK))) for k, a in enumerate(range(0, todo.height, CHUNK)))
    new = []
    for _, rows in chunks:
        wd.append("nli_cache", rows.with_columns(model_id=pl.lit(mid)).select(
            "premise_id", "hypothesis_id", "model_id", "entailment"))
        new.append(rows)
        if task is not None:
            progress.advance(task, rows.height)
    table = pl.concat([cached, *new]) if new else cached
    out = keys.join(table, on=["premise_id", "hypothesis_id"], how="left", maintain_order="left")
    return out.get_column("entailment").to_numpy().astype(np.float32)


def _nli_rows(ctx: dict, chunk: pl.DataFrame) -> pl.DataFrame:
    """(premise_id, hypothesis_id, entailment) of one chunk (here or on an actor: the model loads once per
    process); the same chunk gives the same probabilities wherever it runs."""
    from curation.nli import entailment_probs, load_nli

    probs = entailment_probs(load_nli(*ctx["model"]), chunk["premise"].to_list(), chunk["hypothesis"].to_list(),
                             batch_size=ctx["batch_size"], max_length=ctx["max_length"])
    return chunk.select("premise_id", "hypothesis_id").with_columns(
        entailment=pl.Series(np.asarray(probs, dtype=np.float32)))


def both_directions(wd: Workdir, cfg: NLIConfig, pairs: pl.DataFrame, progress=None,
                    backend=None) -> tuple[np.ndarray, np.ndarray]:
    """p(source => paraphrase) and p(paraphrase => source) for each pair, through the cache."""
    fwd = pairs.select(pl.col("source_id").alias("premise_id"), pl.col("source").alias("premise"),
                       pl.col("candidate_id").alias("hypothesis_id"), pl.col("paraphrase").alias("hypothesis"))
    bwd = fwd.select(pl.col("hypothesis_id").alias("premise_id"), pl.col("hypothesis").alias("premise"),
                     pl.col("premise_id").alias("hypothesis_id"), pl.col("premise").alias("hypothesis"))
    probs = entailment(wd, cfg, pl.concat([fwd, bwd]), progress, backend=backend)
    return probs[: pairs.height], probs[pairs.height:]
