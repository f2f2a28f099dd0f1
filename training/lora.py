"""The thin LoRA trainer: peft on a causal LM or a seq2seq model, one short loop, checkpoints that resume exactly.

Step s trains on a batch that depends only on (seed, s): the epoch's examples come from `data.epoch_examples`,
so a resumed run sees the batches an uninterrupted one would. A checkpoint (adapter weights, optimizer,
scheduler, RNG, loss history) is written to a temp folder and renamed; the finished adapter is marked by
`student.json`, written last.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import polars as pl

from schemas.errors import RecipeError, StateError, first_line
from schemas.recipe import DEFAULT_CAUSAL_TEMPLATE, DEFAULT_SEQ2SEQ_TEMPLATE, TrainConfig
from schemas.student import STUDENT_FILE, StudentFormat, read_student
from training.data import DatasetRef, epoch_examples, examples_per_epoch
from training.prune import prune_student

RUN_FILE = "run.json"
IGNORE = -100


def detect_arch(loadable: str, arch: str) -> str:
    """`auto`: seq2seq when the model's config is encoder-decoder (T5, BART), else causal."""
    if arch != "auto":
        return arch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(loadable)
    except (OSError, ValueError) as e:
        raise RecipeError(f"train.model: cannot load {loadable!r} ({first_line(e)})") from None
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def default_template(arch: str) -> str:
    return DEFAULT_SEQ2SEQ_TEMPLATE if arch == "seq2seq" else DEFAULT_CAUSAL_TEMPLATE


def load_base(loadable: str, arch: str):
    """Base model (float32 weights; autocast does the bf16 math) and its tokenizer, padded for batches."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    cls = AutoModelForSeq2SeqLM if arch == "seq2seq" else AutoModelForCausalLM
    try:
        tok = AutoTokenizer.from_pretrained(loadable)
        model = cls.from_pretrained(loadable)
    except (OSError, ValueError) as e:
        raise RecipeError(f"model {loadable!r}: cannot load it as a {arch} LM ({first_line(e)})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def encode_examples(tok, arch: str, template: str, sources: list[str], targets: list[str], max_length: int) -> dict:
    """Padded tensors with labels; a causal LM learns only the target tokens (the prompt is masked with -100)."""
    import torch

    prompts = [template.format(text=s) for s in sources]
    if arch == "seq2seq":
        enc = tok(prompts, max_length=max_length, truncation=True, padding=True, return_tensors="pt")
        lab = tok(text_target=targets, max_length=max_length, truncation=True, padding=True, return_tensors="pt")
        labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, IGNORE)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    rows = []
    for p, t in zip(prompts, targets, strict=True):
        p_ids = tok(p, add_special_tokens=True)["input_ids"]
        t_ids = tok(" " + t.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        p_ids = p_ids[-max(1, max_length - len(t_ids)):] if len(p_ids) + len(t_ids) > max_length else p_ids
        ids = (p_ids + t_ids)[:max_length]
        rows.append((ids, ([IGNORE] * len(p_ids) + t_ids)[:max_length]))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _autocast(dtype: str, device: str):
    import contextlib

    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def _target_tokens(labels, arch: str) -> int:
    return int((labels[:, 1:] != IGNORE).sum() if arch == "causal" else (labels != IGNORE).sum())


def mean_loss(model, tok, arch: str, template: str, frame: pl.DataFrame, cfg: TrainConfig, device: str) -> float:
    """Token-weighted mean cross-entropy of the targets in `frame` (the validation loss)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, frame.height, cfg.batch_size):
            part = frame.slice(start, cfg.batch_size)
            batch = encode_examples(tok, arch, template, part["source"].to_list(), part["paraphrase"].to_list(),
                                    cfg.max_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            with _autocast(cfg.dtype, device):
                loss = model(**batch).loss
            n = _target_tokens(batch["labels"], arch)
            total += float(loss) * n
            count += n
    model.train()
    return total / count if count else float("nan")


def run_key(cfg: TrainConfig, base_model: str, data: DatasetRef, n_train: int, n_val: int) -> str:
    """Everything that changes the trained weights: a run with another key never resumes this one's checkpoints."""
    opts = cfg.model_dump(mode="json", exclude={"eval_every", "save_every"})
    ident = {k: v for k, v in data.identity().items() if k != "commit"}  # lineage only: a Hub blip must not matter
    blob = json.dumps([opts, base_model, ident, n_train, n_val], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _save_checkpoint(folder: Path, model, optimizer, scheduler, step: int, history: list[dict]) -> None:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()},
                  str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "history": history, "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "state.pt")

    _atomic_dir(folder / f"step-{step:07d}", write)
    for old in sorted(folder.glob("step-*"))[:-2]:  # keep the last two
        shutil.rmtree(old, ignore_errors=True)


def _resume(folder: Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    done = sorted(p for p in folder.glob("step-*") if (p / "state.pt").is_file())
    if not done:
        return 0, []
    last = done[-1]
    set_peft_model_state_dict(model, load_file(str(last / "adapter.safetensors")))
    state = torch.load(last / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["py_rng"])
    return state["step"], state["history"]


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _pruned_line(pruned: dict | None) -> str:
    if not pruned:
        return ""
    stacks = "; ".join(f"{name}: {len(v['kept'])} of {v['from']} layers (kept {v['kept']})"
                       for name, v in pruned["stacks"].items())
    return f", pruned to a smaller student: {stacks}"


def _card(fmt: StudentFormat) -> str:
    opts = "\n".join(f"| {k} | {v} |" for k, v in fmt.options.items())
    losses = fmt.losses
    meta = {"library_name": "peft", "tags": ["lora", "paraphrase", "knowledge-distillation", "paradistill"]}
    if not Path(fmt.dataset).exists():
        meta["datasets"] = [fmt.dataset]
    if fmt.base_model_ref and not Path(fmt.base_model_ref).exists():
        meta["base_model"] = fmt.base_model_ref
    header = "".join(f"{k}: {json.dumps(v)}\n" for k, v in meta.items())
    return f"""---
{header}---

# Paraphrase student (LoRA)

A LoRA adapter trained by [paradistill](https://pypi.org/project/paradistill/) on teacher paraphrases:
{fmt.options.get("kd") or kd_description(TrainConfig(), None)}.

- base model: `{fmt.base_model}` ({fmt.arch}){_pruned_line(fmt.options.get("pruned"))}
- dataset: `{fmt.dataset}` version `{fmt.dataset_version or '-'}` (revision `{fmt.dataset_revision or '-'}`)
- steps: {fmt.steps}
- validation loss: {_num(losses.get('val_step0'))} at step 0 -> {_num(losses.get('val_final'))} at the end;
  last training loss {_num(losses.get('train_final'))}

## Prompt
The student was trained to continue this prompt (`{{text}}` = the source sentence):

```
{fmt.template}
```

## Options
| option | value |
|---|---|
{opts}

## Use
```
paradistill evaluate --adapter THIS_FOLDER --dataset {fmt.dataset}
```
or as a teacher of the next round: `teacher: {{kind: local, adapter: THIS_FOLDER}}`.
"""


def kd_description(cfg: TrainConfig, teacher_model: str | None) -> str:
    """One line for the card: which distillation trained this student."""
    t = cfg.teacher
    if t is None or t.kd == "seq":
        return "sequence-level knowledge distillation (the teacher's exported paraphrases as targets)"
    jt = f", Joint-Teaching on {t.joint_teaching:.0%} of steps" if t.joint_teaching else ""
    return f"word-level knowledge distillation from `{teacher_model}` (T = {t.kd_temperature:g}{jt})"


def load_teacher(loadable: str, ref: str, arch: str, adapter: Path | None, dtype: str, device: str, student_tok):
    """The word-level KD teacher, frozen in eval mode (float32 on CPU, bfloat16 on CUDA unless `dtype` says), with
    its adapter if any, and the vocabulary it shares with the student (a different tokenizer is refused)."""
    import torch

    from training.kd import check_tokenizers

    if adapter is None:
        model, tok = load_base(loadable, arch)
    else:  # a trained student: its base pruned as recorded, its adapter merged
        from training.evaluate import load_student

        model, tok = load_student(loadable, str(adapter), read_student(adapter))
    vocab = check_tokenizers(student_tok, tok, ref)
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    model.requires_grad_(False)
    return model, vocab


def _kd_loss(model, teacher, vocab: int, batch: dict, arch: str, cfg: TrainConfig, device: str, step: int, tok):
    """One step's word-level KD loss: KL(teacher || student) on the batch's targets, or on the student's own
    sample on a Joint-Teaching step."""
    import torch

    from training.kd import on_policy_batch, on_policy_step, word_kd_loss

    t = cfg.teacher
    if on_policy_step(cfg.seed, step, t.joint_teaching):
        batch = on_policy_batch(model, tok, batch, causal=arch == "causal", top_p=t.sample_top_p,
                                temperature=t.sample_temperature, max_new_tokens=t.sample_max_new_tokens,
                                seed=cfg.seed * 1_000_003 + step)
    with torch.no_grad(), _autocast(cfg.dtype, device):
        t_logits = teacher(**batch).logits
    with _autocast(cfg.dtype, device):
        s_logits = model(**batch).logits
    return word_kd_loss(s_logits, t_logits, batch["labels"], causal=arch == "causal", vocab=vocab,
                        temperature=t.kd_temperature)


def train_student(loadable: str, base_model: str, base_ref: str | None, frames: dict[str, pl.DataFrame],
                  data: DatasetRef, cfg: TrainConfig, out: Path,
                  on_step: Callable[[int, int, float], None] | None = None,
                  teacher: tuple[str, str, Path | None] | None = None) -> dict:
    """Train (or resume, or find finished) a LoRA adapter in `out`; returns steps, losses and timings.

    `teacher` (model id, loadable, adapter folder): the word-level KD teacher when `cfg.teacher.kd` is word."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    t0 = time.perf_counter()
    train, val = frames["train"], frames.get("validation")
    if train.height == 0:
        raise StateError(f"{data.dataset}: the train split is empty; nothing to train on")
    if val is not None and cfg.eval_limit:
        val = val.sort("source_id", "paraphrase").head(cfg.eval_limit)
    key = run_key(cfg, base_model, data, train.height, 0 if val is None else val.height)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = out / "checkpoints"
    run_file = ckpts / RUN_FILE
    done = read_student(out)
    if done is not None:
        if done.options.get("run_key") != key:
            raise StateError(f"{out}: holds a student trained with other options or data; pass another --output")
        return {"skipped": True, "output": str(out), "steps": done.steps, "losses": done.losses,
                "seconds": round(time.perf_counter() - t0, 3)}
    if run_file.is_file() and json.loads(run_file.read_text())["run_key"] != key:
        raise StateError(f"{out}: holds checkpoints of a run with other options or data; pass another --output "
                         "or delete that folder")
    ckpts.mkdir(exist_ok=True)
    run_file.write_text(json.dumps({"run_key": key}))

    arch = detect_arch(loadable, cfg.arch)
    template = cfg.template or default_template(arch)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_base(loadable, arch)
    pruned = prune_student(model, cfg.student_layers) if cfg.student_layers else None
    word_kd = cfg.teacher is not None and cfg.teacher.kd == "word"
    if word_kd:
        if teacher is None:
            raise RecipeError("train.teacher.kd is word but no teacher model was resolved")
        kd_teacher, vocab = load_teacher(teacher[1], teacher[0], arch, teacher[2], cfg.teacher.dtype, device, tok)
    lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM if arch == "seq2seq" else TaskType.CAUSAL_LM, r=cfg.rank,
                      lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules)
    try:
        model = get_peft_model(model, lora).to(device)
    except ValueError as e:
        raise RecipeError(f"train.target_modules: {first_line(e)}") from None
    per_epoch = math.ceil(examples_per_epoch(train, cfg.targets) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    step, history = _resume(ckpts, model, optimizer, scheduler)
    resumed_from = step

    def validate(at: int) -> None:
        if val is not None and val.height:
            history.append({"step": at, "val_loss": mean_loss(model, tok, arch, template, val, cfg, device)})

    if step == 0:
        validate(0)
    model.train()
    epoch_cache: dict[int, pl.DataFrame] = {}
    loss_value = float("nan")
    while step < total:
        epoch, index = divmod(step, per_epoch)
        if epoch not in epoch_cache:
            epoch_cache = {epoch: epoch_examples(train, epoch, cfg.targets, cfg.seed)}
        part = epoch_cache[epoch].slice(index * cfg.batch_size, cfg.batch_size)
        batch = encode_examples(tok, arch, template, part["source"].to_list(), part["paraphrase"].to_list(),
                                cfg.max_length)
        batch = {k: v.to(device) for k, v in batch.items()}
        if word_kd:
            loss = _kd_loss(model, kd_teacher, vocab, batch, arch, cfg, device, step, tok)
        else:
            with _autocast(cfg.dtype, device):
                loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = float(loss.detach())
        history.append({"step": step, "train_loss": loss_value})
        if step % cfg.eval_every == 0 or step == total:
            validate(step)
        if step % cfg.save_every == 0 and step < total:
            _save_checkpoint(ckpts, model, optimizer, scheduler, step, history)
        if on_step:
            on_step(step, total, loss_value)

    vals = [h["val_loss"] for h in history if "val_loss" in h]
    trains = [h["train_loss"] for h in history if "train_loss" in h]
    losses = {"val_step0": vals[0] if vals else None, "val_final": vals[-1] if vals else None,
              "train_final": trains[-1] if trains else None}
    fmt = StudentFormat(arch=arch, base_model=base_model, base_model_ref=base_ref, template=template,
                        max_length=cfg.max_length, dataset=data.dataset, dataset_revision=data.revision,
                        dataset_version=data.version,
                        options={**cfg.model_dump(mode="json"), "run_key": key, "dataset_commit": data.commit,
                                 "train_pairs": train.height, "validation_pairs": 0 if val is None else val.height,
                                 "pruned": pruned, "kd": kd_description(cfg, teacher[0] if teacher else None)},
                        steps=step, losses=losses)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (out / "README.md").write_text(_card(fmt), encoding="utf-8")
    tmp = out / f".{STUDENT_FILE}.tmp"
    tmp.write_text(fmt.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, out / STUDENT_FILE)
    shutil.rmtree(ckpts, ignore_errors=True)
    return {"skipped": False, "output": str(out), "steps": step, "resumed_from": resumed_from, "losses": losses,
            "arch": arch, "seconds": round(time.perf_counter() - t0, 3)}
