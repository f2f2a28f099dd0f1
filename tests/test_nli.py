"""NLI scorer: entailment by label name, both directions, batching order, errors, model ids (tiny seeded model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

from curation.nli import both_directions, entailment_index, entailment_probs, load_nli
from schemas.errors import RecipeError
from tests.nli_fixture import build_tiny_nli

X = [
    "A man is playing a guitar on stage.",
    "The cat sat on the mat.",
    "Stocks fell sharply on Monday after the central bank raised interest rates again.",
    "He left.",
    "Police said the fire started in the kitchen of a three-storey building late on Sunday night.",
    "It rained.",
]
Y = [
    "Someone plays music.",
    "A cat is sitting on a rug in the living room.",
    "Markets dropped.",
    "He went away early in the morning without saying goodbye to anyone at the party.",
    "A fire broke out.",
    "The weather was wet all day in the city.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_nli(tmp_path_factory.mktemp("nli") / "tiny")


def manual_softmax(folder: Path, premises: list[str], hypotheses: list[str]) -> np.ndarray:
    """All class probabilities, one unpadded forward pass per pair, straight from transformers."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    rows = []
    with torch.no_grad():
        for p, h in zip(premises, hypotheses, strict=True):
            logits = model(**tok(p, h, return_tensors="pt")).logits[0]
            rows.append(torch.softmax(logits, dim=-1).numpy())
    return np.stack(rows)


def label_index(folder: Path, name: str) -> int:
    id2label = json.loads((folder / "config.json").read_text())["id2label"]
    return next(int(i) for i, label in id2label.items() if label == name)


def test_probability_is_the_entailment_class_in_both_directions(tiny):
    nli = load_nli(str(tiny))
    ent = label_index(tiny, "entailment")
    assert ent == 1 == nli.entail_idx  # the fixture's order is neutral, entailment, contradiction
    fwd, bwd = both_directions(nli, X, Y)
    assert fwd.dtype == np.float32 and bwd.dtype == np.float32 and fwd.shape == bwd.shape == (len(X),)

    manual_xy = manual_softmax(tiny, X, Y)  # premise = x, hypothesis = y
    manual_yx = manual_softmax(tiny, Y, X)
    np.testing.assert_allclose(fwd, manual_xy[:, ent], atol=1e-5)
    np.testing.assert_allclose(bwd, manual_yx[:, ent], atol=1e-5)
    # the other classes give other numbers, so a positional pick (0 or 2) would fail above
    for other in (0, 2):
        assert np.abs(manual_xy[:, other] - fwd).max() > 0.05

    # entailment_probs with premise = x is the forward direction; swapping gives the backward one
    np.testing.assert_allclose(entailment_probs(nli, X, Y), fwd, atol=1e-6)
    np.testing.assert_allclose(entailment_probs(nli, Y, X), bwd, atol=1e-6)
    assert np.abs(fwd - bwd).max() > 0.05  # the model is asymmetric, so the directions really differ


def _permuted_copy(src: Path, dst: Path, order: tuple[str, ...], move_rows: bool) -> Path:
    """Copy of `src` whose labels read `order`; with `move_rows` the classifier rows move with their names."""
    model = AutoModelForSequenceClassification.from_pretrained(src)
    old = {label: int(i) for i, label in model.config.id2label.items()}
    if move_rows:
        rows = torch.tensor([old[label] for label in order])
        with torch.no_grad():
            model.classifier.weight.copy_(model.classifier.weight[rows].clone())
            model.classifier.bias.copy_(model.classifier.bias[rows].clone())
    model.config.id2label = dict(enumerate(order))
    model.config.label2id = {label: i for i, label in enumerate(order)}
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def test_entailment_is_found_by_name_not_position(tiny, tmp_path):
    base = entailment_probs(load_nli(str(tiny)), X, Y)
    order = ("entailment", "contradiction", "neutral")

    moved = load_nli(str(_permuted_copy(tiny, tmp_path / "moved", order, move_rows=True)))
    assert moved.entail_idx == 0
    np.testing.assert_allclose(entailment_probs(moved, X, Y), base, atol=1e-5)

    renamed_dir = _permuted_copy(tiny, tmp_path / "renamed", order, move_rows=False)
    renamed = load_nli(str(renamed_dir))
    assert renamed.entail_idx == 0
    probs = entailment_probs(renamed, X, Y)
    assert np.abs(probs - base).max() > 0.05  # same network, other row called entailment
    np.testing.assert_allclose(probs, manual_softmax(tiny, X, Y)[:, 0], atol=1e-5)


def test_batching_and_length_sorting_keep_input_order(tiny):
    nli = load_nli(str(tiny))
    rng = np.random.default_rng(0)
    premises = [X[i % len(X)] + " and" * int(rng.integers(0, 30)) for i in range(23)]
    hypotheses = [Y[int(rng.integers(0, len(Y)))] for _ in range(23)]
    lengths = [len(p) + len(h) for p, h in zip(premises, hypotheses, strict=True)]
    assert lengths != sorted(lengths)  # sorting really reorders these

    one = entailment_probs(nli, premises, hypotheses, batch_size=1)
    assert np.ptp(one) > 0.05  # distinct values, so any mix-up of the order shows
    for batch_size in (2, 5, 32):
        np.testing.assert_allclose(entailment_probs(nli, premises, hypotheses, batch_size=batch_size), one,
                                   atol=1e-5)
    fwd, bwd = both_directions(nli, premises, hypotheses, batch_size=4)
    np.testing.assert_allclose(fwd, one, atol=1e-5)
    np.testing.assert_allclose(bwd, entailment_probs(nli, hypotheses, premises, batch_size=1), atol=1e-5)
    assert entailment_probs(nli, [], []).shape == (0,)
    with pytest.raises(ValueError):
        entailment_probs(nli, ["a"], [])


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({0: "contradiction", 1: "neutral", 2: "ENTAILMENT"}, 2),  # microsoft/deberta-large-mnli style
        ({0: "contradiction", 1: "entailment", 2: "neutral"}, 1),  # roberta-large-wanli, cross-encoder style
        ({0: "not_entailment", 1: "Entail"}, 1),  # binary; "not_entailment" is no match
    ],
)
def test_entailment_index_by_name(labels, expected):
    config = BertConfig(id2label=labels, label2id={v: k for k, v in labels.items()})
    assert entailment_index(config) == expected


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        (("LABEL_0", "LABEL_1", "LABEL_2"), "no entailment label"),
        (("entailment", "neutral", "Entailment"), "several labels"),
        (("not_entailment", "neutral"), "no entailment label"),
    ],
)
def test_model_without_one_entailment_label_is_refused(tmp_path, labels, needle):
    folder = build_tiny_nli(tmp_path / "bad", label_order=labels)
    with pytest.raises(RecipeError) as err:
        load_nli(str(folder))
    message = str(err.value)
    assert needle in message and str(folder) in message and labels[0] in message
    assert "\n" not in message


@pytest.mark.parametrize("ref", ["/nonexistent/nli-model", "./no/such/folder", "no-such-org/no-such-nli-model"])
def test_missing_model_is_one_line_recipe_error(ref):
    with pytest.raises(RecipeError) as err:
        load_nli(ref)
    message = str(err.value)
    assert message.startswith(f"nli model {ref}") and "\n" not in message


def test_bad_device_or_dtype_is_recipe_error(tiny):
    with pytest.raises(RecipeError, match="dtype"):
        load_nli(str(tiny), dtype="int3")
    with pytest.raises(RecipeError, match="device"):
        load_nli(str(tiny), device="tpu9")


def test_model_id_tracks_the_folder_content(tmp_path):
    folder = build_tiny_nli(tmp_path / "m", seed=0)
    first = load_nli(str(folder))
    assert str(folder.resolve()) in first.model_id
    again = load_nli(str(folder))
    assert again is first  # cached
    before = entailment_probs(first, X, Y)

    build_tiny_nli(folder, seed=1)  # same path, new weights
    changed = load_nli(str(folder))
    assert changed.model_id != first.model_id
    assert np.abs(entailment_probs(changed, X, Y) - before).max() > 0.05  # the cache did not serve the old one

    build_tiny_nli(folder, seed=0)  # back to the first content: back to the first id
    assert load_nli(str(folder)).model_id == first.model_id

    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    assert load_nli(str(copy)).model_id != first.model_id  # the path is part of the id
