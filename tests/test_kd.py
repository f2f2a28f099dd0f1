"""Word-level KD and Joint-Teaching: the loss against a direct formula, on-policy steps and targets, the tokenizer
check, and training runs (causal and seq2seq, resumed after a kill) with tiny models built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, cli, error_line, kill_training_at
from tests.student_fixtures import build_tiny_llama, build_tiny_t5, write_export
from training.kd import IGNORE, on_policy_batch, on_policy_step, word_kd_loss

SOURCES = [ln for ln in (REPO / "pipelines/data/demo_sources.txt").read_text().splitlines() if ln][:40]
TEMPLATE = "Paraphrase : {text} Rewrite :"


def _reference_kl(s, t, labels, causal: bool, vocab: int, temp: float) -> torch.Tensor:
    """KL(teacher || student) straight from the definition, example by example, position by position."""
    per_example = []
    for b in range(s.shape[0]):
        terms = []
        for i in range(s.shape[1]):
            j = i + 1 if causal else i  # a causal LM's logits at i predict token i + 1
            if j >= s.shape[1] or labels[b, j] == IGNORE:
                continue
            p = torch.softmax(t[b, i, :vocab].double() / temp, -1)
            q = torch.softmax(s[b, i, :vocab].double() / temp, -1)
            terms.append((p * (p.log() - q.log())).sum() * temp ** 2)
        if terms:
            per_example.append(torch.stack(terms).mean())
    return torch.stack(per_example).mean()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_word_level_loss_is_the_forward_kl_of_the_definition(causal, temp):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 13, generator=g), torch.randn(3, 7, 13, generator=g)
    labels = torch.randint(0, 10, (3, 7), generator=g)
    labels[0, :3] = IGNORE  # a prompt
    labels[1, 4:] = IGNORE  # padding
    labels[2, :] = IGNORE  # an example without targets does not count
    got = word_kd_loss(s, t, labels, causal=causal, vocab=10, temperature=temp, chunk=4)  # 3 unused logit rows
    assert torch.allclose(got.double(), _reference_kl(s, t, labels, causal, 10, temp), atol=1e-6)
    assert word_kd_loss(t, t, labels, causal=causal, vocab=10).abs().item() < 1e-6  # the teacher itself: 0


def test_joint_teaching_takes_its_share_of_steps_the_same_on_every_run():
    steps = [on_policy_step(7, k, 0.5) for k in range(2000)]
    assert 0.45 < sum(steps) / len(steps) < 0.55
    assert steps == [on_policy_step(7, k, 0.5) for k in range(2000)]
    assert not any(on_policy_step(7, k, 0.0) for k in range(100)) and all(on_policy_step(7, k, 1.0) for k in range(100))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """An export of 40 sources x 2 rewrites, tiny Llama students/teachers over one tokenizer, one over another,
    and tiny T5s."""
    folder = tmp_path_factory.mktemp("kd")
    rows = [(s, r) for s in SOURCES for r in (s.replace(" the ", " this "), "In short , " + s)]
    export = write_export(folder / "export", rows, {"train": list(range(60)), "validation": list(range(60, 80))})
    texts = [t for pair in rows for t in pair]
    return {"export": export, "student": build_tiny_llama(folder / "student", texts, seed=0),
            "teacher": build_tiny_llama(folder / "teacher", texts, seed=1, layers=6),
            "stranger": build_tiny_llama(folder / "stranger", texts[:10], seed=2),
            "t5": build_tiny_t5(folder / "t5", texts), "t5-teacher": build_tiny_t5(folder / "t5-teacher", texts)}


def test_on_policy_targets_start_after_the_prompt(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.lora import encode_examples

    tok = AutoTokenizer.from_pretrained(tiny["student"])
    model = AutoModelForCausalLM.from_pretrained(tiny["student"])
    batch = encode_examples(tok, "causal", TEMPLATE, SOURCES[:3], ["a b", "c", "d e f"], 64)
    out = on_policy_batch(model, tok, batch, causal=True, top_p=0.95, temperature=1.0, max_new_tokens=5, seed=3)
    again = on_policy_batch(model, tok, batch, causal=True, top_p=0.95, temperature=1.0, max_new_tokens=5, seed=3)
    assert torch.equal(out["input_ids"], again["input_ids"])  # seeded
    for i in range(3):
        prompt = batch["input_ids"][i][(batch["labels"][i] == IGNORE) & (batch["attention_mask"][i] == 1)]
        n = prompt.numel()
        assert torch.equal(out["input_ids"][i, :n], prompt)  # the prompt is kept as it was
        assert (out["labels"][i, :n] == IGNORE).all()  # and is never a target
        sample = out["labels"][i, n:]
        assert 1 <= int((sample != IGNORE).sum()) <= 5  # the student's own tokens are the targets
        assert torch.equal(sample[sample != IGNORE], out["input_ids"][i, n:n + int((sample != IGNORE).sum())])


def _train(tiny, out: Path, *extra: str, student: str = "student", teacher: str = "teacher") -> list[str]:
    args = ["train", "--dataset", str(tiny["export"]), "--model", str(tiny[student]), "-o", str(out),
            "--lr", "1e-2", "--batch-size", "8", "--max-length", "48", "--eval-every", "4", "--save-every", "4",
            "--teacher-model", str(tiny[teacher]), "--kd", "word", *extra]
    return args + (["--template", TEMPLATE] if student == "student" else [])


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line(tiny, tmp_path):
    proc = cli(*_train(tiny, tmp_path / "s", "--steps", "2", teacher="stranger"))
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    line = error_line(proc)
    assert "tokenizer differs" in line and "kd: seq" in line


def test_word_kd_with_joint_teaching_resumes_exactly_after_sigkill(tiny, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    args = ("--steps", "12", "--joint-teaching", "0.5")
    cli(*_train(tiny, ref, *args), check=True)
    kill_training_at(_train(tiny, cut, *args), cut)
    assert not (cut / "student.json").exists(), "killed too late: raise --steps"
    cli(*_train(tiny, cut, *args), check=True)
    a, b = load_file(ref / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-6, k
    meta = json.loads((ref / "student.json").read_text())
    assert meta["options"]["teacher"]["kd"] == "word" and meta["options"]["teacher"]["joint_teaching"] == 0.5
    card = (ref / "README.md").read_text()
    assert "word-level knowledge distillation" in card and "Joint-Teaching on 50% of steps" in card
    losses = [json.loads(x) for x in (ref / "history.jsonl").read_text().splitlines()]
    assert all(h["train_loss"] >= 0 for h in losses if "train_loss" in h)


def test_a_seq2seq_student_learns_from_a_seq2seq_teacher(tiny, tmp_path):
    out = tmp_path / "t5"
    cli(*_train(tiny, out, "--steps", "6", "--joint-teaching", "0.5", student="t5", teacher="t5-teacher"),
        check=True)
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    trains = [h["train_loss"] for h in hist if "train_loss" in h]
    assert len(trains) == 6 and all(x == x and x >= 0 for x in trains)


def test_a_layer_pruned_student_distils_and_evaluates_with_its_layers(tiny, tmp_path):
    """`--student-layers 2` of the tiny 4-layer base: the adapter covers 2 layers, student.json and the card say
    which, and `evaluate` rebuilds the pruned base before loading the adapter."""
    out = tmp_path / "small"
    cli(*_train(tiny, out, "--steps", "4", "--student-layers", "2"), check=True)
    meta = json.loads((out / "student.json").read_text())
    assert meta["options"]["pruned"]["stacks"]["decoder"] == {"from": 4, "kept": [0, 3]}
    layers = {k.split(".layers.")[1].split(".")[0] for k in load_file(out / "adapter_model.safetensors")}
    assert layers == {"0", "1"}
    assert "2 of 4 layers" in (out / "README.md").read_text()
    proc = cli("evaluate", "--adapter", str(out), "--dataset", str(tiny["export"]), "--split", "validation",
               "--limit", "3", "--num-beams", "1", "--num-return", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the pruned student as a teacher (an adapter on its base, the base pruned as recorded) for a new student
    nxt = tmp_path / "next"
    cli(*_train(tiny, nxt, "--steps", "2", "--teacher-adapter", str(out), teacher="student"), check=True)
    meta = json.loads((nxt / "student.json").read_text())
    assert meta["options"]["teacher"]["adapter"] == str(out) and meta["steps"] == 2
