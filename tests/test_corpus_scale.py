"""Method B's corpus metrics at scale: the vectorised path equals the previous Counter-based code exactly.

The reference below is a verbatim copy of the previous `curation/metrics/corpus.py` functions (Python token
lists, a Counter of n-grams, sets per MSTTR segment) and of the previous `metrics_by_selection` (one
`corpus_metrics` per selection). Every value is compared with `==`: the new code adds the entropy terms in the
Counter's order with CPython's own sum() algorithm, so even h2 / h3 are bit-for-bit the previous values.

Run as a script to measure the previous and the new filter-step metrics pass on synthetic paraphrases:
    .venv/bin/python tests/test_corpus_scale.py [N_PAIRS]        (default 1,000,000; prints, asserts nothing)
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numba
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curation.metrics import corpus
from curation.metrics.corpus import corpus_metrics, corpus_metrics_split
from curation.metrics.lexical import rouge_tokens, token_jaccard
from schemas.tables import CORPUS_METRICS

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ reference: the previous implementation
def ref_ngram_entropy(token_lists, n):
    counts: Counter = Counter()
    for toks in token_lists:
        if len(toks) >= n:
            counts.update(zip(*(toks[i:] for i in range(n)), strict=False))
    total = sum(counts.values())
    if total == 0:
        return None
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def ref_msttr(token_lists, segment=50):
    flat = [t for toks in token_lists for t in toks]
    n_seg = len(flat) // segment
    if n_seg == 0:
        return None
    ratios = [len(set(flat[k * segment : (k + 1) * segment])) / segment for k in range(n_seg)]
    return 100.0 * sum(ratios) / n_seg


def ref_mean(series, scale):
    s = series.cast(pl.Float64).fill_nan(None).drop_nulls()
    if s.len() == 0:
        return None
    return float(s.mean()) * scale


_MEANS = {"cos_sim": ("cosine", 100.0), "ted_3": ("ted_3", 1.0), "ted_f": ("ted_f", 1.0), "wpd": ("wpd", 1.0),
          "ld": ("ld", 1.0)}


def ref_corpus_metrics(df):
    pairs = df.height
    sources = df["source_id"].n_unique() if pairs else 0
    out = {"cos_sim": None, "h2": None, "h3": None, "msttr": None, "jaccard": None, "ted_3": None, "ted_f": None,
           "wpd": None, "ld": None, "pairs": pairs, "sources": sources,
           "pairs_per_source": pairs / sources if sources else 0.0}
    if pairs == 0:
        return out
    tgt_tokens = rouge_tokens([p or "" for p in df["paraphrase"].to_list()])
    out["h2"] = ref_ngram_entropy(tgt_tokens, 2)
    out["h3"] = ref_ngram_entropy(tgt_tokens, 3)
    out["msttr"] = ref_msttr(tgt_tokens)
    if "jaccard" in df.columns:
        out["jaccard"] = ref_mean(df["jaccard"], 100.0)
    else:
        src_tokens = rouge_tokens([s or "" for s in df["source"].to_list()])
        out["jaccard"] = ref_mean(pl.Series(token_jaccard(src_tokens, tgt_tokens)), 100.0)
    for key, (col, scale) in _MEANS.items():
        if col in df.columns:
            out[key] = ref_mean(df[col], scale)
    return out


def ref_metrics_by_selection(pairs, scores, decisions):
    df = (pairs.select("pair_id", "source_id", "source", "paraphrase")
          .join(scores.drop("source_id"), on="pair_id").join(decisions.select("pair_id", "kept"), on="pair_id"))
    rows = []
    for name, part in (("all", df), ("kept", df.filter(pl.col("kept"))), ("dropped", df.filter(~pl.col("kept")))):
        rows.append({"selection": name, **ref_corpus_metrics(part)})
    frame = pl.DataFrame(rows, infer_schema_length=None)
    return frame.select([pl.col(c).cast(t) if c in frame.columns else pl.lit(None, t).alias(c)
                         for c, t in CORPUS_METRICS.items() if c != "filter_id"])


# --------------------------------------------------------------------------------------------------- inputs
WORDS = ["alpha", "Beta", "GAMMA", "delta", "x1", "9,000", "3.5", "a-b", "don't", "e.g.", "café", "naïve", "ß",
         "straße", "İstanbul", "\u212aelvin", "ﬁne", "Ωmega", "δx", "日本語", "emoji🙂ok", "e\u0301t\u00e9", "tab\tsep",
         "nul\x00byte", "  ", "", "--", "A", "b", "C"]


def random_texts(rng: random.Random, n: int) -> list[str | None]:
    pool: list[str | None] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            pool.append(None)
        elif r < 0.10:
            pool.append("")
        elif r < 0.25:
            pool.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2))))  # < 3 tokens
        elif r < 0.35 and pool:
            pool.append(rng.choice(pool))  # a repeated text
        else:
            pool.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + rng.choice([".", "!", ""]))
    return pool


def random_frame(seed: int, n: int = 600, jaccard: bool = True) -> tuple[pl.DataFrame, pl.Series]:
    rng = random.Random(seed)
    paras = random_texts(rng, n)
    cols = {"source_id": [f"s{rng.randint(0, n // 3)}" for _ in range(n)],
            "source": random_texts(rng, n), "paraphrase": paras,
            "cosine": [rng.choice([None, float("nan"), rng.random()]) for _ in range(n)],
            "ted_3": [rng.random() * 5 for _ in range(n)], "wpd": [None] * n}
    if jaccard:
        cols["jaccard"] = [rng.choice([None, rng.random()]) for _ in range(n)]
    df = pl.DataFrame(cols, schema_overrides={"wpd": pl.Float64})
    kept = pl.Series("kept", [None if rng.random() < 0.05 else rng.random() < 0.6 for _ in range(n)])
    return df, kept


def split_reference(df: pl.DataFrame, kept: pl.Series) -> dict[str, dict]:
    return {"all": ref_corpus_metrics(df), "kept": ref_corpus_metrics(df.filter(kept)),
            "dropped": ref_corpus_metrics(df.filter(~kept))}


def synthetic_paraphrases(n: int, vocab: int = 5000, seed: int = 0) -> list[str]:
    """n paraphrases of 8-30 words drawn from a vocabulary of `vocab` random lowercase words."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(vocab)], dtype=object)
    lens = rng.integers(8, 31, n)
    flat = words[rng.integers(0, vocab, int(lens.sum()))]
    ends = np.cumsum(lens).tolist()
    return [" ".join(flat[b - m : b]).capitalize() + "." for b, m in zip(ends, lens.tolist(), strict=True)]


# ---------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("jaccard", [True, False])
def test_random_texts_equal_previous_code(seed, jaccard):
    df, kept = random_frame(seed, jaccard=jaccard)
    before = df.clone()
    expected = split_reference(df, kept)
    assert corpus_metrics_split(df, kept) == expected
    assert corpus_metrics(df) == expected["all"]
    assert df.equals(before)  # the non-ASCII texts are rewritten in a copy only
    assert expected["all"]["msttr"] is not None and expected["kept"]["h3"] is not None


def test_every_counting_path_equals_previous_code(monkeypatch):
    """One sort of packed keys, one sort per first token, and the hash table (when keys do not fit) agree."""
    df, kept = random_frame(5, n=400)
    expected = split_reference(df, kept)
    taken = []
    for name in ("_bucket_keys", "_ngram_ids"):
        real = getattr(corpus, name)

        def spy(*args, _real=real, _name=name):
            taken.append(_name if _name == "_ngram_ids" else f"by_first={args[4]}")
            return _real(*args)
        monkeypatch.setattr(corpus, name, spy)
    for bits in range(63, 10, -4):  # fewer bits to pack a key in: one sort, then a sort per first token, then hashing
        for small_sort, part_keys in ((2, 1 << 22), (10**9, 1 << 22), (1024, 50)):  # numpy / numba; key parts
            monkeypatch.setattr(corpus, "_KEY_BITS", bits)
            monkeypatch.setattr(corpus, "_NUMPY_SORT", small_sort)
            monkeypatch.setattr(corpus, "_PART_KEYS", part_keys)
            assert corpus_metrics_split(df, kept) == expected
    assert {"by_first=False", "by_first=True", "_ngram_ids"} <= set(taken)


def test_large_counts_and_tiny_histogram(monkeypatch):
    """Counts beyond the dense histogram take the searched term table; one n-gram only gives -0.0 as before."""
    df = pl.DataFrame({"source_id": ["a"] * 300, "source": ["x"] * 300,
                       "paraphrase": ["the cat sat"] * 200 + ["the dog sat on the mat"] * 99 + ["solo"]})
    kept = pl.Series([True] * 150 + [False] * 150)
    monkeypatch.setattr(corpus, "_HIST", 4)
    assert corpus_metrics_split(df, kept) == split_reference(df, kept)
    one = pl.DataFrame({"source_id": ["a"], "source": ["x"], "paraphrase": ["Rain rain"]})
    got, ref = corpus_metrics(one), ref_corpus_metrics(one)
    assert got == ref and math.copysign(1.0, got["h2"]) == math.copysign(1.0, ref["h2"]) and got["h3"] is None


def test_vocabulary_growth_blocks_and_chunks(monkeypatch):
    """Thousands of distinct tokens over tiny row blocks (the vocabulary grows and resumes mid-block), a
    sliced frame (Arrow offsets) and a frame of several chunks."""
    rng = random.Random(3)
    paras = [" ".join(f"W{rng.randint(0, 4000)}x{'é' if rng.random() < 0.02 else ''}"
                      for _ in range(rng.randint(0, 25))) for _ in range(1500)]
    df = pl.DataFrame({"source_id": [str(i % 97) for i in range(1500)], "source": paras[::-1], "paraphrase": paras})
    kept = pl.Series([i % 3 != 0 for i in range(1500)])
    monkeypatch.setattr(corpus, "_BLOCK_ROWS", 7)
    assert corpus_metrics_split(df, kept) == split_reference(df, kept)
    part = df.slice(333, 900)
    assert corpus_metrics(part) == ref_corpus_metrics(part)
    chunked = pl.concat([df.slice(0, 500), df.slice(500, 1000)], rechunk=False)
    assert chunked.n_chunks() == 2
    assert corpus_metrics_split(chunked, kept) == split_reference(chunked, kept)


def test_demo_sources_equal_previous_code():
    lines = (REPO / "pipelines/data/demo_sources.txt").read_text(encoding="utf-8").splitlines()
    n = len(lines)
    df = pl.DataFrame({"source_id": [f"s{i // 2}" for i in range(n)], "source": lines[1:] + lines[:1],
                       "paraphrase": lines, "cosine": [i / n for i in range(n)]})
    kept = pl.Series([i % 4 != 1 for i in range(n)])
    expected = split_reference(df, kept)
    assert corpus_metrics_split(df, kept) == expected
    assert expected["all"]["msttr"] is not None and expected["dropped"]["msttr"] is not None


def test_filter_step_metrics_equal_previous_code(monkeypatch):
    """`metrics_by_selection` (the filter step's table) equals the previous one, tokenising the texts once."""
    from pipelines.steps import filter as filter_step

    rng = random.Random(11)
    n = 500
    paras = random_texts(rng, n)
    pairs = pl.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "source_id": [f"s{i // 3}" for i in range(n)],
                          "source": random_texts(rng, n), "paraphrase": paras})
    order = list(range(n))
    rng.shuffle(order)
    order = order[: n - 20]  # pairs without scores are left out by the join
    scores = pl.DataFrame({"pair_id": [f"p{i}" for i in order], "source_id": [f"s{i // 3}" for i in order],
                           "cosine": [rng.random() for _ in order], "jaccard": [rng.random() for _ in order],
                           "ted_3": [None] * len(order)}, schema_overrides={"ted_3": pl.Float64})
    decisions = pl.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "kept": [rng.random() < 0.7 for _ in range(n)]})
    decisions = decisions.sample(fraction=1.0, shuffle=True, seed=5)
    encoded = []
    real = corpus._Vocab.encode
    monkeypatch.setattr(corpus._Vocab, "encode", lambda self, texts: encoded.append(texts.name) or real(self, texts))
    got = filter_step.metrics_by_selection(pairs, scores, decisions)
    assert encoded == ["paraphrase"]
    # the previous pipeline always stored scores and decisions in pair order, so its join kept that order; ours
    # keeps the pairs' order whatever order the scores were written in (partitions write them by source)
    in_order = [f.join(pairs.select("pair_id").with_row_index("_r"), on="pair_id").sort("_r").drop("_r")
                for f in (scores, decisions)]
    assert_frame_equal(got, ref_metrics_by_selection(pairs, *in_order))
    nobody = decisions.with_columns(kept=pl.lit(False))
    assert_frame_equal(filter_step.metrics_by_selection(pairs, scores, nobody),
                       ref_metrics_by_selection(pairs, in_order[0], in_order[1].with_columns(kept=pl.lit(False))))


def test_texts_by_row_number():
    """Scores aligned to their texts by row number (a join's order, some pairs left out) equal the gathered frame."""
    df, kept = random_frame(6, n=500, jaccard=False)
    rows = list(range(499, 0, -2)) + list(range(0, 300, 2))
    texts = df.select("source_id", "source", "paraphrase")
    scores = df.select("cosine", "ted_3", "wpd")[rows]
    sel = kept[rows]
    expected = split_reference(df[rows], sel)
    assert corpus_metrics_split(scores, sel, texts=texts, rows=rows) == expected
    assert corpus_metrics_split(scores, sel, texts=texts, rows=pl.Series(rows, dtype=pl.UInt32)) == expected
    with pytest.raises(ValueError, match="texts needs rows"):
        corpus_metrics_split(scores, sel, texts=texts)
    with pytest.raises(ValueError, match=r"rows must give a row of texts \(0..499\) for each of the 400 rows"):
        corpus_metrics_split(scores, sel, texts=texts, rows=[*rows[:-1], 500])


def test_no_python_token_lists(monkeypatch):
    """The corpus pass tokenises from the Arrow buffers: rouge_tokens (a Python list per text) is never called."""
    from curation.metrics import lexical

    def boom(*_a, **_k):
        raise AssertionError("rouge_tokens called")
    df, kept = random_frame(4, n=200, jaccard=False)
    expected = split_reference(df, kept)
    monkeypatch.setattr(lexical, "rouge_tokens", boom)
    monkeypatch.setattr(corpus, "rouge_tokens", boom, raising=False)
    assert corpus_metrics_split(df, kept) == expected


def test_list_helpers_equal_previous_code():
    rng = random.Random(9)
    lists = [[rng.choice(["a", "b", "c", "\x00", "x\x00y", "é", ""]) for _ in range(rng.randint(0, 12))]
             for _ in range(300)]
    for n in (1, 2, 3, 4):
        assert corpus.ngram_entropy(lists, n) == ref_ngram_entropy(lists, n)
    for seg in (1, 7, 50, 10**6):
        assert corpus.msttr(lists, seg) == ref_msttr(lists, seg)
    assert corpus.ngram_entropy([[], ["a"]], 2) is None and corpus.msttr([], 50) is None


@numba.njit
def _python_sum(xs, neumaier):  # pragma: no cover - compiled
    f = 0.0
    comp = 0.0
    for x in xs:
        f, comp = corpus._add(f, comp, x, neumaier)
    if neumaier and comp != 0.0 and math.isfinite(comp):
        f += comp
    return f


def test_sum_is_cpythons_sum():
    """The entropy kernels add floats exactly as this interpreter's builtin sum() does."""
    rng = np.random.default_rng(0)
    for xs in (-rng.random(10_000) * 1e-3, rng.normal(size=5000) * 10.0 ** rng.integers(-12, 12, 5000),
               np.array([1e16, 1.0, -1e16, 3.0, 1e-3])):
        assert _python_sum(xs, corpus._NEUMAIER) == sum(xs.tolist())


def test_bad_input():
    df = pl.DataFrame({"source_id": ["a"], "source": ["x"], "paraphrase": ["y"]})
    with pytest.raises(ValueError, match="kept has 2 values for 1 rows"):
        corpus_metrics_split(df, [True, False])
    with pytest.raises(ValueError, match="'paraphrase'"):
        corpus_metrics(df.drop("paraphrase"))
    empty, none = df.clear(), pl.Series([], dtype=pl.Boolean)
    assert corpus_metrics_split(empty, none) == split_reference(empty, none)


def test_200k_paraphrases_equal_previous_code():
    n = 200_000
    paras = synthetic_paraphrases(n, seed=1)
    df = pl.DataFrame({"source_id": [f"s{i // 4}" for i in range(n)], "source": paras[::-1], "paraphrase": paras,
                       "jaccard": np.linspace(0, 1, n)})
    kept = pl.Series(np.random.default_rng(2).random(n) < 0.7)
    got = corpus_metrics_split(df, kept)
    toks = rouge_tokens(paras)  # the reference for every row only: the selections are pinned above
    assert (got["all"]["h2"], got["all"]["h3"], got["all"]["msttr"]) == (
        ref_ngram_entropy(toks, 2), ref_ngram_entropy(toks, 3), ref_msttr(toks))
    assert (got["kept"]["pairs"], got["dropped"]["pairs"]) == (kept.sum(), n - kept.sum())


# ------------------------------------------------------------------------------------------------ measuring
def _measure_one(which: str, n: int, path: Path) -> None:
    """In a fresh process: the filter step's metrics pass on n synthetic pairs; seconds and peak RSS increase."""
    from pipelines.steps import filter as filter_step

    d = pl.read_parquet(path)
    pairs = d.select("pair_id", "source_id", "source", "paraphrase")
    scores = d.select("pair_id", "source_id", "cosine", "jaccard").sample(fraction=1.0, shuffle=True, seed=1)
    decisions = d.select("pair_id", "kept").sample(fraction=1.0, shuffle=True, seed=2)  # as stored: any order
    if which == "new":
        corpus_metrics(d.head(100))  # load the compiled kernels (numba cache) before measuring
        run = filter_step.metrics_by_selection
    else:
        run = ref_metrics_by_selection
    del d

    def status(field: str) -> int:
        return next(int(ln.split()[1]) for ln in Path("/proc/self/status").read_text().splitlines()
                    if ln.startswith(field + ":"))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = status("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    out = run(pairs, scores, decisions)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{which}: {wall:.2f} s wall, {cpu:.2f} s CPU, peak RSS +{(status('VmHWM') - base) / 1024:.0f} MiB")
    out.write_parquet(path.with_name(f"{which}.parquet"))


def _measure(n: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.parquet"
        paras = synthetic_paraphrases(n)
        rng = np.random.default_rng(1)
        pl.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "source_id": [f"s{i // 4}" for i in range(n)],
                      "source": paras[::-1], "paraphrase": paras, "cosine": rng.random(n), "jaccard": rng.random(n),
                      "kept": rng.random(n) < 0.7}).write_parquet(path)
        print(f"{n:,} pairs, {sum(len(p.split()) for p in paras):,} words")
        del paras
        for which in ("new", "old"):
            subprocess.run([sys.executable, __file__, "--one", which, str(n), str(path)], check=True, cwd=REPO)
        same = pl.read_parquet(Path(tmp) / "new.parquet").equals(pl.read_parquet(Path(tmp) / "old.parquet"))
        print("identical tables:", same)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        _measure_one(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    else:
        _measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
