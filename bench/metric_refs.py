"""Reference per-pair loops of the metric libraries, and a deterministic pair set, for benchmarks and tests.

    .venv/bin/python bench/metric_refs.py [--pairs 20000]

prints pairs/s of each `curation.metrics` function next to the per-pair loop of its reference library on the
same pairs (the spaCy parse is done once, outside both timings, for WPD/LD/TED).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

# run as a script, bench/ is first on sys.path and bench/curation.py would shadow the curation package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEMO = Path(__file__).resolve().parents[1] / "pipelines/data/demo_sources.txt"

_SYN = {
    "quickly": "fast", "big": "large", "small": "little", "begin": "start", "opens": "starts", "closed": "shut",
    "delayed": "late", "night": "evening", "said": "stated", "buy": "purchase", "help": "assist", "the": "a",
    "was": "got", "is": "seems", "before": "prior to", "after": "following", "again": "once more",
    "covered": "blanketed", "slowly": "gradually", "fresh": "new", "today": "this day", "left": "departed",
}
_FILLERS = ["really", "actually", "quite", "still", "just", "indeed", "very"]


def demo_sources() -> list[str]:
    return [ln.strip() for ln in DEMO.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _variant(rng: random.Random, s: str, other: str) -> str:
    words = s.split()
    kind = rng.randrange(16)
    if kind == 0:
        return s
    if kind == 1 and len(words) > 2:
        del words[rng.randrange(len(words))]
    elif kind == 2 and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == 3:
        words.insert(rng.randrange(len(words) + 1), rng.choice(_FILLERS))
    elif kind == 4:
        words = [_SYN.get(w.lower(), w) for w in words]
    elif kind == 5 and len(words) > 3:
        k = rng.randrange(1, len(words) - 1)
        words = words[k:] + words[:k]
        words[0] = words[0].capitalize()
    elif kind == 6:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["3", "12", "1,000", "2.5", "about 40"]))
    elif kind == 7:
        return s.lower().rstrip(".!?")
    elif kind == 8:
        return other
    elif kind == 9:
        return " ".join(words[: rng.randrange(1, 3)])
    elif kind == 10:
        return s + " " + other
    elif kind == 11:
        return re.sub(r"[.,!?]", "", s) + " !"
    elif kind == 12:
        return s.upper()
    elif kind == 13:
        return " , ".join(words[::-1]) + "."
    elif kind == 14:
        return rng.choice(["", "?", "Yes.", "ok", "3", "No, no, no."])
    else:
        words = [rng.choice(_FILLERS) if rng.random() < 0.3 else w for w in words]
        words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(source_ids, sources, paraphrases): n deterministic paraphrase-like pairs from the demo sources.

    Sources include two-sentence texts; variants: identical, word drop/swap/insert, synonym substitution, clause
    rotation, numbers introduced, case/punctuation changes, unrelated texts, 1-2 token and empty outputs.
    """
    rng = random.Random(seed)
    base = demo_sources()
    srcs = base + [f"{base[i]} {base[(i * 7 + 3) % len(base)]}" for i in range(0, len(base), 3)]
    ids, src, tgt = [], [], []
    for k in range(n):
        i = k % len(srcs) if k < len(srcs) else rng.randrange(len(srcs))
        s = srcs[i]
        ids.append(f"s{i}")
        src.append(s)
        tgt.append(_variant(rng, s, rng.choice(base)))
    return ids, src, tgt


# ------------------------------------------------------------------------------------------- reference loops
def ref_rouge_l(src: list[str], tgt: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return [scorer.score(s, t)["rougeL"].fmeasure for s, t in zip(src, tgt, strict=True)]


def ref_bleu(src: list[str], tgt: list[str]) -> list[float]:
    """sacrebleu sentence BLEU with hyp = paraphrase, refs = [source]."""
    import sacrebleu

    return [sacrebleu.sentence_bleu(t, [s]).score for s, t in zip(src, tgt, strict=True)]


def ref_self_bleu(paraphrases: list[str], group_ids: list[str]) -> list[float]:
    import sacrebleu

    groups: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    out = []
    for i, g in enumerate(group_ids):
        refs = [paraphrases[j] for j in groups[g] if j != i]
        out.append(sacrebleu.sentence_bleu(paraphrases[i], refs).score if refs else float("nan"))
    return out


def ref_wpd_ld(src_docs, tgt_docs) -> tuple[list[float], list[float]]:
    import contextlib
    import io

    from paraphrase_metrics import metrics as pm

    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints a warning per degenerate pair
        wpd = [pm.wpd(s, t) for s, t in zip(src_docs, tgt_docs, strict=True)]
        ld = [pm.ld(s, t) for s, t in zip(src_docs, tgt_docs, strict=True)]
    return wpd, ld


def ref_ted(src_trees: list[str], tgt_trees: list[str], max_depth: int | None) -> list[float]:
    from apted import APTED
    from apted.helpers import Tree

    def cut(t: Tree, depth: int) -> Tree:
        if max_depth is not None and depth >= max_depth:
            return Tree(t.name)
        return Tree(t.name, *[cut(c, depth + 1) for c in t.children])

    return [
        float(APTED(cut(Tree.from_text(a), 1), cut(Tree.from_text(b), 1)).compute_edit_distance())
        for a, b in zip(src_trees, tgt_trees, strict=True)
    ]


# -------------------------------------------------------------------------------------------------- benchmark
def _rate(fn, n: int, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return n / best, out


def main() -> None:
    import math

    import numpy as np

    from curation.metrics import lexical, syntax

    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--ted-ref-pairs", type=int, default=1000, help="APTED is slow: time it on this many pairs")
    args = ap.parse_args()
    ids, src, tgt = make_pairs(args.pairs)
    n = len(src)
    rows = []

    def check(name, a, b):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        ok = all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(x) and math.isnan(y))
                 for x, y in zip(a, b, strict=True))
        return "equal" if ok else "DIFFERENT"

    lexical.rouge_l_f1([["a"]], [["a"]])  # compile / load the numba cache outside the timings
    lexical.sentence_bleu(["a"], [["a"]])
    lexical.token_jaccard([["a"]], [["a"]])
    r_ref, ref = _rate(lambda: ref_rouge_l(src, tgt), n)
    r_ours, ours = _rate(lambda: lexical.rouge_l_f1(lexical.rouge_tokens(src), lexical.rouge_tokens(tgt)), n, 3)
    rows.append(("ROUGE-L (tokenise + score)", r_ours, r_ref, check("rouge", ours, ref)))
    b_ref, ref = _rate(lambda: ref_bleu(src, tgt), n)
    b_ours, ours = _rate(lambda: lexical.sentence_bleu(tgt, [[s] for s in src]), n, 3)
    rows.append(("BLEU", b_ours, b_ref, check("bleu", ours, ref)))
    s_ref, ref = _rate(lambda: ref_self_bleu(tgt, ids), n)
    s_ours, ours = _rate(lambda: lexical.self_bleu(tgt, ids), n, 3)
    rows.append(("self-BLEU", s_ours, s_ref, check("self", ours, ref)))
    j_ours, _ = _rate(lambda: lexical.token_jaccard(lexical.rouge_tokens(src), lexical.rouge_tokens(tgt)), n, 3)
    rows.append(("Jaccard (tokenise + score)", j_ours, float("nan"), ""))

    nlp = syntax.load_spacy()
    texts = list(dict.fromkeys(src + tgt))
    t0 = time.perf_counter()
    docs = dict(zip(texts, nlp.pipe(texts, batch_size=256), strict=True))
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = syntax.analyse(texts, nlp)
    analyse_s = time.perf_counter() - t0
    by_text = dict(zip(texts, table.iter_rows(named=True), strict=True))
    sl = [by_text[s]["lemmas"] for s in src]
    tl = [by_text[t]["lemmas"] for t in tgt]
    st = [by_text[s]["tree"] for s in src]
    tt = [by_text[t]["tree"] for t in tgt]
    syntax.wpd_ld([["a", "b"]], [["a", "b"]])
    syntax.tree_edit_distance(["{a}"], ["{b}"], None)
    w_ref, (wref, lref) = _rate(lambda: ref_wpd_ld([docs[s] for s in src], [docs[t] for t in tgt]), n)
    w_ours, (w, ld_) = _rate(lambda: syntax.wpd_ld(sl, tl), n, 3)
    rows.append(("WPD + LD (ref: both per pair)", w_ours, w_ref,
                 check("wpd", w, wref) + "/" + check("ld", ld_, lref)))
    m = min(n, args.ted_ref_pairs)
    for depth, name in ((3, "TED-3"), (None, "TED-F")):
        t_ref, ref = _rate(lambda d=depth: ref_ted(st[:m], tt[:m], d), m)
        t_ours, _ = _rate(lambda d=depth: syntax.tree_edit_distance(st, tt, d), n, 3)
        ours_m = syntax.tree_edit_distance(st[:m], tt[:m], depth)
        rows.append((f"{name} (ref on {m} pairs)", t_ours, t_ref, check(name, ours_m, ref)))

    print(f"{n} pairs; {len(texts)} unique texts; spaCy parse {len(texts) / parse_s:,.0f} texts/s; "
          f"analyse() {len(texts) / analyse_s:,.0f} texts/s")
    print(f"{'metric':34s} {'ours pairs/s':>14s} {'ref pairs/s':>12s} {'speedup':>8s}  values")
    for name, ours_r, ref_r, ok in rows:
        sp = ours_r / ref_r if ref_r == ref_r else float("nan")
        print(f"{name:34s} {ours_r:14,.0f} {ref_r:12,.0f} {sp:7.1f}x  {ok}")


if __name__ == "__main__":
    main()
