"""NLI entailment scorer: p(premise => hypothesis) from any Hugging Face sequence-classification NLI model.

Method B keeps a pair only if the entailment probability is high in both directions. Any NLI checkpoint works
(`roberta-large-wanli`, `microsoft/deberta-large-mnli`, `cross-encoder/nli-deberta-v3-base`, ...), given by local
path or Hub id; the entailment class is found by its *name* in the config, never by position, because NLI
checkpoints order their labels differently.

    nli = load_nli("alisawuffles/roberta-large-wanli")
    fwd, bwd = both_directions(nli, sources, paraphrases)   # p(x => y), p(y => x), float32

dtype `auto`: float32 on CPU, bfloat16 on CUDA (float16 where bf16 is unsupported). Probabilities are compared
with a threshold (0.75), so CPU keeps exact float32 numbers. Measured on 2 CPU cores, 2,000 pairs, batch 32: a
MiniLM-L6-sized BERT (hidden 384) with a 3-way head ran ~150 pairs/s in float32 and ~520 pairs/s in bfloat16,
with probabilities off by up to 0.012 (mean 0.003); the 2-layer test model is faster in float32 (~6,300 vs
~5,000 pairs/s). Pass `dtype="bfloat16"` to trade exactness near the threshold for ~3x CPU speed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import RecipeError

ENTAILMENT_NAMES = frozenset({"entailment", "entail", "entails", "entailed"})
_DTYPES = ("float32", "bfloat16", "float16")
_HASH_LIMIT = 32 * 1024 * 1024  # files up to this size are hashed; bigger ones (weights) by size + mtime


@dataclass(eq=False)
class NLIModel:
    model: Any  # transformers PreTrainedModel, in eval mode, on `device`
    tokenizer: Any  # transformers tokenizer
    entail_idx: int  # index of the entailment label in the model's logits
    model_id: str  # stable id for caching results: Hub id@commit, or path#content-fingerprint
    device: str


def _label_name(name: object) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def entailment_index(config: Any) -> int:
    """Index of the entailment label, looked up by name in `config.id2label` / `config.label2id`.

    Accepts "entailment"/"entail" in any case; "not_entailment" does not count. RecipeError when no label or more
    than one label names entailment.
    """
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    label2id = dict(getattr(config, "label2id", None) or {})
    found = {i for i, name in id2label.items() if _label_name(name) in ENTAILMENT_NAMES}
    found |= {int(i) for name, i in label2id.items() if _label_name(name) in ENTAILMENT_NAMES}
    name = getattr(config, "name_or_path", "") or "?"
    labels = json.dumps({str(k): v for k, v in sorted(id2label.items())})
    if not found:
        raise RecipeError(f"nli model {name}: config has no entailment label (id2label = {labels}); "
                          "use an NLI model whose labels name entailment")
    if len(found) > 1:
        raise RecipeError(f"nli model {name}: several labels name entailment (id2label = {labels}, "
                          f"label2id = {json.dumps(label2id)}); fix the config so exactly one does")
    idx = found.pop()
    num_labels = getattr(config, "num_labels", len(id2label)) or len(id2label)
    if not 0 <= idx < num_labels:
        raise RecipeError(f"nli model {name}: entailment label index {idx} is outside the {num_labels} outputs")
    return idx


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _looks_like_path(ref: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else that does not exist is a missing local path."""
    return (ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref
            or ref.endswith("/"))


def folder_fingerprint(folder: Path) -> str:
    """Short content fingerprint of a model folder: changes when its config, tokenizer or weights change.

    Small files (config, tokenizer, small weights) are hashed; large ones count by name, size and mtime.
    """
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        st = path.stat()
        h.update(str(path.relative_to(folder)).encode("utf-8") + b"\x1f")
        if st.st_size <= _HASH_LIMIT:
            with path.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise RecipeError(f"nli device {device!r}: not a torch device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"nli device {device!r}: CUDA is not available on this machine; use auto or cpu")
    return device


def _resolve_dtype(dtype: str, device: str) -> str:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if dtype not in _DTYPES:
        raise RecipeError(f"nli dtype {dtype!r}: use one of auto, {', '.join(_DTYPES)}")
    return dtype


def load_nli(model: str, device: str = "auto", dtype: str = "auto") -> NLIModel:
    """Load an NLI model (local folder or Hub id) once per process; same arguments -> the same NLIModel.

    A local folder is re-read when its content fingerprint changes (the cache key includes it). Hub ids load
    through transformers' cache, so `HF_HUB_OFFLINE=1` works for pre-downloaded models. User mistakes (missing
    path, unknown id, a model without an entailment label, bad device/dtype) raise RecipeError with one line.
    `load_nli.cache_clear()` empties the cache.
    """
    loadable, fingerprint = _locate(model)
    dev = _resolve_device(device)
    return _load_cached(loadable, fingerprint, dev, _resolve_dtype(dtype, dev))


def _locate(model: str) -> tuple[str, str]:
    """(what transformers loads, the folder's content fingerprint or "" for a Hub id); one line for a bad path."""
    ref = str(model).strip()
    if not ref:
        raise RecipeError("nli model: empty model name; give a local folder or a Hub id")
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RecipeError(f"nli model {ref}: not a folder (give the model folder, holding config.json)")
        if not (path / "config.json").is_file():
            raise RecipeError(f"nli model {ref}: folder has no config.json; not a Hugging Face model folder")
        path = path.resolve()
        return str(path), folder_fingerprint(path)
    if _looks_like_path(ref):
        raise RecipeError(f"nli model {ref}: no such folder")
    return ref, ""


def nli_model_id(model: str) -> str:
    """The `model_id` `load_nli` gives this model, from its config only (a driver that hands the model to Ray
    actors keys the cache without loading the weights)."""
    loadable, fingerprint = _locate(model)
    if fingerprint:
        return _model_id(loadable, fingerprint, None)
    from transformers import AutoConfig

    try:
        return _model_id(loadable, "", AutoConfig.from_pretrained(loadable))
    except (OSError, ValueError) as e:
        raise RecipeError(f"nli model {loadable}: cannot load this Hub id (not a local folder; offline needs it "
                          f"pre-downloaded): {_first_line(e)}") from None


def _model_id(loadable: str, fingerprint: str, *configs) -> str:
    """path#content for a folder; Hub id@commit (the first config that knows its commit) for a Hub model."""
    if fingerprint:
        return f"{loadable}#{fingerprint}"
    commit = next((c for c in (getattr(x, "_commit_hash", None) for x in configs) if c), None)
    return f"{loadable}@{commit[:12]}" if commit else loadable


@functools.lru_cache(maxsize=4)
def _load_cached(loadable: str, fingerprint: str, device: str, dtype: str) -> NLIModel:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(loadable)
        idx = entailment_index(config)  # before the (large) weights: a wrong model fails fast
        tokenizer = AutoTokenizer.from_pretrained(loadable)
        net = AutoModelForSequenceClassification.from_pretrained(loadable, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError, ImportError) as e:
        where = "local folder" if fingerprint else "Hub id (not a local folder; offline needs it pre-downloaded)"
        raise RecipeError(f"nli model {loadable}: cannot load this {where}: {_first_line(e)}") from None
    net.to(device)
    net.eval()
    return NLIModel(model=net, tokenizer=tokenizer, entail_idx=idx,
                    model_id=_model_id(loadable, fingerprint, net.config, config), device=device)


load_nli.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]


def entailment_probs(nli: NLIModel, premises: Sequence[str], hypotheses: Sequence[str], batch_size: int = 32,
                     max_length: int = 256) -> np.ndarray:
    """float32 p(premise[i] => hypothesis[i]) for every i, in input order.

    Pairs are batched by similar length (fewer pad tokens), run without gradients, and the softmax is taken in
    float32 whatever the model's dtype. Pairs longer than `max_length` tokens are truncated (longest first).
    """
    import torch

    if len(premises) != len(hypotheses):
        raise ValueError(f"entailment_probs: {len(premises)} premises but {len(hypotheses)} hypotheses")
    if batch_size < 1:
        raise ValueError(f"entailment_probs: batch_size must be >= 1, got {batch_size}")
    n = len(premises)
    out = np.empty(n, dtype=np.float32)
    if n == 0:
        return out
    tok = nli.tokenizer
    limit = getattr(tok, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < max_length:
        max_length = limit
    order = np.argsort(np.fromiter((len(p) + len(h) for p, h in zip(premises, hypotheses, strict=True)),
                                   dtype=np.int64, count=n), kind="stable")
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            enc = tok([premises[i] for i in idx], [hypotheses[i] for i in idx], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            enc = {k: v.to(nli.device) for k, v in enc.items()}
            logits = nli.model(**enc).logits
            probs = torch.softmax(logits.float(), dim=-1)[:, nli.entail_idx]
            out[idx] = probs.cpu().numpy()
    return out


def both_directions(nli: NLIModel, sources: Sequence[str], paraphrases: Sequence[str], batch_size: int = 32,
                    max_length: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(p(source => paraphrase), p(paraphrase => source)), both computed in one batched pass."""
    if len(sources) != len(paraphrases):
        raise ValueError(f"both_directions: {len(sources)} sources but {len(paraphrases)} paraphrases")
    n = len(sources)
    probs = entailment_probs(nli, [*sources, *paraphrases], [*paraphrases, *sources], batch_size=batch_size,
                             max_length=max_length)
    return probs[:n], probs[n:]
