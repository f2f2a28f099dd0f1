"""Pair and corpus metrics as pure, vectorised functions over whole columns (lists, numpy, Polars).

- `lexical`: ROUGE-L, sentence BLEU, self-BLEU, token Jaccard, length ratios, numbers rule.
- `syntax`: spaCy analysis (lemmas + dependency tree), WPD, LD, tree edit distance (TED-3 / TED-F).
- `corpus`: the dataset-quality table of method B (cos-sim, H2, H3, MSTTR, Jaccard, TED-3, TED-F, WPD, LD).

Every pair metric equals its reference library (rouge-score, sacrebleu, paraphrase-metrics, apted) on the
same inputs; tests/test_metrics.py checks that.
"""

from .corpus import corpus_metrics
from .lexical import (
    length_ratios,
    numbers_consistent,
    rouge_l_f1,
    rouge_tokens,
    self_bleu,
    sentence_bleu,
    token_jaccard,
)
from .syntax import analyse, ld, load_spacy, tree_edit_distance, wpd

__all__ = [
    "analyse",
    "corpus_metrics",
    "ld",
    "length_ratios",
    "load_spacy",
    "numbers_consistent",
    "rouge_l_f1",
    "rouge_tokens",
    "self_bleu",
    "sentence_bleu",
    "token_jaccard",
    "tree_edit_distance",
    "wpd",
]
