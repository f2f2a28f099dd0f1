"""The LoRA trainer and student evaluation: a tiny T5 built here (seq2seq), pseudo-targets, exact resume, CLI.

The causal path on the embedded SmolLM2 and the demo recipe's export is in tests/test_student_demo.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, cli, error_line, kill_training_at
from tests.student_fixtures import build_tiny_t5, write_export
from training.data import epoch_examples

SOURCES = [ln for ln in (REPO / "pipelines/data/demo_sources.txt").read_text().splitlines() if ln][:60]


def _rewrites(s: str) -> list[str]:
    words = s.rstrip(".?!").split()
    half = len(words) // 2
    return [" ".join(words[half:] + words[:half]) + ".", "In short , " + s, s.replace(" the ", " this ")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(export folder, tiny T5 folder): 60 sources x 3 rewrites, split 44/8/8 sources."""
    folder = tmp_path_factory.mktemp("tiny")
    rows = [(s, r) for s in SOURCES for r in _rewrites(s)]
    idx = {"train": range(0, 44 * 3), "validation": range(44 * 3, 52 * 3), "test": range(52 * 3, 60 * 3)}
    export = write_export(folder / "export", rows, {k: list(v) for k, v in idx.items()})
    model = build_tiny_t5(folder / "t5", [t for pair in rows for t in pair])
    return export, model


def _train_args(export: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", str(export), "--model", str(model), "-o", str(out), "--lr", "1e-2",
            "--batch-size", "16", "--max-length", "48", "--eval-every", "4", "--save-every", "4", *extra]


def test_rotate_gives_each_epoch_a_different_pseudo_target():
    train = pl.DataFrame({"source_id": ["a"] * 3 + ["b"] * 2 + ["c"],
                          "source": ["A"] * 3 + ["B"] * 2 + ["C"],
                          "paraphrase": ["a1", "a2", "a3", "b1", "b2", "c1"]})
    epochs = [epoch_examples(train, e, "rotate", seed=0) for e in range(3)]
    for ep in epochs:
        assert sorted(ep["source_id"].to_list()) == ["a", "b", "c"]  # one target per source per epoch
    seen_a = [ep.filter(pl.col("source_id") == "a")["paraphrase"].item() for ep in epochs]
    assert sorted(seen_a) == ["a1", "a2", "a3"]  # three epochs: all three pseudo-targets, none twice
    seen_b = [ep.filter(pl.col("source_id") == "b")["paraphrase"].item() for ep in epochs]
    assert seen_b[0] != seen_b[1] and seen_b[2] == seen_b[0]
    assert epoch_examples(train, 1, "rotate", seed=0).equals(epochs[1])  # deterministic
    assert epoch_examples(train, 0, "all", seed=0).height == 6


def test_seq2seq_training_lowers_validation_loss_and_the_adapter_generates(tiny, tmp_path):
    export, model = tiny
    out = tmp_path / "student"
    proc = cli(*_train_args(export, model, out, "--steps", "24", "--targets", "all"), check=True)
    assert "validation loss" in proc.stdout
    fmt = json.loads((out / "student.json").read_text())
    assert fmt["arch"] == "seq2seq" and fmt["template"] == "paraphrase: {text}"
    assert fmt["dataset_version"] is None and fmt["steps"] == 24
    assert fmt["losses"]["val_final"] < fmt["losses"]["val_step0"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "library_name" in card and str(export) in card and "| rank | 8 |" in card
    assert not (out / "checkpoints").exists()
    # the adapter loads back and generates; evaluate prints the teacher-vs-student table and writes JSON
    ev = cli("evaluate", "--adapter", str(out), "--limit", "4", "--max-new-tokens", "8", check=True)
    assert "student - teacher" in ev.stdout and "iBLEU" in ev.stdout and "self-BLEU" in ev.stdout
    res = json.loads((out / "eval-test.json").read_text())
    assert res["sources"] == 4 and res["teacher_pairs"] == 12
    assert all(s["student"] and all(isinstance(o, str) for o in s["student"]) for s in res["samples"])
    teacher = res["metrics"]
    assert teacher["bleu_ref"]["teacher"] is not None and 0 <= teacher["cosine"]["student"] <= 1.0001
    # a rerun finds the finished student and trains nothing
    again = cli(*_train_args(export, model, out, "--steps", "24", "--targets", "all"), check=True)
    assert "already trained" in again.stdout


def test_training_resumes_exactly_after_sigkill(tiny, tmp_path):
    export, model = tiny
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    cli(*_train_args(export, model, ref, "--steps", "12"), check=True)
    kill_training_at(_train_args(export, model, cut, "--steps", "12"), cut)
    assert not (cut / "student.json").exists(), "killed too late: raise --steps"
    cli(*_train_args(export, model, cut, "--steps", "12"), check=True)
    a, b = load_file(ref / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-6, k
    hist = [json.loads(x) for x in (cut / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist if "train_loss" in h] == list(range(1, 13))  # no step lost or repeated


def test_changed_options_never_resume_another_run(tiny, tmp_path):
    export, model = tiny
    out = tmp_path / "s"
    cli(*_train_args(export, model, out, "--steps", "2"), check=True)
    proc = cli(*_train_args(export, model, out, "--steps", "2", "--rank", "4"))
    assert proc.returncode == 5 and "other options or data" in error_line(proc)
    no_test = write_export(tmp_path / "no-test", [("a b", "b a")], {"train": [0]})
    proc = cli("evaluate", "--adapter", str(out), "--dataset", str(no_test))
    assert proc.returncode == 3 and "no split 'test'" in error_line(proc)


def test_an_export_without_validation_split_trains_and_says_so(tiny, tmp_path):
    _, model = tiny
    rows = [(s, r) for s in SOURCES[:12] for r in _rewrites(s)]
    export = write_export(tmp_path / "noval", rows, {"train": list(range(30)), "test": list(range(30, 36))})
    out = tmp_path / "s"
    cli(*_train_args(export, model, out, "--steps", "2"), check=True)
    fmt = json.loads((out / "student.json").read_text())
    assert fmt["losses"]["val_step0"] is None and fmt["losses"]["train_final"] > 0
    assert "validation loss: - at step 0 -> - at the end" in (out / "README.md").read_text()


def test_user_mistakes_are_one_line(tiny, tmp_path):
    export, model = tiny
    proc = cli("train", "--dataset", str(tmp_path / "nope"), "--model", str(model))
    assert proc.returncode == 3
    assert error_line(proc) == f"error: dataset {tmp_path / 'nope'}: no such folder (a Hub id is OWNER/NAME)"
    proc = cli(*_train_args(export, model, tmp_path / "x", "--targets", "some"))
    assert proc.returncode == 4 and "targets" in error_line(proc)
    proc = cli("train", "--dataset", str(export), "--model", str(model), "--target-modules", "nothing_here",
               "--steps", "1", "-o", str(tmp_path / "y"))
    assert proc.returncode == 4 and "target_modules" in error_line(proc)
    proc = cli("evaluate", "--adapter", str(tmp_path))
    assert proc.returncode == 3 and "no trained student" in error_line(proc)
    proc = cli(*_train_args(export, model, tmp_path / "z", "--template", "Say {0}: {text}"))
    assert proc.returncode == 4 and "one placeholder {text}" in error_line(proc)
