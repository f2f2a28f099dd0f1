"""Filter expressions are expressions over the score columns: a subquery or table function is refused, through
the CLI, with one recipe-error line, before Polars (whose SQL runs subqueries and read_csv while it parses) or
anything else evaluates it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from curation.filters import check_expression
from schemas.errors import RecipeError
from tests.conftest import cli, error_line

MARKER = "MARKER-7f3c-first-line-of-a-private-file"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, str]:
    """A cheap workdir with imported pairs (no teacher, no model), and what it answers before any bad recipe."""
    folder = tmp_path_factory.mktemp("guard")
    src = folder / "pairs.jsonl"
    src.write_text("".join(json.dumps({"s": f"Source sentence {i}.", "p": [f"Paraphrase {i}.", f"Another {i}."]})
                           + "\n" for i in range(3)))
    wd = folder / "wd"
    cli("ingest-pairs", str(src), "--source-column", "s", "--paraphrase-column", "p", "-w", str(wd), check=True)
    return wd, _answers(wd)


@pytest.fixture(scope="module")
def private_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("private") / "secret.csv"
    path.write_text(f"{MARKER},b\nroot:x:0:0,1\n")
    return path


def _answers(wd: Path) -> str:
    proc = cli("sql", "-w", str(wd), "SELECT request_id, source_id, items FROM generations ORDER BY request_id",
               "--format", "json", check=True)
    return proc.stdout


def _recipe(folder: Path, filter_cfg: dict) -> Path:
    path = folder / "guard.yaml"
    path.write_text(yaml.safe_dump({"name": "guard", "filter": filter_cfg}))
    return path


EVIL = [  # (where, expression, the word named, verbs)
    ("rule", "cosine > (SELECT 1)", "SELECT", ("filter", "curate")),
    ("rule", "source_id IN (SELECT column_1 FROM read_csv('{secret}'))", "SELECT", ("filter", "curate")),
    ("rule", "source_id IN (FROM read_csv('{secret}'))", "FROM", ("filter",)),
    ("rule", "EXISTS (select 1 from read_parquet('{secret}'))", "SELECT", ("filter",)),
    ("rule", "cosine IN (VALUES (1))", "VALUES", ("filter",)),
    ("top_k", "(SELECT max(column_1) FROM read_csv('{secret}'))", "SELECT", ("filter",)),
]


@pytest.mark.parametrize(("where", "expr", "word", "verbs"), EVIL)
def test_subqueries_and_table_functions_are_refused_before_evaluation(workdir, private_file, tmp_path, where,
                                                                      expr, word, verbs):
    wd, before = workdir
    expr = expr.format(secret=private_file)
    if where == "rule":
        cfg, what = {"rules": [{"name": "sneaky", "expr": expr}]}, "filter rule 'sneaky'"
    else:
        cfg, what = {"rules": [], "top_k": {"k": 1, "by": expr}}, "filter.top_k.by"
    for verb in verbs:
        proc = cli(verb, "-w", str(wd), "-r", str(_recipe(tmp_path, cfg)))
        assert proc.returncode == 4, proc.stderr
        line = error_line(proc)
        assert line.startswith(f"error: {what}: {expr!r} contains {word}")
        assert "not allowed; a filter expression uses only score columns" in line
        assert MARKER not in proc.stdout + proc.stderr  # the file was never read
    assert _answers(wd) == before


@pytest.mark.parametrize("expr", [
    "wpd + ld > 0.3", "cosine >= 0.8 AND NOT numbers_ok = false", "abs(wpd - ld) < 0.5 OR rouge_l IS NULL",
    "cosine IS DISTINCT FROM 0.5", "CASE WHEN cosine > 0.9 THEN wpd ELSE ld END > 0.1", "cosine IN (0.5, 0.6)",
    "cast(cosine AS double) BETWEEN 0.1 AND 0.9",
])
def test_ordinary_expressions_pass_the_guard(expr):
    check_expression(expr, "rule")


@pytest.mark.parametrize(("expr", "found"), [
    ("cosine, wpd", "more than one expression"),
    ("cosine > 0 ORDER BY 1", "a query clause"),
    ("cosine WHERE 1", "WHERE"),
    ("read_text('/etc/passwd') IS NULL", "the table function read_text()"),
    ("\"read_csv\"('/etc/passwd') IS NULL", "the table function read_csv()"),
])
def test_other_query_forms_are_refused(expr, found):
    with pytest.raises(RecipeError, match="not allowed") as e:
        check_expression(expr, "rule")
    assert found in str(e.value)


@pytest.mark.parametrize(("expr", "message"), [
    ("cosine > 'high'", "cannot evaluate \"cosine > 'high'\" over the score columns (cannot compare string"),
    ("wpd + ld", "'wpd + ld' gives Float64, not true/false; compare it, e.g. 'wpd + ld > 0.5'"),
])
def test_mistyped_rules_fail_before_any_model_loads(workdir, tmp_path, expr, message):
    wd, before = workdir
    proc = cli("curate", "-w", str(wd), "-r", str(_recipe(tmp_path, {"rules": [{"name": "typo", "expr": expr}]})))
    assert proc.returncode == 4, proc.stderr
    assert error_line(proc).startswith(f"error: filter rule 'typo': {message}")
    assert "embed:" not in proc.stdout
    assert _answers(wd) == before
