"""`paradistill` command line: one thin Typer verb per stage over the functions in `pipelines.runner`.

Exit codes: 0 ok, 2 bad usage, 3 input error, 4 recipe error, 5 workdir state, 6 SQL refused or failed,
130 interrupted (rerun resumes), 1 an unexpected internal error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Build, curate, query and export paraphrase-distillation datasets.")
out = Console(soft_wrap=True)
err = Console(stderr=True)

WorkdirOpt = Annotated[Path | None, typer.Option("--workdir", "-w", envvar="PARADISTILL_WORKDIR",
                                                 help="Workdir (the store). Default: the recipe's.")]
RecipeOpt = Annotated[str | None, typer.Option("--recipe", "-r", help="Recipe YAML path or shipped name.")]


def _recipe_and_workdir(recipe: str | None, workdir: Path | None):
    from pipelines.recipes_io import load_recipe

    r = load_recipe(recipe)[0] if recipe else None
    wd = workdir or (Path(r.workdir) if r else None)
    if wd is None:
        raise UserError("no workdir: pass --workdir DIR (or --recipe, whose workdir is used)")
    return r, wd


def _print_frame(df, fmt: str) -> None:
    if fmt == "csv":
        sys.stdout.write(df.write_csv())
    elif fmt == "json":
        sys.stdout.write(json.dumps(df.to_dicts(), ensure_ascii=False, default=str, indent=1) + "\n")
    else:
        table = Table(show_lines=False)
        for c in df.columns:
            table.add_column(c, overflow="fold")
        for row in df.iter_rows():
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        out.print(table)
        out.print(f"[dim]{df.height} row(s)[/dim]")


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files (.txt .jsonl .csv .tsv .parquet), dataset folders, "
                                                    "or hf:OWNER/NAME.")],
    workdir: WorkdirOpt = None,
    text_column: Annotated[str, typer.Option(help="Column/field holding the text.")] = "text",
    split: Annotated[str, typer.Option(help="Split of a Hugging Face dataset.")] = "train",
    max_chars: Annotated[int, typer.Option(help="Longer texts are quarantined.")] = 2000,
) -> None:
    """Ingest source texts: normalise, id, collapse duplicates, quarantine bad rows.

    Example: paradistill ingest data/questions.csv --text-column question -w work/qs
    """
    from pipelines import runner

    _, wd = _recipe_and_workdir(None, workdir)
    s = runner.ingest(paths, wd, text_column, split, max_chars)
    out.print(f"read {s['read']}, kept {s['kept']}, duplicates {s['duplicates']}, quarantined "
              f"{s['quarantined']} -> {Path(wd).resolve()}")
    for p in s["inputs"]:
        if p.get("skipped"):
            out.print(f"[dim]{p['input']}: already ingested with the same content and options; skipped[/dim]")


@app.command()
def generate(
    workdir: WorkdirOpt = None,
    recipe: RecipeOpt = None,
    model: Annotated[str | None, typer.Option(help="Causal LM path or Hub id (default: embedded SmolLM2).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt template name, NAME@VERSION or YAML path.")] = None,
    n: Annotated[int | None, typer.Option(help="Paraphrases per source.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N sources.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Requests per batch.")] = None,
) -> None:
    """Ask the teacher for paraphrases of every stored source (resumable; nothing is generated twice).

    Example: paradistill generate -w work/qs --n 3 --limit 20
    """
    from pipelines import runner
    from pipelines.recipes_io import validated
    from schemas.recipe import TeacherConfig

    r, wd = _recipe_and_workdir(recipe, workdir)
    overrides = {k: v for k, v in dict(model=model, prompt=prompt, n=n, limit=limit, batch_size=batch_size).items()
                 if v is not None}
    cfg = validated(TeacherConfig, {**(r.teacher.model_dump() if r else {}), **overrides}, "generate options")
    s = runner.generate(wd, cfg)
    out.print(f"{s['generated']} request(s) generated ({s['already_done']} already stored), "
              f"{s['parse_errors']} without a parsable paraphrase, {s['completion_tokens']} completion tokens")


@app.command()
def candidates(workdir: WorkdirOpt = None, recipe: RecipeOpt = None) -> None:
    """Turn stored generations into (source, paraphrase) candidate pairs.

    Example: paradistill candidates -w work/qs
    """
    from pipelines import runner

    _, wd = _recipe_and_workdir(recipe, workdir)
    s = runner.candidates(wd)
    out.print(f"{s['pairs']} pair(s) from {s['generations_in']} generation(s): {s['source_copies']} copy their "
              f"source, {s['repeats']} repeat an earlier pair")


@app.command()
def export(
    name: Annotated[str, typer.Option("--name", help="Dataset name: exports/NAME/VERSION/.")],
    version: Annotated[str | None, typer.Option(help="X.Y.Z (default: bump the latest patch).")] = None,
    workdir: WorkdirOpt = None,
    recipe: RecipeOpt = None,
) -> None:
    """Write a versioned, Hub-ready dataset folder (parquet splits + dataset card).

    Example: paradistill export -w work/qs --name qs-para --version 1.0.0
    """
    from pipelines import runner

    r, wd = _recipe_and_workdir(recipe, workdir)
    s = runner.export(wd, name, version, r.export if r and r.export else None)
    out.print(f"exported {s['pairs']} pair(s) as version {s['version']}: {s['path']}")
    out.print(f"load it with: datasets.load_dataset({s['path']!r})")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SELECT statement over sources, generations, candidates, ...")],
    workdir: WorkdirOpt = None,
    recipe: RecipeOpt = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
) -> None:
    """Query the workdir with DuckDB (read-only).

    Example: paradistill sql -w work/demo "SELECT finish_reason, count(*) FROM generations GROUP BY 1"
    """
    from pipelines.sql import query as run_query

    if format not in ("table", "csv", "json"):
        raise typer.BadParameter("must be table, csv or json", param_hint="--format")
    _, wd = _recipe_and_workdir(recipe, workdir)
    _print_frame(run_query(wd, query), format)


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML path, or a shipped name such as demo.")],
    workdir: WorkdirOpt = None,
) -> None:
    """Run a recipe end to end: ingest -> generate -> candidates -> export. Rerun to resume.

    Example: paradistill run pipelines/recipes/demo.yaml
    """
    from pipelines import runner
    from pipelines.sql import query as run_query

    res = runner.run(recipe, workdir)
    st = res["stages"]
    out.print(f"\n[bold]workdir[/bold] {res['workdir']}")
    out.print(f"sources kept {st['ingest']['kept']} (quarantined {st['ingest']['quarantined']}, duplicates "
              f"{st['ingest']['duplicates']}); requests {st['generate']['planned']} "
              f"({st['generate']['generated']} new); candidates +{st['candidates']['pairs']}")
    if "export" in res:
        e = res["export"]
        note = " (unchanged, not re-exported)" if e.get("skipped") else ""
        out.print(f"[bold]dataset[/bold] {e['path']}  version {e['version']}{note}")
        out.print(f"  python -c \"import datasets; print(datasets.load_dataset('{e['path']}'))\"")
    sample = run_query(res["workdir"], "SELECT s.text AS source, c.paraphrase FROM candidates c JOIN sources s "
                                       "USING (source_id) WHERE NOT c.is_source_copy AND NOT c.is_repeat "
                                       "ORDER BY c.pair_id LIMIT 3")
    if sample.height:
        out.print("[bold]sample pairs[/bold]")
        for src, para in sample.iter_rows():
            out.print(f"  {src}\n    -> {para}")
    out.print("[bold]try SQL[/bold]")
    out.print(f"  paradistill sql -w {res['workdir']} \"SELECT finish_reason, count(*) AS n, "
              "avg(completion_tokens) AS tokens FROM generations GROUP BY 1\"")


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and a non-zero exit."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # our own bars show progress; theirs are noise
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except UserError as e:
        err.print(f"[red]error:[/red] {e}", soft_wrap=True, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
