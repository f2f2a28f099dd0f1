"""A smaller student made from its base model by keeping K of its layers, evenly spaced (layer pruning).

As "shrink and fine-tune" made the DistilBART students (Shleifer & Rush 2020): copy the base model and keep
maximally spaced layers, the first and the last among them; an encoder-decoder model keeps its whole encoder
unless asked (DistilBART 12-6: all 12 encoder layers, 6 of 12 decoder layers; decoding time is in the decoder).
The student shares the base model's tokenizer and embeddings by construction, which word-level KD needs.

Prune the plain transformers model BEFORE peft wraps it: the adapter's weight names then carry the student's
layer numbers (0..K-1), so a trained student is reloaded as base -> `apply_pruning` -> `PeftModel.from_pretrained`
with the provenance dict `prune_layers` returned (stored in `student.json` under `options["pruned"]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.errors import RecipeError

SUPPORTED = "layer pruning supports Llama-style causal LMs (model.model.layers), BART and T5"


def kept_layers(n: int, k: int) -> list[int]:
    """K of n layer indices, evenly spaced with the first and last kept (k=1: [0], the first layer, which SFT
    found better than the last; k >= n: all n). Rounds half up: n=12, k=6 gives DistilBART's [0, 2, 4, 7, 9, 11]."""
    if n < 1:
        raise ValueError(f"a model with {n} layers has none to keep")
    if k < 1:
        raise ValueError(f"cannot keep {k} layers: keep at least 1")
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    # round(i * (n - 1) / (k - 1)), half up, in integers; the step is > 1, so the indices are strictly increasing
    return [(2 * i * (n - 1) + (k - 1)) // (2 * (k - 1)) for i in range(k)]


@dataclass
class _Stack:
    """One stack of layers: the module holding the ModuleList, its attribute, and the config fields counting it."""

    owner: object
    attr: str
    counts: list[tuple[object, str]]
    first_required: bool = False  # T5: block 0 holds the relative attention bias every block uses
    layer_types: list[object] = field(default_factory=list)  # configs whose `layer_types` list follows the stack

    @property
    def layers(self):
        return getattr(self.owner, self.attr)


def _stacks(model) -> dict[str, _Stack]:
    """The prunable layer stacks of a supported model, by name ("decoder" for a causal LM's only stack)."""
    if getattr(model, "peft_config", None) is not None or type(model).__name__.startswith("Peft"):
        raise ValueError(f"{type(model).__name__} is wrapped by peft: prune the base model before peft wraps it")
    config = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        enc, dec = getattr(inner, "encoder", None), getattr(inner, "decoder", None)
        if _is_list(getattr(enc, "layers", None)) and _is_list(getattr(dec, "layers", None)) \
                and hasattr(config, "encoder_layers") and hasattr(config, "decoder_layers"):  # BART, mBART, Pegasus
            return {"encoder": _Stack(enc, "layers", [(config, "encoder_layers")]),
                    "decoder": _Stack(dec, "layers", [(config, "decoder_layers")])}
        enc, dec = getattr(model, "encoder", None), getattr(model, "decoder", None)
        if _is_list(getattr(enc, "block", None)) and _is_list(getattr(dec, "block", None)) \
                and hasattr(config, "num_decoder_layers"):  # T5, mT5: each stack also has its own config copy
            return {"encoder": _Stack(enc, "block", [(config, "num_layers"), (enc.config, "num_layers")], True),
                    "decoder": _Stack(dec, "block", [(config, "num_decoder_layers"), (dec.config, "num_layers")],
                                      True)}
    elif config is not None and _is_list(getattr(inner, "layers", None)) and hasattr(config, "num_hidden_layers"):
        configs = [config] + ([inner.config] if getattr(inner, "config", config) is not config else [])
        return {"decoder": _Stack(inner, "layers", [(c, "num_hidden_layers") for c in configs],
                                  layer_types=[c for c in configs if isinstance(getattr(c, "layer_types", None),
                                                                                list)])}
    raise RecipeError(f"train.student_layers: cannot prune {type(model).__name__}: {SUPPORTED}")


def _is_list(obj) -> bool:
    from torch import nn

    return isinstance(obj, nn.ModuleList)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once


def _check(name: str, stack: _Stack, kept: list[int]) -> None:
    n = len(stack.layers)
    if not kept or any(not isinstance(i, int) for i in kept) or kept != sorted(set(kept)) \
            or kept[0] < 0 or kept[-1] >= n:
        raise ValueError(f"{name} layers to keep must be increasing indices in 0..{n - 1}, got {kept}")
    if stack.first_required and kept[0] != 0:
        raise ValueError(f"{name} layer 0 must be kept: it holds the relative attention bias the others use")


def _prune(stack: _Stack, kept: list[int]) -> None:
    from torch import nn

    layers = [stack.layers[i] for i in kept]
    for new, layer in enumerate(layers):  # the KV cache is indexed by layer_idx: renumber 0..K-1
        for module in layer.modules():
            if getattr(module, "layer_idx", None) is not None:
                module.layer_idx = new
    setattr(stack.owner, stack.attr, nn.ModuleList(layers))
    for config, attr in stack.counts:
        setattr(config, attr, len(kept))
    for config in stack.layer_types:
        config.layer_types = [config.layer_types[i] for i in kept]


def prune_layers(model, kept: list[int], encoder_kept: list[int] | None = None) -> dict:
    """Keep the layers `kept` (of the decoder: a causal LM's stack or a seq2seq model's decoder) and, for a
    seq2seq model, `encoder_kept` of its encoder (None = all), in place and in order; the config counts follow.

    Returns the provenance `apply_pruning` replays: {"model_class", "stacks": {name: {"from", "kept"}},
    "params_before", "params_after"}; only pruned stacks are listed.
    """
    stacks = _stacks(model)
    wanted = {"decoder": list(kept)}
    if encoder_kept is not None:
        if "encoder" not in stacks:
            raise ValueError(f"{type(model).__name__} has no encoder to prune")
        wanted = {"encoder": list(encoder_kept), **wanted}
    for name, idx in wanted.items():
        _check(name, stacks[name], idx)
    before = _params(model)
    record = {}
    for name, idx in wanted.items():
        record[name] = {"from": len(stacks[name].layers), "kept": idx}
        _prune(stacks[name], idx)
    return {"model_class": type(model).__name__, "stacks": record, "params_before": before,
            "params_after": _params(model)}


def prune_student(model, k: int) -> dict | None:
    """`train.student_layers`: keep K evenly spaced layers of the decoder (a seq2seq model keeps its encoder);
    returns the provenance, or None when K >= the layers there are (nothing to prune)."""
    n = len(_stacks(model)["decoder"].layers)
    if k >= n:
        return None
    return prune_layers(model, kept_layers(n, k))


def apply_pruning(model, provenance: dict):
    """Replay a recorded pruning on a freshly loaded base model, in place, and return it (base -> prune -> load
    the student's adapter).

    ValueError when the base model's layer counts are not those the student was pruned from.
    """
    stacks = _stacks(model)
    recorded = provenance.get("stacks") or {}
    for name, rec in recorded.items():
        if name not in stacks:
            raise ValueError(f"the student was pruned in a {name} stack; {type(model).__name__} has none")
        n = len(stacks[name].layers)
        if rec.get("from") != n:
            raise ValueError(f"the student was pruned from a base with {rec.get('from')} {name} layers; this "
                             f"{type(model).__name__} has {n}")
    if "decoder" not in recorded:
        raise ValueError("the student's pruning record names no decoder stack; retrain it")
    prune_layers(model, recorded["decoder"]["kept"], recorded["encoder"]["kept"] if "encoder" in recorded else None)
    return model
