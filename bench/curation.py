"""Curation throughput on 20k pairs made from the demo sources, each figure beside a reference from the same run.

    make bench            # or: .venv/bin/python bench/curation.py [--pairs 20000] [--ref-pairs 2000]

Per scorer: our vectorised implementation vs a per-pair loop of the reference library (rouge-score, sacrebleu,
paraphrase-metrics on pre-parsed spaCy docs, apted), on the same pairs (slow references on the first
--ref-pairs pairs). Whole curation: `pipelines.runner.curate` (embed, dedup, parse, score, filter, report) in a
fresh workdir vs raw `SentenceTransformer.encode` of the same unique texts with the same settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from metric_refs import make_pairs, ref_bleu, ref_rouge_l, ref_self_bleu, ref_ted, ref_wpd_ld  # noqa: E402

from curation.metrics import lexical, syntax  # noqa: E402

LEXICAL_TARGET = 50.0
CURATION_TARGET = 0.8


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(x) and math.isnan(y))
               for x, y in zip(a, b, strict=True))


def scorer_rows(ids: list[str], src: list[str], tgt: list[str], ref_n: int) -> list[dict]:
    """pairs/s of each of our scorers vs its reference loop, values checked equal on the reference subset."""
    n, rows = len(src), []
    nlp = syntax.load_spacy()
    uniq = list(dict.fromkeys(src + tgt))
    t_parse, parsed = timed(lambda: list(nlp.pipe(uniq, batch_size=256)))
    docs = dict(zip(uniq, parsed, strict=True))
    an = syntax.analyse(list(docs), nlp)  # our analyses of the same texts (lemmas, trees), outside the timings
    tree = dict(zip(docs, an["tree"].to_list(), strict=True))
    s_tree, t_tree = [tree[s] for s in src], [tree[t] for t in tgt]
    sub = slice(0, min(ref_n, n))

    def row(name, ours, ref, ref_label, k, target=None):
        t_ours, v_ours = timed(ours)
        t_ref, v_ref = timed(ref)
        ours_v = [np.asarray(v)[sub] for v in (v_ours if isinstance(v_ours, tuple) else (v_ours,))]
        ref_v = v_ref if isinstance(v_ref, tuple) else (v_ref,)
        ok = all(same(a, b) for a, b in zip(ours_v, ref_v, strict=True))
        rows.append({"step": name, "ours": n / t_ours, "reference": ref_label, "ref": k / t_ref,
                     "target": target, "equal": ok})

    def rouge():
        tok = lexical.rouge_tokens(src), lexical.rouge_tokens(tgt)
        return lexical.rouge_l_f1(*tok)

    row("ROUGE-L", rouge, lambda: ref_rouge_l(src[sub], tgt[sub]), "rouge-score loop", len(src[sub]), LEXICAL_TARGET)
    row("BLEU", lambda: lexical.sentence_bleu(tgt, [[s] for s in src]),
        lambda: ref_bleu(src[sub], tgt[sub]), "sacrebleu.sentence_bleu loop", len(src[sub]), LEXICAL_TARGET)
    at = {t: i for i, t in enumerate(docs)}  # the analyses table's rows, as the score step indexes them
    s_row, t_row = np.array([at[s] for s in src]), np.array([at[t] for t in tgt])
    row("WPD + LD", lambda: syntax.wpd_ld_by_row(an["lemmas"], s_row, t_row),
        lambda: ref_wpd_ld([docs[s] for s in src[sub]], [docs[t] for t in tgt[sub]]),
        "paraphrase-metrics loop (parsed docs)", len(src[sub]), LEXICAL_TARGET)

    def jaccard_ref():
        out = []
        for s, t in zip(lexical.rouge_tokens(src[sub]), lexical.rouge_tokens(tgt[sub]), strict=True):
            a, b = set(s), set(t)
            out.append(len(a & b) / len(a | b) if a | b else 1.0)
        return out

    row("Jaccard", lambda: lexical.token_jaccard(lexical.rouge_tokens(src), lexical.rouge_tokens(tgt)), jaccard_ref,
        "python set loop", len(src[sub]), None)
    groups = sorted(set(ids))[: max(1, len(set(ids)) * min(ref_n, n) // n)]
    g_idx = [i for i, g in enumerate(ids) if g in set(groups)]
    row("self-BLEU", lambda: lexical.self_bleu(tgt, ids),
        lambda: ref_self_bleu([tgt[i] for i in g_idx], [ids[i] for i in g_idx]), "sacrebleu loop (some groups)",
        len(g_idx), None)
    rows[-1]["equal"] = same(lexical.self_bleu([tgt[i] for i in g_idx], [ids[i] for i in g_idx]),
                             ref_self_bleu([tgt[i] for i in g_idx], [ids[i] for i in g_idx]))
    row("TED-3", lambda: syntax.tree_edit_distance(s_tree, t_tree, 3),
        lambda: ref_ted(s_tree[sub], t_tree[sub], 3), "apted loop", len(src[sub]), None)
    row("TED-F", lambda: syntax.tree_edit_distance(s_tree, t_tree, None),
        lambda: ref_ted(s_tree[sub], t_tree[sub], None), "apted loop", len(src[sub]), None)
    rows.append({"step": "spaCy parse (once per unique text)", "ours": n / t_parse, "reference": "-",
                 "ref": None, "target": None, "equal": None, "note": f"{len(docs)} texts, {len(docs) / t_parse:.0f}"
                 " texts/s"})
    return rows


def curation_rows(src: list[str], tgt: list[str], batch_size: int) -> list[dict]:
    """The whole curation in a fresh workdir vs raw encoding of the same unique texts."""
    from curation.embedding import encode, load_embedder
    from pipelines import runner
    from pipelines.steps.pairs import unique_pairs, unique_texts
    from pipelines.store import Workdir
    from schemas.recipe import Recipe

    folder = Path(tempfile.mkdtemp(prefix="paradistill-bench-"))
    corpus = folder / "pairs.jsonl"
    corpus.write_text("".join(json.dumps({"source": s, "paraphrase": t}) + "\n" for s, t in zip(src, tgt,
                                                                                                  strict=True)))
    wd = folder / "wd"
    runner.ingest_pairs(str(corpus), wd, progress=False)
    pairs = unique_pairs(Workdir(wd))
    texts = unique_texts(pairs).get_column("text").to_list()
    recipe = Recipe.model_validate({"name": "bench", "embed": {"batch_size": batch_size}, "filter": {
        "rules": [{"name": "semantic-floor", "column": "cosine", "min": 0.8},
                  {"name": "not-near-copy", "column": "rouge_l", "max": 0.9},
                  {"name": "no-new-numbers", "column": "numbers_ok", "equals": True}],
        "top_k": {"k": 2, "by": "wpd + ld"}}})
    emb = load_embedder(None, recipe.embed.dtype, recipe.embed.backend, recipe.embed.device)
    encode(emb, texts[:256], batch_size)  # warm-up, outside both timings
    t_enc, _ = timed(lambda: encode(emb, texts, batch_size))
    t_cur, res = timed(lambda: runner.curate(wd, recipe, progress=False))
    n = pairs.height
    stages = {k: res[k]["seconds"] for k in ("embed", "dedup", "score", "filter") if k in res}
    stages["report"] = round(t_cur - sum(stages.values()), 2)
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in stages.items())
    by_input = res["score"].get("seconds_by_input", {})
    return [{"step": "whole curation", "ours": n / t_cur, "reference": "raw SentenceTransformer.encode",
             "ref": n / t_enc, "target": CURATION_TARGET, "equal": None,
             "note": f"{n} pairs, {len(texts)} unique texts ({len(texts) / t_enc:.0f} texts/s encode, "
                     f"{emb.settings['dtype']}); {parts}; score inputs {by_input}; dedup index "
                     f"{res['dedup'].get('index')}"}]


def print_table(rows: list[dict]) -> None:
    print(f"\n{'step':<36} {'ours pairs/s':>13} {'ref pairs/s':>12} {'ratio':>8} {'target':>7}  met  equal  reference")
    for r in rows:
        ratio = r["ours"] / r["ref"] if r["ref"] else None
        met = "-" if r["target"] is None or ratio is None else ("yes" if ratio >= r["target"] else "NO")
        eq = "-" if r["equal"] is None else ("yes" if r["equal"] else "NO")
        ref = f"{r['ref']:>12,.0f}" if r["ref"] else f"{'-':>12}"
        rat = f"{ratio:>7.1f}x" if ratio else f"{'-':>8}"
        tgt = f"{r['target']:>6}x" if r["target"] else f"{'-':>7}"
        print(f"{r['step']:<36} {r['ours']:>13,.0f} {ref} {rat} {tgt}  {met:<4} {eq:<5}  {r['reference']}")
        if r.get("note"):
            print(f"{'':<36} {r['note']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--ref-pairs", type=int, default=2000, help="pairs the slow reference loops are timed on")
    ap.add_argument("--batch-size", type=int, default=256, help="encoder batch size (both sides)")
    args = ap.parse_args()
    ids, src, tgt = make_pairs(args.pairs)
    print(f"{len(src)} pairs from {len(set(ids))} demo sources; references timed on {min(args.ref_pairs, len(src))}")
    rows = curation_rows(src, tgt, args.batch_size)
    rows = scorer_rows(ids, src, tgt, args.ref_pairs) + rows
    print_table(rows)


if __name__ == "__main__":
    main()
