import json

import pytest

from pipelines.recipes_io import load_recipe, parse_recipe
from schemas.errors import RecipeError
from schemas.recipe import SCHEMA_PATH, json_schema
from schemas.tables import TABLES, conform, empty_frame


def test_checked_in_json_schema_is_current():
    assert SCHEMA_PATH.read_text() == json_schema(), "run `make schema` (python -m schemas.recipe)"
    assert json.loads(SCHEMA_PATH.read_text())["title"] == "Recipe"


def test_every_table_has_an_empty_frame_with_its_dtypes():
    for name, schema in TABLES.items():
        df = empty_frame(name)
        assert df.height == 0 and list(df.schema) == list(schema)


def test_conform_rejects_missing_columns():
    with pytest.raises(ValueError, match="lacks columns"):
        conform(empty_frame("sources").drop("text"), "sources")


def test_shipped_demo_recipe_is_valid_and_resolves_sources():
    recipe, base = load_recipe("demo")
    assert recipe.name == "demo" and recipe.export and recipe.export.name
    assert recipe.sources[0].path.endswith("demo_sources.txt")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"name": "x", "teacher": {"n": 0}}, "field teacher.n"),
        ({"name": "x", "techer": {}}, "field techer: unknown field"),
        ({"name": "x", "export": {"name": "a/b"}}, "field export.name"),
        ({"name": "x", "export": {"name": "a", "version": "1.0"}}, "X.Y.Z"),
        ({"name": "x", "export": {"name": "a", "splits": {"train": 0.5, "test": 0.5}}}, "exactly the keys"),
        (["not", "a", "mapping"], "must be a YAML mapping"),
    ],
)
def test_recipe_errors_name_the_field(data, needle):
    with pytest.raises(RecipeError, match=needle.replace(".", r"\.")):
        parse_recipe(data, "r.yaml")


def test_recipe_mistakes_through_the_cli_are_one_line(tmp_path):
    from tests.conftest import cli, error_line

    proc = cli("run", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 4 and "no such recipe file" in error_line(proc)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources: [a.txt]\nteacher: {temperature: hot}\n")
    proc = cli("run", str(bad))
    assert proc.returncode == 4 and "field teacher.temperature" in error_line(proc)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nsources: [a.txt\n")
    proc = cli("run", str(broken))
    assert proc.returncode == 4 and "invalid YAML" in error_line(proc)
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"name: x\nworkdir: {tmp_path / 'wd'}\nsources: [missing.txt]\n")
    proc = cli("run", str(ok))
    assert proc.returncode == 3 and "missing.txt: no such file" in error_line(proc)


def test_bad_cli_options_are_one_line(tmp_path):
    from tests.conftest import cli, error_line

    proc = cli("export", "-w", str(tmp_path), "--name", "x", "--version", "1.0")
    assert proc.returncode == 4 and "field version: must look like X.Y.Z" in error_line(proc)
    proc = cli("generate", "-w", str(tmp_path), "--n", "0")
    assert proc.returncode == 4 and "field n" in error_line(proc)
    proc = cli("sql", "-w", str(tmp_path / "none"), "select 1")
    assert proc.returncode == 5 and "not a paradistill workdir" in error_line(proc)
