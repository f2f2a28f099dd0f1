"""Candidates step: explode parsed generation items into (source, paraphrase) pairs with ids and flags."""

from __future__ import annotations

import time

import polars as pl

from curation.candidates import pairs_from_generations
from pipelines.store import Workdir


def build_candidates(wd: Workdir) -> dict:
    """Append pairs for every generation not yet turned into candidates (by request id)."""
    t0 = time.perf_counter()
    seen_requests = wd.scan("candidates").select("request_id").unique().collect().get_column("request_id")
    gens = (wd.scan("generations").filter(~pl.col("request_id").is_in(seen_requests.implode()))
            .filter(pl.col("teacher_kind") != "contextual")  # the contextual step writes its own pairs
            .select("request_id", "source_id", "items").collect())
    known_pairs = set(wd.scan("candidates").select("pair_id").collect().get_column("pair_id"))
    pairs = pairs_from_generations(gens, known_pairs)
    wd.append("candidates", pairs)
    return {"generations_in": gens.height, "pairs": pairs.height,
            "source_copies": int(pairs["is_source_copy"].sum()) if pairs.height else 0,
            "repeats": int(pairs["is_repeat"].sum()) if pairs.height else 0,
            "seconds": round(time.perf_counter() - t0, 3)}
