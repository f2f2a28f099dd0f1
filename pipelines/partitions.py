"""Partitions of the unique pairs: slices of bounded size that never split a source's pairs.

Scorers that compare a paraphrase with its source's other paraphrases (self-BLEU) and the within-source dedup
need a source's pairs together; everything else is per pair, so any such cut gives the results of one pass.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def by_source(pairs: pl.DataFrame, size: int) -> list[np.ndarray]:
    """Row numbers of `pairs` per partition: sources in id order, cut at the first source boundary at least
    `size` pairs into the partition (so a partition holds `size` pairs plus the rest of its last source)."""
    if pairs.height == 0:
        return []
    order = pairs.select(pl.arg_sort_by("source_id", "pair_id")).to_series().to_numpy()
    src = pairs.get_column("source_id").gather(order)
    starts = np.flatnonzero((src != src.shift(1)).fill_null(True).to_numpy())  # first row of each source
    bounds, at = [0], 0
    while True:
        k = np.searchsorted(starts, at + max(1, size), side="left")  # the first source starting `size` rows on
        if k >= starts.size:
            break
        at = int(starts[k])
        bounds.append(at)
    bounds.append(pairs.height)
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
