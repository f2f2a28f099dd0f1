"""The scale benchmark's corpus generator (bench/synthetic.py): deterministic, shaped as the issue asks, with
planted exact and near duplicates that a dedup step has to find."""

from __future__ import annotations

from collections import defaultdict

import polars as pl
import pytest

from bench import synthetic


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    srcs, paras = [], []
    for s, p in synthetic.iter_chunks(n, seed, chunk_sources=300):
        srcs += s
        paras += p
    return srcs, paras


def test_same_seed_same_corpus_other_seed_other_corpus():
    a, b = corpus(3000, seed=5), corpus(3000, seed=5)
    assert a == b
    assert corpus(3000, seed=6) != a
    # the chunking is a memory bound only: another chunk size gives the same pairs
    flat = [pair for s, p in synthetic.iter_chunks(3000, 5, chunk_sources=7) for pair in zip(s, p, strict=True)]
    assert flat == list(zip(*a, strict=True))


@pytest.mark.parametrize("n", [2, 3, 7, 11, 2501])
def test_exact_pair_count_and_two_to_five_paraphrases_per_source(tmp_path, n):
    stats = synthetic.generate(tmp_path / "pairs.parquet", n, seed=1)
    df = pl.read_parquet(tmp_path / "pairs.parquet")
    assert stats["pairs"] == df.height == n
    assert df.columns == ["source", "paraphrase"]
    per_source = df.group_by("source").len().get_column("len")
    assert per_source.min() >= 2 and per_source.max() <= 5


def test_texts_look_like_sentences_of_8_to_30_words():
    srcs, paras = corpus(4000)
    texts = set(srcs) | set(paras)
    counts = [len(t.split()) for t in texts]
    assert min(counts) >= 8 and max(counts) <= 30
    assert 12 <= sum(counts) / len(counts) <= 22
    assert all(t[0].isupper() and t[-1] in ".!" for t in texts)
    per_source = pl.Series(srcs).value_counts().get_column("count")
    assert 3.2 <= per_source.mean() <= 3.9
    # unique texts grow with the corpus: most pairs bring a new text
    assert len(texts) > 1.05 * len(paras)
    # paraphrases are rewrites: most differ from their source, yet share most of its words
    changed = [(s, p) for s, p in zip(srcs, paras, strict=True) if s != p]
    assert len(changed) > 0.9 * len(paras)
    overlap = [len(set(s.lower().split()) & set(p.lower().split())) / len(set(s.lower().split()))
               for s, p in changed]
    assert sum(overlap) / len(overlap) > 0.6


def one_word_apart(texts_by_source: list[tuple[str, str]]) -> tuple[int, int]:
    """(across sources, within a source): pairs of distinct paraphrases with the same words but one, that one not
    a synonym swap (two rewrites of one source often differ by a synonym; the planted ones change the word)."""
    synonyms, inserts = synthetic.Vocabulary().synonyms, set(synthetic.INSERTS)
    buckets: dict[tuple, list[tuple[str, str, str]]] = defaultdict(list)
    for src, para in set(texts_by_source):
        words = para.split()
        for i, word in enumerate(words):
            buckets[(len(words), i, *words[:i], *words[i + 1:])].append((src, para, word.lower().strip(",.!")))
    across = within = 0
    for members in buckets.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                (sa, pa, wa), (sb, pb, wb) = members[a], members[b]
                if pa != pb and synonyms.get(wa) != wb and not {wa, wb} & inserts:
                    across += sa != sb
                    within += sa == sb
    return across, within


def duplicate_counts(n: int) -> dict[str, int]:
    srcs, paras = corpus(n)
    sources_of: dict[str, set[str]] = defaultdict(set)
    for s, p in zip(srcs, paras, strict=True):
        sources_of[p].add(s)
    across, within = one_word_apart(list(zip(srcs, paras, strict=True)))
    return {"exact_across": sum(1 for owners in sources_of.values() if len(owners) > 1),
            "copies": sum(s == p for s, p in zip(srcs, paras, strict=True)), "near_across": across,
            "near_within": within}


def test_planted_exact_and_near_duplicates(monkeypatch):
    n = 6000
    planted = duplicate_counts(n)
    for rate in ("P_COPY", "P_EXACT_ACROSS", "P_NEAR_ACROSS", "P_NEAR_WITHIN"):
        monkeypatch.setattr(synthetic, rate, 0.0)
    natural = duplicate_counts(n)
    # planted: 3% copies of the source, 2% exact copies and 2% one-word changes of another source's paraphrase,
    # 4% one-word changes of a sibling; rewrites alone make few (two rewrites can differ by one inserted word)
    assert natural["exact_across"] == natural["near_across"] == 0
    assert planted["exact_across"] >= 0.01 * n
    assert planted["near_across"] >= 0.01 * n
    assert planted["copies"] - natural["copies"] >= 0.015 * n
    assert planted["near_within"] - natural["near_within"] >= 0.015 * n


def test_unique_texts_and_counts():
    texts = synthetic.unique_texts(500, seed=2)
    assert len(texts) == len(set(texts)) == 500
    assert texts == synthetic.unique_texts(500, seed=2)
    assert synthetic.parse_count("100k") == 100_000 and synthetic.parse_count("1m") == 1_000_000
    assert synthetic.parse_count("2500") == 2500
    with pytest.raises(ValueError):
        synthetic.iter_chunks(1).__next__()
