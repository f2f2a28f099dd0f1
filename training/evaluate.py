"""Student evaluation: decode a split's sources with the adapter, score student and teacher with the curation scorers.

Teacher = the dataset's targets. For every source, the student's first output and every teacher target are
scored against the source (cosine, WPD, LD, TED-3/F, ROUGE-L, BLEU to the source), against the references
(BLEU, leave-one-out for both sides: see `evaluate_outputs`), iBLEU = a BLEU(out, refs) - (1 - a)
BLEU(out, source), and self-BLEU among the outputs of one source (the student's num_return_sequences
outputs; the teacher's targets). For the teacher, self-BLEU and BLEU against the references are the same
quantity (each target against the other targets of its source), so the two teacher cells always agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import polars as pl

from curation.metrics import lexical, syntax
from schemas.recipe import EvaluateConfig
from schemas.student import StudentFormat

METRICS = ("cosine", "wpd", "ld", "ted_3", "ted_f", "rouge_l", "bleu_src", "bleu_ref", "ibleu", "self_bleu",
           "copy_rate")
LABELS = {"cosine": "cosine (source)", "wpd": "WPD", "ld": "LD", "ted_3": "TED-3", "ted_f": "TED-F",
          "rouge_l": "ROUGE-L (source)", "bleu_src": "BLEU (source)", "bleu_ref": "BLEU (reference)",
          "ibleu": "iBLEU", "self_bleu": "self-BLEU (teacher: = its BLEU (reference))",
          "copy_rate": "copies of the source"}
# The teacher's outputs are the references, so its self-BLEU (target j against the other targets of its source)
# and its leave-one-out BLEU against the references (the same hypothesis, the same references) are one
# quantity by definition; the student's two differ (its outputs vs each other; its output vs the targets).
# The label says so rather than show one number twice as if it were two findings.


def load_student(loadable: str, adapter: str, fmt: StudentFormat):
    """Base model (pruned as the student was, when it was) with the adapter merged in (faster decoding), the
    adapter's tokenizer, in eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from training.prune import apply_pruning

    cls = AutoModelForSeq2SeqLM if fmt.arch == "seq2seq" else AutoModelForCausalLM
    base = cls.from_pretrained(loadable)
    if fmt.options.get("pruned"):
        apply_pruning(base, fmt.options["pruned"])
    model = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(adapter)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right" if fmt.arch == "seq2seq" else "left"  # a decoder-only LM continues on the right
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tok


def decode(model, tok, fmt: StudentFormat, sources: list[str], cfg: EvaluateConfig) -> list[list[str]]:
    """`num_return_sequences` outputs per source (beam search, or sampling when `do_sample`)."""
    import torch

    n = cfg.num_return_sequences
    beams = 1 if cfg.do_sample else max(cfg.num_beams, n)
    outputs: list[list[str]] = []
    torch.manual_seed(cfg.seed)
    for start in range(0, len(sources), cfg.batch_size):
        part = sources[start:start + cfg.batch_size]
        enc = tok([fmt.template.format(text=s) for s in part], return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, num_beams=beams, do_sample=cfg.do_sample,
                                 temperature=cfg.temperature if cfg.do_sample else None,
                                 top_p=cfg.top_p if cfg.do_sample else None, top_k=None, num_return_sequences=n,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if fmt.arch == "causal":
            gen = gen[:, enc["input_ids"].shape[1]:]
        texts = tok.batch_decode(gen, skip_special_tokens=True)
        for i in range(len(part)):
            outputs.append([first_sentence_line(t) for t in texts[i * n:(i + 1) * n]])
    return outputs


def first_sentence_line(text: str) -> str:
    """The output up to its first line break: a student trained on one-line targets stops there or at EOS."""
    return text.strip().split("\n", 1)[0].strip()


def _mean(values) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else None


def pair_scores(sources: list[str], outputs: list[str], group_outputs: list[str], group_ids: list[str],
                ref_rows: tuple[list[str], list[str], list[list[str]]], encode: Callable[[list[str]], np.ndarray],
                nlp, alpha: float) -> dict[str, float | None]:
    """Mean of every metric over (source, output) pairs; BLEU against references and iBLEU over `ref_rows`
    (source, hypothesis, references), self-BLEU over `group_outputs` grouped by `group_ids`."""
    if not outputs:
        return dict.fromkeys(METRICS)
    src_an, out_an = syntax.analyse(sources, nlp), syntax.analyse(outputs, nlp)
    s_vec, o_vec = encode(sources), encode(outputs)
    s_tok, o_tok = lexical.rouge_tokens(sources), lexical.rouge_tokens(outputs)
    wpd, ld = syntax.wpd_ld(src_an["lemmas"].to_list(), out_an["lemmas"].to_list())
    r_src, r_hyp, r_refs = ref_rows
    bleu_ref = lexical.sentence_bleu(r_hyp, r_refs) if r_hyp else np.array([])
    bleu_ref_src = lexical.sentence_bleu(r_hyp, [[s] for s in r_src]) if r_hyp else np.array([])
    copies = [float(s.strip().lower() == o.strip().lower()) for s, o in zip(sources, outputs, strict=True)]
    return {
        "cosine": _mean((s_vec * o_vec).sum(axis=1)),
        "wpd": _mean(wpd), "ld": _mean(ld),
        "ted_3": _mean(syntax.tree_edit_distance(src_an["tree"].to_list(), out_an["tree"].to_list(), 3)),
        "ted_f": _mean(syntax.tree_edit_distance(src_an["tree"].to_list(), out_an["tree"].to_list(), None)),
        "rouge_l": _mean(lexical.rouge_l_f1(s_tok, o_tok)),
        "bleu_src": _mean(lexical.sentence_bleu(outputs, [[s] for s in sources])), "bleu_ref": _mean(bleu_ref),
        "ibleu": _mean(alpha * bleu_ref - (1 - alpha) * bleu_ref_src),
        "self_bleu": _mean(lexical.self_bleu(group_outputs, group_ids)) if group_outputs else None,
        "copy_rate": _mean(copies),
    }


def evaluate_outputs(split: pl.DataFrame, student: list[list[str]], encode: Callable[[list[str]], np.ndarray],
                     nlp, alpha: float) -> dict[str, dict[str, float | None]]:
    """{metric: {teacher, student}} for `split` (source_id, source, paraphrase) and the student's outputs per
    source, in the order of `split`'s unique sources sorted by source_id.

    Against the references both sides are scored leave-one-out on the same rows: for a source with k targets,
    teacher target j and the student's output are each compared with the k - 1 targets other than j, so
    neither side gets more references than the other (a source with one target has no reference row).
    """
    by_source = split.group_by("source_id", maintain_order=False).agg("source", "paraphrase").sort("source_id")
    sids = by_source["source_id"].to_list()
    srcs = [s[0] for s in by_source["source"].to_list()]
    targets = by_source["paraphrase"].to_list()
    s_out = [outs[0] for outs in student]
    t_src, t_out, t_gid = [], [], []
    teacher_refs: tuple[list, list, list] = ([], [], [])
    student_refs: tuple[list, list, list] = ([], [], [])
    for sid, src, tgts, out in zip(sids, srcs, targets, s_out, strict=True):
        for j, t in enumerate(tgts):
            t_src.append(src)
            t_out.append(t)
            t_gid.append(sid)
            others = tgts[:j] + tgts[j + 1:]
            if others:
                for rows, hyp in ((teacher_refs, t), (student_refs, out)):
                    rows[0].append(src)
                    rows[1].append(hyp)
                    rows[2].append(others)
    teacher = pair_scores(t_src, t_out, t_out, t_gid, teacher_refs, encode, nlp, alpha)
    s_groups = [o for outs in student for o in outs]
    s_gid = [sid for sid, outs in zip(sids, student, strict=True) for _ in outs]
    many = len(s_groups) > len(s_out)
    stud = pair_scores(srcs, s_out, s_groups if many else [], s_gid, student_refs, encode, nlp, alpha)
    return {m: {"teacher": teacher[m], "student": stud[m]} for m in METRICS}


def table_rows(metrics: dict[str, dict[str, float | None]]) -> list[tuple[str, str, str, str]]:
    """(metric, teacher, student, student - teacher) as display strings."""
    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    rows = []
    for m in METRICS:
        t, s = metrics[m]["teacher"], metrics[m]["student"]
        diff = None if t is None or s is None else s - t
        rows.append((LABELS[m], fmt(t), fmt(s), fmt(diff)))
    return rows
