"""curation.metrics: every vectorised metric equals its reference library on realistic pairs, plus edge cases."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import sacrebleu
from apted import APTED
from apted.helpers import Tree
from paraphrase_metrics import metrics as pm
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from curation.metrics import corpus, lexical, syntax
from schemas.errors import RecipeError

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("metric_refs", REPO / "bench/metric_refs.py")
refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refs)

EXTRA = [  # hand-made hard cases appended to the generated pairs
    ("The final score was 3 to 1.", "The final score was 3 to 1."),
    ("The final score was 3 to 1.", "It ended 3-1, final score."),
    ("Add 200 grams of flour.", "Add 1,000 grams of flour!"),
    ("", "Something from nothing."),
    ("Something from nothing.", ""),
    ("", ""),
    ("Ok", "ok"),
    ("Hi.", "Hello there."),
    ("a a a b a", "a b a a"),
    ("the cat the dog the cat", "the dog the cat"),
    ("Price: $3.50 &amp; tax... (approx.) -- 5-6 items; 1,000,000 units.", "Roughly 5 - 6 items at $3.50, tax extra."),
    ("Café au lait, s'il vous plaît — naïve résumé İstanbul.", "CAFÉ AU LAIT S'IL VOUS PLAÎT"),
    ("Rain. More rain! Then sun?", "Sun, then rain... and more rain."),
    ("New York (CNN) -- The mayor said on Monday that the plan would go ahead.",
     "The plan will go ahead, the mayor of New York said Monday."),
    ("word " * 30 + "end.", "end " + "word " * 29),
]


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol)


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str], list[str]]:
    ids, src, tgt = refs.make_pairs(300, seed=7)
    for k, (s, t) in enumerate(EXTRA):
        ids.append(f"x{k}")
        src.append(s)
        tgt.append(t)
    assert len(src) >= 300 and len(set(tgt)) > 150
    return ids, src, tgt


@pytest.fixture(scope="module")
def nlp():
    return syntax.load_spacy()


@pytest.fixture(scope="module")
def parsed(pairs, nlp):
    """The reference docs (one nlp.pipe over the unique texts) and our analysis of the same texts."""
    _, src, tgt = pairs
    texts = list(dict.fromkeys(src + tgt))
    docs = dict(zip(texts, nlp.pipe(texts), strict=True))
    table = syntax.analyse(texts, nlp)
    rows = dict(zip(texts, table.iter_rows(named=True), strict=True))
    return docs, rows, table


# ------------------------------------------------------------------------------------------------ lexical
def test_rouge_tokens_match_rouge_score(pairs):
    _, src, tgt = pairs
    texts = src + tgt
    assert lexical.rouge_tokens(texts) == [rouge_tokenize.tokenize(t, None) for t in texts]


def test_rouge_l_matches_rouge_score(pairs):
    _, src, tgt = pairs
    ours = lexical.rouge_l_f1(lexical.rouge_tokens(src), lexical.rouge_tokens(tgt))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    ref = [scorer.score(s, t)["rougeL"].fmeasure for s, t in zip(src, tgt, strict=True)]
    assert ours.dtype == np.float64 and len(ours) == len(ref)
    bad = [(s, t, a, b) for s, t, a, b in zip(src, tgt, ours, ref, strict=True) if not close(a, b)]
    assert not bad, bad[:3]
    assert 0 < (ours == 1.0).sum() < len(ours) and (ours == 0.0).sum() > 0  # the pair set spans the range


def test_bleu_matches_sacrebleu_single_reference(pairs):
    _, src, tgt = pairs
    ours = lexical.sentence_bleu(tgt, [[s] for s in src])
    ref = [sacrebleu.sentence_bleu(t, [s]).score for s, t in zip(src, tgt, strict=True)]
    bad = [(s, t, a, b) for s, t, a, b in zip(src, tgt, ours, ref, strict=True) if not close(a, b)]
    assert not bad, bad[:3]
    assert len({round(x, 6) for x in ref}) > 50


def test_bleu_matches_sacrebleu_multi_reference(pairs):
    _, src, tgt = pairs
    rng = random.Random(3)
    multi = [[s, *rng.sample(tgt, rng.randrange(0, 4))] for s in src]
    multi[0] = [src[0], None, tgt[5]]  # sacrebleu skips None references
    ours = lexical.sentence_bleu(tgt, multi)
    ref = [sacrebleu.sentence_bleu(t, r).score for t, r in zip(tgt, multi, strict=True)]
    bad = [(t, r, a, b) for t, r, a, b in zip(tgt, multi, ours, ref, strict=True) if not close(a, b)]
    assert not bad, bad[:3]


def test_bleu_large_local_vocabulary_fallback():
    # > 55,000 distinct tokens in one hypothesis' references take the token-by-token path
    big = " ".join(f"w{i}" for i in range(56000))
    hyp = "w1 w2 w3 w9 w10 w11 zz w4"
    assert close(lexical.sentence_bleu([hyp], [[big]])[0], sacrebleu.sentence_bleu(hyp, [big]).score)


def test_self_bleu_matches_loop(pairs):
    ids, _, tgt = pairs
    groups = [f"g{int(i[1:]) % 37}" if i.startswith("s") else i for i in ids]  # sizes 1 .. ~10
    ours = lexical.self_bleu(tgt, groups)
    ref = refs.ref_self_bleu(tgt, groups)
    assert any(math.isnan(x) for x in ref) and not all(math.isnan(x) for x in ref)
    bad = [(t, a, b) for t, a, b in zip(tgt, ours, ref, strict=True) if not close(a, b)]
    assert not bad, bad[:3]


def test_self_bleu_hand_case():
    out = lexical.self_bleu(["a b c d", "a b c d", "x y", "lonely"], ["g", "g", "g", "h"])
    assert close(out[0], sacrebleu.sentence_bleu("a b c d", ["a b c d", "x y"]).score)
    assert close(out[0], 100.0)
    assert close(out[2], sacrebleu.sentence_bleu("x y", ["a b c d", "a b c d"]).score)
    assert math.isnan(out[3])


def test_bleu_edge_cases():
    out = lexical.sentence_bleu(["", "a", "", "Same words here ."], [["a b"], [""], [""], ["Same words here ."]])
    ref = [sacrebleu.sentence_bleu(h, r).score for h, r in
           [("", ["a b"]), ("a", [""]), ("", [""]), ("Same words here .", ["Same words here ."])]]
    assert all(close(a, b) for a, b in zip(out, ref, strict=True)) and close(out[3], 100.0)
    assert math.isnan(lexical.sentence_bleu(["a"], [[]])[0])
    with pytest.raises(TypeError):
        lexical.sentence_bleu(["a"], ["a"])


def test_bleu_tokens_are_sacrebleus(pairs):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    _, src, tgt = pairs
    tok = Tokenizer13a()
    assert lexical.bleu_tokens(src + tgt) == [tok(t.rstrip()).split() for t in src + tgt]


def test_token_jaccard(pairs):
    _, src, tgt = pairs
    st, tt = lexical.rouge_tokens(src), lexical.rouge_tokens(tgt)
    ours = lexical.token_jaccard(st, tt)
    for a, b, j in zip(st, tt, ours, strict=True):
        sa, sb = set(a), set(b)
        expected = 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)
        assert close(j, expected)
    edge = lexical.token_jaccard([[], ["a"], ["a", "b", "b"], ["x"]], [[], [], ["b", "c"], ["x"]])
    assert edge.tolist() == [1.0, 0.0, 1 / 3, 1.0]


def test_length_ratios():
    src, tgt = ["abcd", "", "one two", "héllo"], ["ab", "x", "one two three four", "héllo!"]
    chars, toks = lexical.length_ratios(src, tgt, lexical.rouge_tokens(src), lexical.rouge_tokens(tgt))
    assert chars[0] == 0.5 and math.isnan(chars[1]) and chars[2] == 18 / 7 and chars[3] == 6 / 5
    assert toks[0] == 1.0 and math.isnan(toks[1]) and toks[2] == 2.0 and toks[3] == 2 / 2


def test_numbers_consistent():
    src = ["Add 200 grams.", "It costs 1,000 dollars.", "Pi is 3.14.", "No numbers.", "Score 3 to 1.",
           "Three cats.", "Room 12b at 9:30.", "The year 2020."]
    tgt = ["Add 200 g of flour.", "It costs 1000 dollars.", "Pi is 3.", "Five numbers.", "Score 1 to 3.",
           "3 cats.", "Room 12 at 9:30 sharp.", "In 2021."]
    assert lexical.numbers_consistent(src, tgt).tolist() == [True, True, False, True, True, False, True, False]
    assert lexical.numbers_consistent([""], [""]).tolist() == [True]


def test_rouge_edge_cases():
    out = lexical.rouge_l_f1([[], ["a"], ["a", "b", "c"], ["a", "b"]], [["a"], [], ["c", "b", "a"], ["a", "b"]])
    assert out.tolist() == [0.0, 0.0, 1 / 3, 1.0]
    with pytest.raises(ValueError):
        lexical.rouge_l_f1([["a"]], [])


# -------------------------------------------------------------------------------------------------- syntax
def test_analyse_shape_and_lemmas(parsed):
    docs, rows, table = parsed
    assert table.schema == pl.Schema(syntax.ANALYSIS_SCHEMA)
    assert table.height == len(docs)
    for text, doc in docs.items():
        assert rows[text]["lemmas"] == [t.lemma_ for t in doc]
        assert rows[text]["n_tokens"] == len(doc)


def test_tree_format(nlp):
    table = syntax.analyse(["The cat sat.", "", "It rained. We stayed home."], nlp)
    tree = table["tree"][0]
    assert tree == "{TOP{ROOT/VERB{nsubj/NOUN{det/DET}}{punct/PUNCT}}}"
    assert table["tree"][1] == "{TOP}" and table["n_tokens"][1] == 0 and table["lemmas"][1].to_list() == []
    multi = Tree.from_text(table["tree"][2])
    assert multi.name == "TOP" and [c.name.split("/")[0] for c in multi.children] == ["ROOT", "ROOT"]
    assert Tree.from_text(tree).bracket() == tree


def test_wpd_ld_match_paraphrase_metrics(pairs, parsed):
    _, src, tgt = pairs
    docs, rows, _ = parsed
    ours_w = syntax.wpd([rows[s]["lemmas"] for s in src], [rows[t]["lemmas"] for t in tgt])
    ours_l = syntax.ld([rows[s]["lemmas"] for s in src], [rows[t]["lemmas"] for t in tgt])
    with contextlib.redirect_stdout(io.StringIO()):
        ref_w = [pm.wpd(docs[s], docs[t]) for s, t in zip(src, tgt, strict=True)]
        ref_l = [pm.ld(docs[s], docs[t]) for s, t in zip(src, tgt, strict=True)]
    assert not [(s, t) for s, t, a, b in zip(src, tgt, ours_w, ref_w, strict=True) if not close(a, b)]
    assert not [(s, t) for s, t, a, b in zip(src, tgt, ours_l, ref_l, strict=True) if not close(a, b)]
    assert (ours_w == 0).any() and (ours_w == 1).any() and ((ours_w > 0) & (ours_w < 1)).sum() > 50


def test_wpd_ld_by_row_equals_the_reference_on_the_stored_column(pairs, parsed):
    """The scorer's path: one List(String) row per text (analyses table), pairs as row indices."""
    _, src, tgt = pairs
    docs, rows, _ = parsed
    texts = list(dict.fromkeys(src + tgt))
    row = {t: i for i, t in enumerate(texts)}
    column = pl.Series([rows[t]["lemmas"] for t in texts], dtype=pl.List(pl.String))
    w, ld = syntax.wpd_ld_by_row(column, [row[s] for s in src], [row[t] for t in tgt])
    with contextlib.redirect_stdout(io.StringIO()):
        ref_w = [pm.wpd(docs[s], docs[t]) for s, t in zip(src, tgt, strict=True)]
        ref_l = [pm.ld(docs[s], docs[t]) for s, t in zip(src, tgt, strict=True)]
    assert all(close(a, b) for a, b in zip(w, ref_w, strict=True))
    assert all(close(a, b) for a, b in zip(ld, ref_l, strict=True))


def test_wpd_ld_by_row_reads_sliced_null_and_unicode_columns():
    lists = [["zz"], ["a", "b", "a"], ["b", "a"], None, ["é", "ß", "."], ["ß", "é"], [], ["x", None, "y"],
             ["x", "", "y"]]
    column = pl.concat([pl.Series(lists[:4], dtype=pl.List(pl.String)),
                        pl.Series(lists[4:], dtype=pl.List(pl.String))], rechunk=False).slice(1)
    plain = [lst or [] for lst in lists[1:]]
    plain = [[t if t is not None else "" for t in lst] for lst in plain]
    src_row, tgt_row = [0, 3, 2, 6, 0, 5], [1, 4, 0, 7, 2, 5]
    got = syntax.wpd_ld_by_row(column, src_row, tgt_row)
    want = syntax.wpd_ld([plain[i] for i in src_row], [plain[i] for i in tgt_row])
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert close(got[0][0], 0.5) and got[1][1] == 0.0  # the same alphanumeric lemmas, non-ASCII
    with pytest.raises(IndexError):
        syntax.wpd_ld_by_row(column, [0], [8])
    # a slice of one chunk with no null list: the Arrow offsets start past 0 (list and string offsets)
    rows = [["zz", "y"], ["a", "b", "c", "d"], ["d", "a"], ["é", "b"]]
    sliced = pl.Series(rows, dtype=pl.List(pl.String)).slice(1)
    got = syntax.wpd_ld_by_row(sliced, [0, 2, 1], [1, 0, 2])
    want = syntax.wpd_ld([rows[1], rows[3], rows[2]], [rows[2], rows[1], rows[3]])
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and len(set(got[1])) == 3
    # other list-of-string dtypes read as their strings
    empty = pl.Series([[], []])  # List(Null)
    assert syntax.wpd_ld_by_row(empty, [0], [1])[1].tolist() == [1.0]
    cat = pl.Series([["a", "b", "a"], ["b", "a"]], dtype=pl.List(pl.Categorical))
    assert np.array_equal(syntax.wpd_ld_by_row(cat, [0], [1])[0], syntax.wpd_ld([["a", "b", "a"]], [["b", "a"]])[0])


def test_wpd_ld_hand_cases():
    # repeated lemma: source has more occurrences -> average over its positions of the nearest target position
    w = syntax.wpd([["a", "b", "a"], ["x"], ["p", "q"]], [["b", "a"], ["x", "y"], ["r", "s"]])
    # a: source positions 0, 1 vs target 1 -> (1 + 0) / 2; b: |0.5 - 0| -> WPD = (0.5 + 0.5) / 2
    assert close(w[0], 0.5)
    assert w[1] == 0.0 and w[2] == 1.0
    assert syntax.ld([[".", ","]], [["!"]]).tolist() == [1.0]
    assert syntax.ld([["a", "b", "."]], [["b", "c", "c"]]).tolist() == [1 - 1 / 3]


def test_tree_edit_distance_matches_apted(pairs, parsed):
    _, src, tgt = pairs
    _, rows, _ = parsed
    st = [rows[s]["tree"] for s in src]
    tt = [rows[t]["tree"] for t in tgt]
    for depth in (3, None):
        ours = syntax.tree_edit_distance(st, tt, depth)
        ref = refs.ref_ted(st, tt, depth)
        assert ours.tolist() == ref, depth
    full = syntax.tree_edit_distance(st, tt, None)
    top3 = syntax.tree_edit_distance(st, tt, 3)
    assert (top3 != full).any() and full.max() >= 12 and top3.max() >= 3


def test_tree_edit_distance_hand_cases():
    a, b = "{A{B{X}{Y}{F}}{C}}", "{A{Y}{B{X}}{F}}"
    expected = APTED(Tree.from_text(a), Tree.from_text(b)).compute_edit_distance()
    assert syntax.tree_edit_distance([a], [b], None).tolist() == [expected]
    # truncation: TOP is level 1, so max_depth=1 keeps only the roots and max_depth=2 their children
    assert syntax.tree_edit_distance([a], [b], 1).tolist() == [0.0]
    assert syntax.tree_edit_distance([a], [b], 2).tolist() == [2.0]  # {A{B}{C}} vs {A{Y}{B}{F}}
    assert syntax.tree_edit_distance(["{TOP}", ""], ["{TOP{a}{b}}", "{x{y}}"], None).tolist() == [2.0, 2.0]
    with pytest.raises(ValueError):
        syntax.tree_edit_distance(["{a}"], ["{a}"], 0)


def test_load_spacy_missing_model():
    with pytest.raises(RecipeError, match="not installed"):
        syntax.load_spacy("no_such_spacy_model_xyz")


# -------------------------------------------------------------------------------------------------- corpus
def test_corpus_metrics_hand_computed():
    # paraphrase tokens: "a b a b" -> bigrams ab, ba, ab ; "c d" -> cd ; 4 bigrams: ab x2, ba, cd
    df = pl.DataFrame({
        "source_id": ["s1", "s1", "s2"],
        "source": ["a b", "x y", "c d e"],
        "paraphrase": ["A b, a b.", "", "c d"],
        "cosine": [0.9, 0.8, float("nan")],
        "ted_3": [1.0, 2.0, 3.0],
    })
    m = corpus.corpus_metrics(df)
    h2 = -(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25))
    assert close(m["h2"], h2)
    assert close(m["h3"], 1.0)  # trigrams: aba, bab -> two equiprobable
    assert m["msttr"] is None  # 6 tokens: no full segment of 50
    assert close(m["jaccard"], 100 * (1.0 + 0.0 + 2 / 3) / 3)  # {a,b}|{a,b}; {x,y}|{}; {c,d,e}|{c,d}
    assert close(m["cos_sim"], 85.0)  # NaN left out
    assert close(m["ted_3"], 2.0)
    assert m["ted_f"] is None and m["wpd"] is None and m["ld"] is None
    assert (m["pairs"], m["sources"]) == (3, 2) and close(m["pairs_per_source"], 1.5)


def test_corpus_msttr_segments():
    # 120 tokens: segment 1 = 50 distinct, segment 2 = 25 types x2, trailing 20 dropped
    seg1 = " ".join(f"w{i}" for i in range(50))
    seg2 = " ".join(f"v{i % 25}" for i in range(50))
    tail = " ".join("z" for _ in range(20))
    df = pl.DataFrame({"source_id": ["a", "b", "c"], "source": ["x", "y", "z"], "paraphrase": [seg1, seg2, tail],
                       "jaccard": [0.1, 0.2, None]})
    m = corpus.corpus_metrics(df)
    assert close(m["msttr"], 100 * (1.0 + 0.5) / 2)
    assert close(m["jaccard"], 15.0)


def test_corpus_metrics_empty():
    df = pl.DataFrame(schema={"source_id": pl.String, "source": pl.String, "paraphrase": pl.String})
    m = corpus.corpus_metrics(df)
    assert m["pairs"] == 0 and m["sources"] == 0 and m["pairs_per_source"] == 0.0
    assert all(m[k] is None for k in ("cos_sim", "h2", "h3", "msttr", "jaccard", "ted_3", "ted_f", "wpd", "ld"))
