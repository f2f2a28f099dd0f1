"""Turn parsed teacher outputs into candidate pairs (real filtering happens in later stages)."""

from __future__ import annotations

import polars as pl

from curation.text import normalize_expr, pair_id, text_id
from schemas.tables import empty_frame


def pairs_from_generations(gens: pl.DataFrame, known_pairs: set[str]) -> pl.DataFrame:
    """One row per parsed item, in (request_id, item_index) order.

    `is_source_copy`: the paraphrase equals its source after normalisation. `is_repeat`: the same pair came
    from an earlier item or is in `known_pairs`; the first occurrence is the one that counts.
    """
    if gens.height == 0:
        return empty_frame("candidates")
    df = (
        gens.sort("request_id")
        .select("request_id", "source_id", pl.col("items").list.eval(pl.element()).alias("paraphrase"))
        .with_columns(item_index=pl.int_ranges(pl.col("paraphrase").list.len()))
        .explode("paraphrase", "item_index")
        .drop_nulls("paraphrase")
        .with_columns(paraphrase=normalize_expr("paraphrase"))
        .filter(pl.col("paraphrase") != "")
    )
    df = df.with_columns(candidate_id=pl.col("paraphrase").map_elements(text_id, return_dtype=pl.String))
    df = df.with_columns(
        pair_id=pl.struct("source_id", "candidate_id").map_elements(
            lambda r: pair_id(r["source_id"], r["candidate_id"]), return_dtype=pl.String),
        is_source_copy=pl.col("candidate_id") == pl.col("source_id"),
    ).with_row_index("_order")
    first = pl.col("_order") == pl.col("_order").min().over("pair_id")
    df = df.with_columns(is_repeat=~first | pl.col("pair_id").is_in(list(known_pairs)),
                         item_index=pl.col("item_index").cast(pl.Int64), context_id=pl.lit(None, pl.String))
    return df.drop("_order")
