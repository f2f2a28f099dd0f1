"""The causal student on the demo recipe: the shipped demo (first 30 sources, short budgets) runs through export,
train and evaluate; training lowers the validation loss; the adapter becomes the next round's teacher
(self-distillation). The `timeout=`s are hang guards; the work is sized well below them (half the sources,
tokens and steps of the first version; round two without curation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, cli

DEMO = REPO / "pipelines/recipes/demo.yaml"


STEPS = 10


def _demo_recipe(folder: Path, limit: int) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    data["workdir"] = str(folder / "demo")
    data["sources"] = [{"path": str(REPO / "pipelines/data/demo_sources.txt")}]
    data["teacher"].update(limit=limit, max_new_tokens=48)
    data["export"]["splits"] = {"train": 0.6, "validation": 0.2, "test": 0.2}  # a few sources in every split
    data["train"].update(max_steps=STEPS, eval_every=5, save_every=5)
    data["evaluate"].update(limit=3, max_new_tokens=32)
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("student-demo")
    proc = cli("run", str(_demo_recipe(folder, 30)), check=True, timeout=1200)
    return folder / "demo", proc.stdout


def test_demo_trains_a_student_that_beats_step_zero(demo_run):
    wd, stdout = demo_run
    [student] = list((wd / "students" / "demo-paraphrases").iterdir())
    fmt = json.loads((student / "student.json").read_text())
    assert fmt["arch"] == "causal" and fmt["dataset_version"] == student.name == "0.1.0"
    assert fmt["dataset"] == str((wd / "exports/demo-paraphrases/0.1.0").resolve())
    assert fmt["losses"]["val_final"] < fmt["losses"]["val_step0"]
    assert fmt["options"]["targets"] == "rotate" and fmt["steps"] == STEPS
    manifest = json.loads(sorted((wd / "runs").glob("*/manifest.json"))[-1].read_text())
    assert {"export", "train", "evaluate"} <= set(manifest["stages"])
    card = (wd / "exports/demo-paraphrases/0.1.0/README.md").read_text()
    assert f"- made by recipe `demo` (hash `{manifest['recipe_hash']}`, run `{manifest['run_id']}`)" in card
    # the run ends with the evaluation table
    tail = stdout[stdout.index("validation loss"):]
    assert "student - teacher" in tail and "BLEU (reference)" in tail and "copies of the source" in tail


def test_evaluate_prints_the_table_from_the_demo_adapter(demo_run):
    wd, _ = demo_run
    adapter = wd / "students" / "demo-paraphrases"  # a folder of versions: the newest is used
    proc = cli("evaluate", "--adapter", str(adapter), "--limit", "3", "--num-return", "1", "--max-new-tokens", "24",
               check=True)
    assert "cosine (source)" in proc.stdout and "TED-F" in proc.stdout
    res = json.loads((adapter / "0.1.0" / "eval-test.json").read_text())
    assert res["sources"] == 3 and res["metrics"]["self_bleu"]["student"] is None  # one output: no self-BLEU
    assert all(len(s["student"]) == 1 and s["student"][0] for s in res["samples"])


def test_self_distill_recipe_runs_round_two_from_round_one(demo_run, tmp_path):
    wd, _ = demo_run
    data = yaml.safe_load((REPO / "pipelines/recipes/self-distill.yaml").read_text())
    assert data["teacher"]["adapter"] == "work/demo/students/demo-paraphrases"  # round 1 = the demo's student
    data["teacher"].update(adapter=str(wd / "students" / "demo-paraphrases"), limit=4, n=2, max_new_tokens=32)
    data.update(workdir=str(tmp_path / "round2"), sources=[{"path": str(REPO / "pipelines/data/demo_sources.txt")}])
    for key in ("filter", "train", "evaluate", "export"):  # round 2's teacher; curation and training: above
        data.pop(key)
    recipe = tmp_path / "self-distill.yaml"
    recipe.write_text(yaml.safe_dump(data))
    cli("run", str(recipe), check=True, timeout=900)
    out = cli("sql", "-w", str(tmp_path / "round2"), "select distinct model, prompt_name, count(*) over () as n "
              "from generations", "--format", "json", check=True)
    [row] = json.loads(out.stdout)
    assert "+lora:" in row["model"] and row["prompt_name"] == "student" and row["n"] == 8
