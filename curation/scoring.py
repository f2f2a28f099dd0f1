"""Run the declared scorers over pairs: one column per metric (schemas.tables.SCORER_COLUMNS)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl

from curation.metrics import lexical, syntax
from schemas.tables import SCORER_COLUMNS


def _tokens_once(texts: list[str]) -> list[list[str]]:
    """rouge-score tokens, each distinct text tokenised once."""
    distinct = list(dict.fromkeys(texts))
    table = dict(zip(distinct, lexical.rouge_tokens(distinct), strict=True))
    return [table[t] for t in texts]


class PairAnalyses(NamedTuple):
    """The analyses of the pairs' texts, one row per text (lemmas, tree), and each pair's source and paraphrase row."""

    table: pl.DataFrame
    src_row: np.ndarray
    para_row: np.ndarray


def score_pairs(pairs: pl.DataFrame, scorers: list[str], *, src_vecs: np.ndarray | None = None,
                para_vecs: np.ndarray | None = None, analyses: PairAnalyses | None = None,
                nli: tuple[np.ndarray, np.ndarray] | None = None) -> pl.DataFrame:
    """Scores for `pairs` (pair_id, source_id, source, paraphrase), aligned row by row.

    Inputs by scorer: cosine needs `src_vecs`/`para_vecs` (L2-normalised); wpd_ld and ted need `analyses`
    (from the analyses table); nli needs `nli` = (p(source => paraphrase), p(paraphrase => source)).
    Columns of scorers not run are null.
    """
    src, para = pairs.get_column("source").to_list(), pairs.get_column("paraphrase").to_list()
    cols: dict[str, object] = {}
    need_tokens = {"rouge_l", "jaccard", "length"} & set(scorers)
    if need_tokens:
        s_tok, p_tok = _tokens_once(src), _tokens_once(para)
    if "cosine" in scorers:
        cols["cosine"] = (src_vecs * para_vecs).sum(axis=1).astype(np.float64) if pairs.height else []
    if "nli" in scorers:
        cols["nli_fwd"], cols["nli_bwd"] = nli
    if "rouge_l" in scorers:
        cols["rouge_l"] = lexical.rouge_l_f1(s_tok, p_tok)
    if "bleu" in scorers:
        cols["bleu"] = lexical.sentence_bleu(para, [[s] for s in src])
    if "jaccard" in scorers:
        cols["jaccard"] = lexical.token_jaccard(s_tok, p_tok)
    if "wpd_ld" in scorers:
        cols["wpd"], cols["ld"] = syntax.wpd_ld_by_row(analyses.table.get_column("lemmas"), analyses.src_row,
                                                       analyses.para_row)
    if "ted" in scorers:
        trees = analyses.table.get_column("tree").to_list()
        s_tree, p_tree = [trees[i] for i in analyses.src_row.tolist()], [trees[i] for i in analyses.para_row.tolist()]
        cols["ted_3"] = syntax.tree_edit_distance(s_tree, p_tree, 3)
        cols["ted_f"] = syntax.tree_edit_distance(s_tree, p_tree, None)
    if "length" in scorers:
        cols["len_ratio_chars"], cols["len_ratio_tokens"] = lexical.length_ratios(src, para, s_tok, p_tok)
    if "numbers" in scorers:
        cols["numbers_ok"] = lexical.numbers_consistent(src, para)
    if "self_bleu" in scorers:
        cols["self_bleu"] = lexical.self_bleu(para, pairs.get_column("source_id").to_list())
    out = pairs.select("pair_id", "source_id")
    series = []
    for columns in SCORER_COLUMNS.values():
        for col, dtype in columns.items():
            if col in cols:
                values = pl.Series(col, cols[col], dtype=dtype, nan_to_null=True) if dtype == pl.Float64 \
                    else pl.Series(col, cols[col], dtype=dtype)
            else:
                values = pl.Series(col, [None] * pairs.height, dtype=dtype)
            series.append(values)
    return out.with_columns(series)
