"""The unique candidate pairs every curation stage works on, their texts, and the content hashes that key results.

At scale the curation stages hold the pairs as ids only (`unique_pairs(wd, texts=False)`); a stage that needs
texts takes them for its own chunk or partition from two row stores (`PairTexts`), so the texts of a million
pairs are never in memory at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from pipelines.rowstore import RowsStore
from pipelines.store import Workdir

ID_COLUMNS = ("pair_id", "source_id", "candidate_id", "is_source_copy", "group_id")
HASH_CHUNK = 100_000  # pair ids hashed per slice: the Python strings of a million ids are never made at once


def unique_pairs(wd: Workdir, texts: bool = True) -> pl.DataFrame:
    """One row per pair id (repeats and moderation-flagged paraphrases left out), by pair_id; with `texts`, also
    the source and paraphrase texts and the request id, else ids only (ID_COLUMNS).

    `group_id` is the context of a contextual pair (method B dedups inside a context), else the source."""
    flagged = wd.scan("moderation").filter(pl.col("flagged") & (pl.col("role") == "output")).select(
        pl.col("text_id").alias("candidate_id"))
    cands = wd.scan("candidates").filter(~pl.col("is_repeat")).join(flagged, on="candidate_id", how="anti")
    group = pl.coalesce("context_id", "source_id").alias("group_id")
    if not texts:
        return (cands.select(*ID_COLUMNS[:-1], group).unique("pair_id", keep="first").sort("pair_id")
                .collect(engine="streaming"))
    src = wd.scan("sources").select("source_id", pl.col("text").alias("source"))
    return (cands.join(src, on="source_id")
            .select("pair_id", "source_id", "candidate_id", "source", "paraphrase", "is_source_copy", "request_id",
                    group)
            .unique("pair_id", keep="first").sort("pair_id").collect())


def content_key(*parts: object) -> str:
    """A short stable hash of JSON-able parts (settings, model ids, pair-set hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pair_set_hash(pairs: pl.DataFrame) -> str:
    """Hash of the sorted pair ids: changes whenever a pair is added or removed."""
    h = hashlib.sha256()
    ids = pairs.get_column("pair_id").sort()
    for start in range(0, ids.len(), HASH_CHUNK):
        for pid in ids.slice(start, HASH_CHUNK).to_list():
            h.update(pid.encode())
    return h.hexdigest()[:16]


def unique_texts(pairs: pl.DataFrame) -> pl.DataFrame:
    """Every source and paraphrase of `pairs` once, by text_id: (text_id, text) from pairs with texts; from ids
    only, (text_id, pair_id), where pair_id names the pair whose paraphrase it is (null: a source), for
    `PairTexts.texts`. The text of an id is its source's when it is one, else the first pair's paraphrase."""
    if "source" in pairs.columns:
        return pl.concat([
            pairs.select(pl.col("source_id").alias("text_id"), pl.col("source").alias("text")),
            pairs.select(pl.col("candidate_id").alias("text_id"), pl.col("paraphrase").alias("text")),
        ]).unique("text_id", keep="first").sort("text_id")
    return pl.concat([
        pairs.select(pl.col("source_id").alias("text_id"), pl.lit(None, pl.String).alias("pair_id")),
        pairs.select(pl.col("candidate_id").alias("text_id"), "pair_id"),
    ]).unique("text_id", keep="first", maintain_order=True).sort("text_id")


class PairTexts:
    """The texts of the unique pairs from row stores: sources by source_id, paraphrases by pair_id."""

    def __init__(self, sources: RowsStore, paraphrases: RowsStore):
        self.sources, self.paraphrases = sources, paraphrases

    @classmethod
    def open(cls, wd: Workdir) -> PairTexts:
        """The stores of `wd`, built (one pass over sources and candidates) when those tables changed."""
        return cls(RowsStore.open(wd, "sources", "source_id", pl.lit(True), ["text"], "texts"),
                   RowsStore.open(wd, "candidates", "pair_id", ~pl.col("is_repeat"), ["paraphrase"], "texts"))

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.sources.path, self.paraphrases.path

    @classmethod
    def at(cls, paths: tuple[Path, Path]) -> PairTexts:
        """Stores already built (a pool worker opens the parent's by path)."""
        return cls(RowsStore.at(paths[0]), RowsStore.at(paths[1]))

    def attach(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """`pairs` (ids) with their `source` and `paraphrase` columns."""
        return pairs.with_columns(
            source=self.sources.take(pairs.get_column("source_id")).get_column("text"),
            paraphrase=self.paraphrases.take(pairs.get_column("pair_id")).get_column("paraphrase"))

    def texts(self, ids: pl.DataFrame) -> pl.Series:
        """The text of each row of a `unique_texts` frame of ids (text_id, pair_id), in order."""
        is_src = ids.get_column("pair_id").is_null()
        out = pl.Series("text", [None] * ids.height, dtype=pl.String)
        if is_src.any():
            src = self.sources.take(ids.get_column("text_id").filter(is_src)).get_column("text")
            out = out.scatter(is_src.arg_true(), src)
        if (~is_src).any():
            para = self.paraphrases.take(ids.get_column("pair_id").filter(~is_src)).get_column("paraphrase")
            out = out.scatter((~is_src).arg_true(), para)
        return out
