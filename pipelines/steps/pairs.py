"""The unique candidate pairs every curation stage works on, and the content hashes that key their results."""

from __future__ import annotations

import hashlib
import json

import polars as pl

from pipelines.store import Workdir


def unique_pairs(wd: Workdir) -> pl.DataFrame:
    """One row per pair id (repeats and moderation-flagged paraphrases left out), with source text, by pair_id.

    `group_id` is the context of a contextual pair (method B dedups inside a context), else the source."""
    flagged = wd.scan("moderation").filter(pl.col("flagged") & (pl.col("role") == "output")).select(
        pl.col("text_id").alias("candidate_id"))
    cands = wd.scan("candidates").filter(~pl.col("is_repeat")).join(flagged, on="candidate_id", how="anti")
    src = wd.scan("sources").select("source_id", pl.col("text").alias("source"))
    return (cands.join(src, on="source_id")
            .select("pair_id", "source_id", "candidate_id", "source", "paraphrase", "is_source_copy", "request_id",
                    pl.coalesce("context_id", "source_id").alias("group_id"))
            .unique("pair_id", keep="first").sort("pair_id").collect())


def content_key(*parts: object) -> str:
    """A short stable hash of JSON-able parts (settings, model ids, pair-set hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pair_set_hash(pairs: pl.DataFrame) -> str:
    """Hash of the sorted pair ids: changes whenever a pair is added or removed."""
    h = hashlib.sha256()
    for pid in pairs.get_column("pair_id").sort().to_list():
        h.update(pid.encode())
    return h.hexdigest()[:16]


def unique_texts(pairs: pl.DataFrame) -> pl.DataFrame:
    """(text_id, text) for every source and paraphrase of `pairs`, each once."""
    return pl.concat([
        pairs.select(pl.col("source_id").alias("text_id"), pl.col("source").alias("text")),
        pairs.select(pl.col("candidate_id").alias("text_id"), pl.col("paraphrase").alias("text")),
    ]).unique("text_id", keep="first").sort("text_id")
