"""Issue 12: a mistyped --dataset path fails at once, the card says what made a workdir, a recipe's workdir is
read from its folder (old workdirs still found), shipped recipes by package path, and the teacher's self-BLEU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from pipelines import runner
from pipelines.recipes_io import RECIPES_DIR, load_recipe
from pipelines.steps.export import made_by
from pipelines.store import Workdir
from schemas.errors import InputError, RecipeError
from tests.conftest import REPO, cli, error_line, fake_generations
from training.data import load_splits, missing_path_reason

# --- train --dataset: a path-like value that does not exist fails before any Hub call ---


@pytest.mark.parametrize(("value", "reason"), [
    ("work/nothing", "no such folder"),          # OWNER/NAME-shaped, but work/ is a local folder
    ("./nothing", "no such folder"),
    ("../nothing", "no such folder"),
    ("/nowhere/at/all", "no such folder"),
    ("~/surely-not-here-paradistill", "no such folder"),
    ("a/b/c", "no such folder"),                 # a Hub id has one slash at most
    ("owner/name/", "no such folder"),
    ("pairs.parquet", "no such file"),
    ("me/pairs.JSONL", "no such file"),
    ("me/qs-para", None),                        # a Hub id: goes to the Hub
    ("squad", None),
    ("org/name-v1.5", None),                     # dots in a Hub name are no file suffix
    ("hf:work/nothing", None),                   # hf: always means the Hub
    ("work", None),                              # exists
])
def test_missing_path_reason_decides_offline(tmp_path, monkeypatch, value, reason):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    assert missing_path_reason(value) == reason


def test_a_mistyped_path_never_reaches_the_hub(tmp_path, monkeypatch):
    import datasets

    def hub(*a, **k):
        raise AssertionError("load_dataset was called")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.setattr(datasets, "load_dataset", hub)
    with pytest.raises(InputError, match=r"^dataset work/nothing: no such folder \(a Hub id is OWNER/NAME"):
        load_splits("work/nothing", ["train"])
    with pytest.raises(InputError, match="load_dataset was called"):  # a Hub id still goes to the Hub
        load_splits("me/qs-para", ["train"])


def test_train_with_a_mistyped_dataset_path_is_one_line_exit_3(tmp_path):
    (tmp_path / "work").mkdir()
    proc = cli("train", "--dataset", "work/nothing", cwd=tmp_path)
    assert proc.returncode == 3
    assert error_line(proc) == ("error: dataset work/nothing: no such folder (a Hub id is OWNER/NAME; "
                                "write hf:work/nothing for the Hub)")
    proc = cli("train", "--dataset", "./exports/demo/0.1.0", cwd=tmp_path)
    assert proc.returncode == 3
    assert error_line(proc) == "error: dataset ./exports/demo/0.1.0: no such folder (a Hub id is OWNER/NAME)"


# --- the card's lineage: what made the workdir, never None ---


def _lineage_lines(card: str) -> list[str]:
    section = card[card.index("## Lineage"):card.index("| stage | rows |")]
    return [ln for ln in section.splitlines() if ln.startswith("- ") and "with prompt" not in ln]


def test_card_of_a_workdir_built_stage_by_stage_says_so(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("".join(f"Sentence number {i} is here.\n" for i in range(12)))
    wd = tmp_path / "wd"
    cli("ingest", str(src), "-w", str(wd), check=True)
    with Workdir(wd) as store:
        fake_generations(store)
    cli("candidates", "-w", str(wd), check=True)
    cli("export", "-w", str(wd), "--name", "para", check=True)
    card = (wd / "exports/para/0.1.0/README.md").read_text()
    runs = {json.loads(p.read_text())["command"]: json.loads(p.read_text())
            for p in sorted((wd / "runs").glob("*/manifest.json"))}
    [line] = _lineage_lines(card)
    assert line == (f"- built stage by stage with paradistill {runs['ingest']['package_version']}: "
                    f"`ingest` (run `{runs['ingest']['run_id']}`), `candidates` (run `{runs['candidates']['run_id']}`)")
    assert "None" not in card


def test_card_of_an_import_recipe_names_the_recipe(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("source,paraphrase\n" + "".join(f"Line {i} here.,Here is line {i}.\n" for i in range(12)))
    recipe = tmp_path / "imp.yaml"
    recipe.write_text(yaml.safe_dump({"name": "imp", "teacher": {"kind": "import", "path": "pairs.csv"},
                                      "export": {"name": "imp-para"}}))
    cli("run", str(recipe), cwd=tmp_path, check=True)
    wd = tmp_path / "work" / "imp"
    [manifest] = [json.loads(p.read_text()) for p in (wd / "runs").glob("*/manifest.json")]
    card = (wd / "exports/imp-para/0.1.0/README.md").read_text()
    [line] = _lineage_lines(card)
    assert line == (f"- made by recipe `imp` (hash `{manifest['recipe_hash']}`, run `{manifest['run_id']}`) "
                    f"with paradistill {manifest['package_version']}")
    assert "None" not in card


def test_made_by_lists_a_recipe_then_stages_and_never_prints_none():
    runs = [{"run_id": "R1", "command": "run demo", "recipe": "demo", "recipe_hash": "h1", "package_version": "1.0",
             "status": "interrupted"},
            {"run_id": "R2", "command": "filter", "recipe": "diverse", "recipe_hash": "h2", "package_version": "1.1",
             "status": "complete"},
            {"run_id": "R3", "command": "candidates", "recipe": None, "recipe_hash": None, "package_version": None,
             "status": "complete"}]
    assert made_by({"runs": runs}) == (
        "- made by paradistill 1.0, 1.1, in order: recipe `demo` (hash `h1`, run `R1`, interrupted); "
        "`filter` with recipe `diverse` (hash `h2`, run `R2`); `candidates` (run `R3`)")
    assert "None" not in made_by({"runs": [], "recipe_hash": None, "run_id": None, "package_version": None})
    old = {"recipe_hash": "h", "run_id": "R", "package_version": "0.1"}  # paradistill.json before `runs`
    assert made_by(old) == "- made by a recipe (hash `h`, run `R`) with paradistill 0.1"


# --- a recipe's workdir: from the recipe's folder; an older cwd workdir still found; shipped recipes ---


def _import_recipe(folder: Path, name: str, workdir: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.csv").write_text("source,paraphrase\n" + "".join(f"Line {i}.,Here is {i}.\n"
                                                                       for i in range(4)))
    data = {"name": name, "teacher": {"kind": "import", "path": "pairs.csv"}}
    if workdir is not None:
        data["workdir"] = workdir
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_written_workdir_is_read_from_the_recipe_folder(tmp_path):
    recipe = _import_recipe(tmp_path / "recipes", "r", "work/new")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli("run", "../recipes/r.yaml", cwd=elsewhere, check=True)
    assert (recipe.parent / "work/new/runs").is_dir() and not (elsewhere / "work").exists()
    assert str((recipe.parent / "work/new").resolve()) in proc.stdout and "note:" not in proc.stderr


def test_an_older_workdir_under_the_current_directory_is_used_with_a_note(tmp_path):
    _import_recipe(tmp_path / "recipes", "r", "work/old")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = tmp_path / "s.txt"
    src.write_text("One.\nTwo.\nThree.\n")
    cli("ingest", str(src), "-w", "work/old", cwd=elsewhere, check=True)  # made as an older version would
    proc = cli("sql", "-r", "../recipes/r.yaml", "select count(*) as n from sources", "--format", "json",
               cwd=elsewhere, check=True)
    assert json.loads(proc.stdout) == [{"n": 3}]
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: ../recipes/r.yaml: using the existing workdir work/old ")
    assert str((elsewhere / "work/old").resolve()) in notes[0] and not (tmp_path / "recipes/work").exists()


def test_no_workdir_means_work_name_in_the_current_directory(tmp_path, monkeypatch):
    recipe = _import_recipe(tmp_path / "recipes", "r", None)
    monkeypatch.chdir(tmp_path)
    assert load_recipe(str(recipe))[0].workdir == str(tmp_path.resolve() / "work" / "r")
    absolute = _import_recipe(tmp_path / "abs", "a", str(tmp_path / "wd-a"))
    assert load_recipe(str(absolute))[0].workdir == str(tmp_path / "wd-a")


def test_shipped_recipes_write_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # `make demo` writes work/demo in the repository root, as the README says
    assert load_recipe("pipelines/recipes/demo.yaml")[0].workdir == str(REPO / "work" / "demo")
    monkeypatch.chdir(tmp_path)
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        recipe, base = load_recipe(p.stem)
        assert recipe.workdir == str(tmp_path.resolve() / "work" / recipe.name) and base == RECIPES_DIR.resolve()


def test_a_shipped_recipe_by_package_path_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe, _ = load_recipe("pipelines/recipes/demo.yaml")
    assert recipe.name == "demo" and recipe.sources[0].path == str(RECIPES_DIR.parent / "data/demo_sources.txt")
    assert load_recipe("recipes/diverse.yaml")[0].name == "diverse"
    with pytest.raises(RecipeError, match=r"^pipelines/recipes/dmeo\.yaml: no such recipe file"):
        load_recipe("pipelines/recipes/dmeo.yaml")
    with pytest.raises(RecipeError, match=r"^other/demo\.yaml: no such recipe file"):
        load_recipe("other/demo.yaml")  # only the package path's own tail names a shipped recipe
    wd = tmp_path / "wd"
    (tmp_path / "s.txt").write_text("One.\n")
    runner.ingest([str(tmp_path / "s.txt")], wd, progress=False)
    proc = cli("sql", "-r", "pipelines/recipes/demo.yaml", "-w", str(wd), "select 1 as x", "--format", "json",
               cwd=tmp_path, check=True)
    assert json.loads(proc.stdout) == [{"x": 1}]
    proc = cli("sql", "-r", "pipelines/recipes/dmeo.yaml", "-w", str(wd), "select 1", cwd=tmp_path)
    assert proc.returncode == 4 and error_line(proc).startswith("error: pipelines/recipes/dmeo.yaml: no such recipe")


# --- evaluation: the teacher's self-BLEU is its leave-one-out BLEU against the references, by definition ---


def test_teacher_self_bleu_equals_its_reference_bleu_by_definition():
    from curation.metrics.syntax import load_spacy
    from training.evaluate import LABELS, evaluate_outputs, table_rows

    split = pl.DataFrame({
        "source_id": ["a", "b", "b", "c", "c", "c"],
        "source": ["The cat sat.", "It rained all day.", "It rained all day.", "We left early.", "We left early.",
                   "We left early."],
        "paraphrase": ["A cat was sitting.", "Rain fell the whole day.", "All day long it rained.",
                       "We departed early.", "Early on, we left.", "We went away early."],
    })
    student = [["A cat sat down.", "The cat was seated."], ["It was raining all day.", "Rain all day."],
               ["We left early.", "Early we departed."]]
    metrics = evaluate_outputs(split, student, lambda texts: np.ones((len(texts), 4)) / 2, load_spacy(), 0.8)
    t, s = {m: v["teacher"] for m, v in metrics.items()}, {m: v["student"] for m, v in metrics.items()}
    # teacher: target j against the other targets of its source, both times (a lone target counts in neither)
    assert t["self_bleu"] == pytest.approx(t["bleu_ref"], abs=1e-9) and t["bleu_ref"] > 0
    # the student: its outputs against each other vs its first output against the targets: different things
    assert s["self_bleu"] != pytest.approx(s["bleu_ref"], abs=1e-3)
    # the table says so, rather than printing one number twice as if it were two findings
    assert LABELS["self_bleu"] == "self-BLEU (teacher: = its BLEU (reference))"
    assert LABELS["self_bleu"] in [row[0] for row in table_rows(metrics)]


def test_a_recipe_has_one_hash_wherever_it_is_run_from(tmp_path, monkeypatch):
    from pipelines.manifest import recipe_hash
    from pipelines.recipes_io import load_recipe

    hashes = set()
    for where in (tmp_path / "a", tmp_path / "b"):
        where.mkdir()
        monkeypatch.chdir(where)
        recipe = load_recipe("demo")[0]
        assert str(where) in recipe.workdir  # the workdir itself does follow the current directory
        hashes.add(recipe_hash(recipe.model_dump(mode="json")))
    assert len(hashes) == 1
