"""Word-level knowledge distillation: the student matches the teacher's next-token distribution (KD4Gen's word-level
KD; TRL's generalized JSD at beta 0 is the same forward KL), and Joint-Teaching's on-policy targets.

The teacher runs with teacher forcing on the student's token ids, so both must share one tokenizer; their logits are
compared over the tokenizer's vocabulary only (an embedding matrix wider than the vocabulary pads unused rows).
"""

from __future__ import annotations

import random

from schemas.errors import RecipeError

IGNORE = -100
KD_CHUNK = 256  # target positions whose full-vocabulary softmax is taken at once (memory for large vocabularies)


def word_kd_loss(student_logits, teacher_logits, labels, *, causal: bool, vocab: int, temperature: float = 1.0,
                 chunk: int = KD_CHUNK):
    """KL(teacher || student) at `temperature` (x T^2) per target position, averaged over each example's target
    positions, then over the examples that have any. Targets are the positions where `labels` != -100; for a
    causal LM the logits at t predict token t+1 (shifted here). Only the first `vocab` logits count."""
    import torch
    import torch.nn.functional as F

    s, t, lab = student_logits, teacher_logits, labels
    if causal:
        s, t, lab = s[:, :-1], t[:, :-1], lab[:, 1:]
    mask = lab != IGNORE
    rows, cols = mask.nonzero(as_tuple=True)
    per_pos = []
    for a in range(0, rows.numel(), chunk):
        r, c = rows[a:a + chunk], cols[a:a + chunk]
        sl = F.log_softmax(s[r, c, :vocab].float() / temperature, dim=-1)
        tl = F.log_softmax(t[r, c, :vocab].float() / temperature, dim=-1)
        per_pos.append((tl.exp() * (tl - sl)).sum(-1))
    if not per_pos:
        return s.sum() * 0.0  # no target position: a zero that keeps the graph
    kl = torch.cat(per_pos) * temperature ** 2
    sums = torch.zeros(mask.shape[0], dtype=kl.dtype, device=kl.device).index_add_(0, rows, kl)
    counts = mask.sum(1)
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def check_tokenizers(student_tok, teacher_tok, teacher_ref: str) -> int:
    """The shared vocabulary size; a teacher whose tokenizer differs from the student's is refused in one line."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise RecipeError(f"train.teacher.model {teacher_ref}: its tokenizer differs from the student's "
                          f"({len(teacher_tok)} vs {len(student_tok)} tokens); word-level KD needs one shared "
                          "tokenizer: use train.teacher.kd: seq (sequence-level KD on the exported pairs)")
    return len(student_tok)


def on_policy_step(seed: int, step: int, share: float) -> bool:
    """Whether step `step` learns on the student's own sample (Joint-Teaching): a draw fixed by (seed, step), so
    a resumed run takes the same steps on-policy; `share` 0.5 with KD4Gen's w."""
    return share > 0 and random.Random(f"{seed}:jt:{step}").random() < share


def on_policy_batch(model, tok, batch: dict, *, causal: bool, top_p: float, temperature: float,
                    max_new_tokens: int, seed: int) -> dict:
    """The batch with its targets replaced by one sample each from the student (no grad, seeded): for a causal LM
    the prompt (the tokens not under a label) stays, the sample is sliced off after it and becomes the labels; for
    seq2seq the sample becomes the decoder's labels."""
    import torch

    was_training = model.training
    model.eval()
    gen = {"do_sample": True, "top_p": top_p, "temperature": temperature, "max_new_tokens": max_new_tokens,
           "pad_token_id": tok.pad_token_id}
    torch.manual_seed(seed)
    with torch.no_grad():
        if causal:
            out = _causal_samples(model, tok, batch, gen)
        else:
            ids = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **gen)
            labels = ids[:, 1:].clone()  # the decoder start token is not a target
            labels[labels == tok.pad_token_id] = IGNORE
            out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    if was_training:
        model.train()
    return out


def _causal_samples(model, tok, batch: dict, gen: dict) -> dict:
    """Left-padded prompts sampled, then laid out as the trainer's rows: prompt, sample, eos; right padding."""
    import torch

    prompts = [ids[(lab == IGNORE) & (m == 1)].tolist()
               for ids, lab, m in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True)]
    width = max(len(p) for p in prompts)
    left = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(left)
    for i, p in enumerate(prompts):
        left[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    device = batch["input_ids"].device
    out = model.generate(input_ids=left.to(device), attention_mask=mask.to(device), **gen)[:, width:].cpu()
    rows = []
    for p, sample in zip(prompts, out.tolist(), strict=True):
        cut = sample.index(tok.eos_token_id) + 1 if tok.eos_token_id in sample else len(sample)
        sample = sample[:cut] or [tok.eos_token_id]
        rows.append((p + sample, [IGNORE] * len(p) + sample))
    full = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), full), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), full), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(rows), full), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)], labels[i, :len(lab)], attn[i, :len(ids)] = (torch.tensor(ids), torch.tensor(lab), 1)
    return {"input_ids": input_ids.to(device), "attention_mask": attn.to(device), "labels": labels.to(device)}
