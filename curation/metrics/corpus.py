"""Corpus-level quality numbers: the columns of method B's dataset-quality table (METHODS.md).

`corpus_metrics(df)` reads one row per pair: `source_id`, `source`, `paraphrase`, and when present the per-pair
scores `cosine`, `jaccard`, `ted_3`, `ted_f`, `wpd`, `ld`. Definitions chosen here (the README quotes them):

- `cos_sim`: mean of `cosine` x 100.
- `h2`, `h3`: Shannon entropy in bits of the corpus' 2-gram / 3-gram frequency distribution, over the
  paraphrases' rouge tokens (lowercase runs of [a-z0-9], `lexical.rouge_tokens`); n-grams never cross two
  paraphrases. None when the corpus has no such n-gram.
- `msttr`: mean segmental type-token ratio x 100: the paraphrases' rouge tokens concatenated in row order, cut
  into segments of 50 tokens, a trailing partial segment dropped; None when there is no full segment.
- `jaccard`: mean of `jaccard` x 100; when the column is absent it is computed from the texts
  (`lexical.token_jaccard` on rouge tokens).
- `ted_3`, `ted_f`, `wpd`, `ld`: means of those columns.
- `pairs`, `sources` (distinct `source_id`), `pairs_per_source`.

A missing input column gives None for its metric; NaN and null scores are left out of the means. Zero rows give
pairs = sources = 0, pairs_per_source = 0.0 and None for every metric.
"""

from __future__ import annotations

import math
from collections import Counter

import polars as pl

from .lexical import rouge_tokens, token_jaccard

__all__ = ["corpus_metrics", "ngram_entropy", "msttr", "MSTTR_SEGMENT"]

MSTTR_SEGMENT = 50
_MEAN_COLUMNS = {"cos_sim": ("cosine", 100.0), "ted_3": ("ted_3", 1.0), "ted_f": ("ted_f", 1.0),
                 "wpd": ("wpd", 1.0), "ld": ("ld", 1.0)}


def ngram_entropy(token_lists: list[list[str]], n: int) -> float | None:
    """Entropy (bits) of the distribution of n-grams over all token lists (n-grams stay inside one list)."""
    counts: Counter = Counter()
    for toks in token_lists:
        if len(toks) >= n:
            counts.update(zip(*(toks[i:] for i in range(n)), strict=False))
    total = sum(counts.values())
    if total == 0:
        return None
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def msttr(token_lists: list[list[str]], segment: int = MSTTR_SEGMENT) -> float | None:
    """Mean segmental type-token ratio (x100) over the concatenated tokens; None without a full segment."""
    flat = [t for toks in token_lists for t in toks]
    n_seg = len(flat) // segment
    if n_seg == 0:
        return None
    ratios = [len(set(flat[k * segment : (k + 1) * segment])) / segment for k in range(n_seg)]
    return 100.0 * sum(ratios) / n_seg


def _mean(series: pl.Series, scale: float) -> float | None:
    s = series.cast(pl.Float64).fill_nan(None).drop_nulls()
    if s.len() == 0:
        return None
    return float(s.mean()) * scale


def corpus_metrics(df: pl.DataFrame) -> dict:
    """Method B's dataset-quality columns for a table of pairs (see the module docstring)."""
    for col in ("source_id", "source", "paraphrase"):
        if col not in df.columns:
            raise ValueError(f"corpus_metrics needs a {col!r} column")
    pairs = df.height
    sources = df["source_id"].n_unique() if pairs else 0
    out: dict = {"cos_sim": None, "h2": None, "h3": None, "msttr": None, "jaccard": None,
                 "ted_3": None, "ted_f": None, "wpd": None, "ld": None,
                 "pairs": pairs, "sources": sources, "pairs_per_source": pairs / sources if sources else 0.0}
    if pairs == 0:
        return out
    para = [p or "" for p in df["paraphrase"].to_list()]
    tgt_tokens = rouge_tokens(para)
    out["h2"] = ngram_entropy(tgt_tokens, 2)
    out["h3"] = ngram_entropy(tgt_tokens, 3)
    out["msttr"] = msttr(tgt_tokens)
    if "jaccard" in df.columns:
        out["jaccard"] = _mean(df["jaccard"], 100.0)
    else:
        src_tokens = rouge_tokens([s or "" for s in df["source"].to_list()])
        out["jaccard"] = _mean(pl.Series(token_jaccard(src_tokens, tgt_tokens)), 100.0)
    for key, (col, scale) in _MEAN_COLUMNS.items():
        if col in df.columns:
            out[key] = _mean(df[col], scale)
    return out
