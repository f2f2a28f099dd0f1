"""`paradistill` command line: one thin Typer verb per stage over the functions in `pipelines.runner`.

Exit codes: 0 ok, 2 bad usage, 3 input error, 4 recipe error, 5 workdir state, 6 SQL refused or failed,
7 teacher budget reached, 8 the Hub refused or failed, 9 teacher requests still failed (rerun retries them),
130 interrupted (rerun resumes), 1 an unexpected internal error.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from schemas.errors import RecipeError, StateError, UserError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Build, curate, query and export paraphrase-distillation datasets.")
# User data (file names, texts, column names, SQL values) is printed as given: never read as markup or emoji.
out = Console(soft_wrap=True, markup=False, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


def _label(label: str, rest: str = "") -> Text:
    """A bold label followed by plain (user) text."""
    return Text.assemble((label, "bold"), rest)

WorkdirOpt = Annotated[Path | None, typer.Option("--workdir", "-w", envvar="PARADISTILL_WORKDIR",
                                                 help="Workdir (the store). Default: the recipe's.")]
INTERRUPTED = 130  # Ctrl-C: the exit code shells use for SIGINT
RecipeOpt = Annotated[str | None, typer.Option("--recipe", "-r", help="Recipe YAML path or shipped name.")]
PartitionOpt = Annotated[int | None, typer.Option(
    "--partition-size", help="Pairs per partition of the scoring (recipe execution.partition_size, default 50000): "
    "the memory of the per-partition work follows it.")]
WorkersOpt = Annotated[str | None, typer.Option(
    "--workers", help="Worker processes for parsing and scoring: auto (one per core) or a number; 1 = all in this "
    "process (recipe execution.workers).")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="Where the stages run: local (this process and a process pool) or ray (Ray Data actor pools "
    "on a Ray cluster; pip install 'paradistill\\[ray]'); recipe execution.backend.")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="With --backend ray: the cluster to join (auto, or ray://HOST:PORT); without it a local "
    "Ray instance is started (recipe execution.ray_address).")]


def _recipe_and_workdir(recipe: str | None, workdir: Path | None):
    from pipelines.recipes_io import load_recipe

    r = load_recipe(recipe)[0] if recipe else None
    wd = workdir or (Path(r.workdir) if r else None)
    if wd is None:
        raise UserError("no workdir: pass --workdir DIR (or --recipe, whose workdir is used)")
    return r, wd


def _print_frame(df, fmt: str) -> None:
    if fmt == "csv":
        from pipelines.sql import frame_to_csv

        sys.stdout.write(frame_to_csv(df))
    elif fmt == "json":
        sys.stdout.write(json.dumps(df.to_dicts(), ensure_ascii=False, default=str, indent=1) + "\n")
    else:
        table = Table(show_lines=False)
        for c in df.columns:
            table.add_column(c, overflow="fold")
        for row in df.iter_rows():
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        out.print(table)
        out.print(f"{df.height} row(s)", style="dim")


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
    if s["kept"] == 0 and s["quarantined"]:
        out.print(f"nothing kept: see why with  paradistill sql -w {shlex.quote(str(wd))} "
                  "\"SELECT origin, origin_row, reason FROM quarantine\"", style="yellow")
    for p in s["inputs"]:
        if p.get("skipped"):
            out.print(f"{p['input']}: already ingested with the same content and options; skipped", style="dim")


@app.command()
def generate(
    workdir: WorkdirOpt = None,
    recipe: RecipeOpt = None,
    model: Annotated[str | None, typer.Option(help="Causal LM path or Hub id (default: embedded SmolLM2).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt template name, NAME@VERSION or YAML path.")] = None,
    n: Annotated[int | None, typer.Option(help="Paraphrases per source.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N sources.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Requests per batch (local teacher).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print estimated requests, tokens and dollars; "
                                                            "send nothing.")] = False,
    max_cost: Annotated[float | None, typer.Option(help="Stop cleanly at this many USD spent (resumable).")] = None,
) -> None:
    """Ask the teacher for paraphrases of every stored source (resumable; nothing is paid for twice).

    Example: paradistill generate -r my-openai.yaml --dry-run   (then: --max-cost 5)
    """
    from pipelines import runner

    r, wd = _recipe_and_workdir(recipe, workdir)
    overrides = dict(model=model, prompt=prompt, n=n, limit=limit, batch_size=batch_size, max_cost=max_cost)
    cfg = _teacher_config(r, overrides)
    s = runner.generate(wd, cfg, dry_run=dry_run)
    _print_teacher(s)


def _teacher_config(r, overrides: dict):
    """The recipe's teacher (default: local) with the CLI's non-empty overrides, validated as one config."""
    from pydantic import TypeAdapter

    from pipelines.recipes_io import validated_with
    from schemas.recipe import Teacher

    base = r.teacher.model_dump() if r else {}
    return validated_with(TypeAdapter(Teacher), {**base, **{k: v for k, v in overrides.items() if v is not None}},
                          "generate options")


def _print_teacher(s: dict) -> None:
    est = s.get("estimate")
    if est:
        cost = ("unknown (no price for this model)" if est["cost_usd_est"] is None
                else f"${est['cost_usd_est']:,.4f}")
        out.print(f"requests planned {s['planned']}, already stored {s['already_done']}, to send {est['requests']}; "
                  f"prompt tokens {est['prompt_tokens']:,} (tiktoken), completion tokens "
                  f"~{est['completion_tokens_est']:,}, cost ~{cost}")
    if s.get("dry_run"):
        out.print("dry run: nothing was sent", style="dim")
        return
    if "generated" in s:
        line = f"{s['generated']} response(s) stored"
        if "failed" in s:
            line += f", {s['failed']} failed (see request_failures)"
        if "parse_errors" in s:
            line += f", {s['parse_errors']} without a parsable paraphrase"
        if s.get("cost_usd") is not None and "cost_usd" in s:
            line += f", ${s['cost_usd']:,.4f} this run"
        out.print(line)
    _print_fallbacks(s)
    if s.get("pending_batches"):
        out.print(f"{s['pending_batches']} batch(es) still running; rerun the same command to collect them")


def _print_fallbacks(s: dict) -> None:
    """What the teacher changed on its own because the server is not OpenAI (also in the run manifest)."""
    if s.get("structured_output_fallback"):
        out.print(f"note: the server refused response_format, so this run used the list parser "
                  f"({one_line(s['structured_output_fallback'], 200)})", style="yellow")
    if s.get("max_tokens_fallback"):
        out.print(f"note: the server refused max_tokens, so this run sent only max_completion_tokens "
                  f"({one_line(s['max_tokens_fallback'], 200)})", style="yellow")
    if s.get("sampling_fallback"):
        out.print(f"note: the server returned fewer choices than n, so this run sent n requests of one "
                  f"({one_line(s['sampling_fallback'], 200)})", style="yellow")


@app.command()
def candidates(workdir: WorkdirOpt = None, recipe: RecipeOpt = None) -> None:
    """Turn stored generations into (source, paraphrase) candidate pairs.

    Example: paradistill candidates -w work/qs
    """
    from pipelines import runner

    _, wd = _recipe_and_workdir(recipe, workdir)
    s = runner.candidates(wd)
    if s["generations_in"] == 0:
        from pipelines.store import Workdir

        w = Workdir(wd)
        if w.count("generations") == 0:
            raise StateError(f"{wd}: no generations yet, so no candidates to build; run `paradistill generate -w "
                             f"{shlex.quote(str(wd))}` (or ingest-pairs) first")
        out.print(f"candidates are up to date: {w.count('candidates')} pair(s) from {w.count('generations')} "
                  "generation(s); no new generations since the last build")
        return
    out.print(f"{s['pairs']} new pair(s) from {s['generations_in']} new generation(s): {s['source_copies']} copy "
              f"their source, {s['repeats']} repeat an earlier pair")


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


@app.command("ingest-pairs")
def ingest_pairs(
    path: Annotated[str, typer.Argument(help="Pairs file (.jsonl .csv .tsv .parquet), dataset folder, or "
                                             "hf:OWNER/NAME.")],
    workdir: WorkdirOpt = None,
    source_column: Annotated[str, typer.Option(help="Column holding the source text.")] = "source",
    paraphrase_column: Annotated[str, typer.Option(help="Column holding a paraphrase or a list of them.")] = (
        "paraphrase"),
    split: Annotated[str, typer.Option(help="Split of a Hugging Face dataset.")] = "train",
    teacher: Annotated[str, typer.Option(help="Name recorded as the teacher of these pairs.")] = "imported",
    limit: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
    max_chars: Annotated[int, typer.Option(help="Longer sources are quarantined.")] = 2000,
) -> None:
    """Import a teacher corpus made elsewhere into sources/generations/candidates.

    Example: paradistill ingest-pairs chatgpt.csv --source-column text --paraphrase-column paraphrases -w work/cg
    """
    from pipelines import runner

    _, wd = _recipe_and_workdir(None, workdir)
    s = runner.ingest_pairs(path, wd, source_column, paraphrase_column, split, teacher, limit, max_chars)
    note = " (already imported; nothing new)" if s.get("skipped") else ""
    out.print(f"rows {s['rows']}: {s['generations']} imported with {s['items']} paraphrase(s), {s['quarantined']} "
              f"quarantined; {s['sources_new']} new source(s); candidates +{s['candidates']['pairs']}{note}")


labels_app = typer.Typer(no_args_is_help=True, help="Human labels of pairs, for the calibrated quality score.")
app.add_typer(labels_app, name="labels")


@labels_app.command("import")
def labels_import(
    path: Annotated[str, typer.Argument(help="Label file (.csv .tsv .jsonl .json .parquet): a pair and its label "
                                             "per row.")],
    workdir: WorkdirOpt = None,
    recipe: RecipeOpt = None,
    source_column: Annotated[str, typer.Option(help="Column holding the source text.")] = "source",
    paraphrase_column: Annotated[str, typer.Option(help="Column holding the paraphrase.")] = "paraphrase",
    label_column: Annotated[str, typer.Option(help="Column holding the label: true/false, yes/no, 1/0 or "
                                                   "paraphrase/not.")] = "label",
    rewrite_column: Annotated[str | None, typer.Option(help="Optional column: a real rewrite, not a copy (same "
                                                            "values).")] = None,
    max_chars: Annotated[int, typer.Option(help="Longer texts are quarantined.")] = 2000,
) -> None:
    """Import human labels: does each paraphrase keep its source's meaning? Pairs of the workdir and outside pairs
    both calibrate the quality score; outside pairs are never exported.

    Example: paradistill labels import my-labels.csv -w work/demo --label-column is_paraphrase
    """
    from pipelines import runner
    from pipelines.recipes_io import validated
    from schemas.recipe import LabelFileSpec

    _, wd = _recipe_and_workdir(recipe, workdir)
    spec = validated(LabelFileSpec, {"path": path, "source_column": source_column,
                                     "paraphrase_column": paraphrase_column, "label_column": label_column,
                                     "rewrite_column": rewrite_column}, "labels import options")
    s = runner.import_label_files(wd, [spec], max_chars)["files"][0]
    note = " (already imported; nothing new)" if s.get("skipped") else ""
    out.print(f"rows {s['rows']}: {s['labels']} label(s) ({s['positive']} keep the meaning; {s['in_corpus']} pairs "
              f"of the workdir, {s['outside']} outside), {s['quarantined']} quarantined (see the quarantine "
              f"table){note}")


@app.command()
def calibrate(workdir: WorkdirOpt = None, recipe: RecipeOpt = None) -> None:
    """Fit the quality score to the labels (logistic regression over the score columns, cross-validated) and
    store it as calibrations/vN/calibration.json; without -r, with the current scores' own settings.

    Example: paradistill calibrate -w work/demo   (then: score.scorers += [quality] and a rule on quality)
    """
    from pipelines import runner

    r, wd = _recipe_and_workdir(recipe, workdir)
    cal = runner.calibrate(wd, r)
    note = " (unchanged labels and scores: reused)" if cal.get("reused") else ""
    out.print(f"calibration v{cal['version']} ({cal['path']}){note}: {cal['summary']}")
    table = Table("feature", "coefficient (standardised)", "mean", "scale")
    for f, c, m, sc in zip(cal["features"], cal["coef"], cal["mean"], cal["scale"], strict=True):
        table.add_row(f, f"{c:+.3f}", f"{m:.4g}", f"{sc:.4g}")
    out.print(table)
    from curation.calibration import threshold_for

    for p in (0.8, 0.9, 0.95):
        try:
            t = threshold_for(cal, p)
            out.print(f"precision >= {p:g}: quality >= {t['threshold']:.4f}, cross-validated recall {t['recall']:.3f}")
        except RecipeError:
            out.print(f"precision >= {p:g}: not reached in cross-validation")


def _with_execution(r, partition_size: int | None, workers: str | None, backend: str | None = None,
                    ray_address: str | None = None):
    """The recipe (or the defaults) with --partition-size / --workers / --backend / --ray-address applied,
    validated as the recipe would be."""
    from pipelines.recipes_io import validated
    from schemas.recipe import ExecutionConfig, Recipe

    r = r or Recipe(name="adhoc")
    given = {k: v for k, v in (("partition_size", partition_size), ("workers", workers), ("backend", backend),
                               ("ray_address", ray_address)) if v is not None}
    if ray_address is not None and backend is None:
        given["backend"] = "ray"  # an address means Ray
    if given:
        if "workers" in given and given["workers"] != "auto":
            if not given["workers"].strip().isdigit():
                raise RecipeError(f"--workers {given['workers']!r}: give auto or a number of processes (1 = none)")
            given["workers"] = int(given["workers"])
        r.execution = validated(ExecutionConfig, {**r.execution.model_dump(), **given}, "command-line options")
    return r


def _curate_verb(upto: str, workdir: Path | None, recipe: str | None, partition_size: int | None = None,
                 workers: str | None = None, backend: str | None = None, ray_address: str | None = None) -> dict:
    from pipelines import runner

    r, wd = _recipe_and_workdir(recipe, workdir)
    res = runner.curate(wd, _with_execution(r, partition_size, workers, backend, ray_address), upto)
    _print_curation(res)
    return res


def _print_curation(res: dict) -> None:
    if "embed" in res:
        e = res["embed"]
        out.print(f"embed: {e['texts']} text(s), {e['embedded']} new, {e['cached']} cached ({e['model_id']})")
    if "dedup" in res:
        d = res["dedup"]
        removed = ", ".join(f"{k} {v}" for k, v in d.get("removed", {}).items()) or "none"
        out.print(f"dedup: removed {removed}" + (f"; index {d['index']}" if d.get("index") else ""))
    if "score" in res:
        out.print(f"score: {res['score']['pairs']} pair(s) x {', '.join(res['score']['scorers'])}")
    if "filter" in res:
        f = res["filter"]
        table = Table(title=f"funnel: kept {f['kept']} of {f['pairs']} pair(s)")
        for c in ("rule", "in", "dropped", "out"):
            table.add_column(c, justify="left" if c == "rule" else "right")
        for row in f["funnel"]:
            table.add_row(row["rule"], str(row["pairs_in"]), str(row["dropped"]), str(row["pairs_out"]))
        out.print(table)
    if "report" in res:
        out.print(_label("report", f" {res['report']['html']}"))


@app.command()
def embed(workdir: WorkdirOpt = None, recipe: RecipeOpt = None) -> None:
    """Embed every unique source and paraphrase once per model (cached in the embeddings table).

    Example: paradistill embed -w work/demo -r demo
    """
    _curate_verb("embed", workdir, recipe)


@app.command()
def dedup(workdir: WorkdirOpt = None, recipe: RecipeOpt = None) -> None:
    """Exact, FAISS-semantic and NLI-graph dedup (embeds first if needed); see the dedup_links table.

    Example: paradistill dedup -w work/demo -r demo
    """
    _curate_verb("dedup", workdir, recipe)


@app.command()
def score(workdir: WorkdirOpt = None, recipe: RecipeOpt = None, partition_size: PartitionOpt = None,
          workers: WorkersOpt = None, backend: BackendOpt = None, ray_address: RayAddressOpt = None) -> None:
    """Score every pair with the recipe's scorers (runs embed and dedup first if needed).

    Example: paradistill score -w work/demo -r impossible
    """
    _curate_verb("score", workdir, recipe, partition_size, workers, backend, ray_address)


@app.command("filter")
def filter_(workdir: WorkdirOpt = None, recipe: RecipeOpt = None, partition_size: PartitionOpt = None,
            workers: WorkersOpt = None, backend: BackendOpt = None, ray_address: RayAddressOpt = None) -> None:
    """Apply the recipe's rules: decisions (kept / dropped with reasons) and the funnel.

    Example: paradistill filter -w work/demo -r diverse
    """
    _curate_verb("filter", workdir, recipe, partition_size, workers, backend, ray_address)


@app.command()
def curate(workdir: WorkdirOpt = None, recipe: RecipeOpt = None, partition_size: PartitionOpt = None,
           workers: WorkersOpt = None, backend: BackendOpt = None, ray_address: RayAddressOpt = None) -> None:
    """embed -> dedup -> score -> filter -> report, each skipped when its inputs are unchanged.

    Example: paradistill curate -w work/demo -r demo
    """
    _curate_verb("report", workdir, recipe, partition_size, workers, backend, ray_address)


@app.command()
def report(
    workdir: WorkdirOpt = None,
    recipe: RecipeOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for report.html/.json "
                                                              "(default: WORKDIR/reports).")] = None,
    samples: Annotated[int, typer.Option(help="Sample kept and dropped pairs shown.")] = 8,
) -> None:
    """Write the quality report (one self-contained HTML file + JSON) of the current filter results.

    Example: paradistill report -w work/demo --out /tmp/demo-report
    """
    from pipelines import runner

    _, wd = _recipe_and_workdir(recipe, workdir)
    s = runner.report(wd, out_dir, samples)
    out.print(f"report: {s['html']}\n        {s['json']}")


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
def judge(
    workdir: WorkdirOpt = None,
    recipe: RecipeOpt = None,
    sample: Annotated[int | None, typer.Option(min=1, help="Pairs judged in all (default: judge.sample).")] = None,
    model: Annotated[str | None, typer.Option(help="Judge model (default: the recipe's judge.model).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print estimated requests, tokens and dollars; "
                                                            "send nothing.")] = False,
    max_cost: Annotated[float | None, typer.Option(help="Stop cleanly at this many USD spent (resumable).")] = None,
) -> None:
    """Have an LLM judge label a sample of pairs (stratified over a score), for `paradistill calibrate`.

    Example: paradistill judge -r my-recipe.yaml --sample 300 --dry-run   (then: --max-cost 1)
    """
    from pipelines import runner
    from pipelines.recipes_io import validated
    from schemas.recipe import JudgeConfig

    r, wd = _recipe_and_workdir(recipe, workdir)
    base = r.judge.model_dump() if r is not None and r.judge is not None else {}
    given = {k: v for k, v in dict(model=model, max_cost=max_cost).items() if v is not None}
    if "model" not in {**base, **given}:
        raise RecipeError("judge: no judge model; give --model NAME or a recipe with a judge: section (-r RECIPE)")
    cfg = validated(JudgeConfig, {**base, **given}, "judge options")
    s = runner.judge(wd, cfg, sample=sample, dry_run=dry_run)
    _print_judge(s)


def _print_judge(s: dict) -> None:
    bins = s.get("bins")
    if bins:
        per_bin = ", ".join(f"{b['low']:.2f}..{b['high']:.2f}: {b['sample']}/{b['pairs']}" for b in bins)
        out.print(f"sample of {s.get('drawn', 0)} pair(s) over {s.get('stratify_by')} (drawn/pairs per bin): "
                  f"{per_bin}")
        if s.get("drawn", 0) < s.get("sample", 0):
            out.print(f"only {s.get('drawn', 0)} pair(s) have a {s.get('stratify_by')} score: all of them are "
                      "in the sample", style="yellow")
    est = s.get("estimate")
    if est:
        cost = ("unknown (no price for this model)" if est.get("cost_usd_est") is None
                else f"${est['cost_usd_est']:,.4f}")
        out.print(f"pairs to judge {est.get('requests', 0)}, already judged {s.get('already_judged', 0)}; "
                  f"prompt tokens {est.get('prompt_tokens', 0):,}, cost ~{cost}")
    if s.get("dry_run"):
        out.print("dry run: nothing was sent", style="dim")
        return
    line = f"{s.get('judged', 0)} pair(s) judged"
    if s.get("failed"):
        line += f", {s['failed']} failed (rerun to retry them)"
    if s.get("unreadable"):
        line += f", {s['unreadable']} answer(s) without a yes/no (label left empty)"
    if s.get("cost_usd") is not None:
        line += f", ${s['cost_usd']:,.4f} this run"
    out.print(line)


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML path, or a shipped name such as demo.")],
    workdir: WorkdirOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Ingest, then print the teacher's estimated requests, "
                                                            "tokens and dollars; send nothing.")] = False,
    max_cost: Annotated[float | None, typer.Option(help="Stop the teacher at this many USD (resumable).")] = None,
    partition_size: PartitionOpt = None,
    workers: WorkersOpt = None,
    backend: BackendOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Run a recipe end to end: ingest -> teacher -> candidates -> curation -> export. Rerun to resume.

    Example: paradistill run pipelines/recipes/demo.yaml
    """
    from pipelines import runner
    from pipelines.recipes_io import load_recipe
    from pipelines.sql import query as run_query

    r = _with_execution(load_recipe(recipe)[0], partition_size, workers, backend, ray_address)
    if max_cost is not None:
        r.teacher = _teacher_config(r, {"max_cost": max_cost})
    res = runner.run(r, workdir, dry_run=dry_run)
    if dry_run or res["teacher"].get("pending_batches"):
        _print_teacher(res["teacher"])
        return
    st = res["stages"]
    out.print()
    out.print(_label("workdir", f" {res['workdir']}"))
    if "ingest" in st:
        from pipelines.store import Workdir

        i = st["ingest"]
        total = Workdir(res["workdir"]).count("sources")
        line = f"sources {total} in the workdir"
        if any(not p.get("skipped") for p in i["inputs"]):
            line += f" ({i['kept']} new this run, {i['quarantined']} quarantined, {i['duplicates']} duplicates)"
        else:
            line += " (inputs already ingested; nothing new)"
        out.print(line)
    if "generate" in st:
        g = st["generate"]
        out.print(f"requests {g.get('planned', g.get('contexts_planned'))} ({g.get('generated', 0)} new"
                  + (f", {g['failed']} failed" if g.get("failed") else "")
                  + (f", ${g['cost_usd']:,.4f}" if g.get("cost_usd") else "") + ")")
        _print_fallbacks(res["teacher"])
    if "import" in st:
        out.print(f"imported rows {st['import']['rows']} ({st['import']['quarantined']} quarantined)")
    out.print(f"candidates +{st['candidates']['pairs']}")
    if "curation" in res:
        _print_curation(res["curation"])
    if "export" in res:
        e = res["export"]
        note = " (unchanged, not re-exported)" if e.get("skipped") else ""
        out.print(_label("dataset", f" {e['path']}  version {e['version']}{note}"))
        out.print(f"  python -c \"import datasets; print(datasets.load_dataset('{e['path']}'))\"")
    curated = "curation" in res and "filter" in res["curation"]
    keep = ("JOIN decisions d USING (pair_id) WHERE d.kept" if curated
            else "WHERE NOT c.is_source_copy AND NOT c.is_repeat")
    sample = run_query(res["workdir"], "SELECT s.text AS source, c.paraphrase FROM candidates c JOIN sources s "
                                       f"USING (source_id) {keep} ORDER BY c.pair_id LIMIT 3")
    if sample.height:
        out.print(_label("sample kept pairs" if curated else "sample pairs"))
        for src, para in sample.iter_rows():
            out.print(f"  {src}\n    -> {para}")
    out.print(_label("try SQL"))
    out.print(f"  paradistill sql -w {shlex.quote(res['workdir'])} \"SELECT rule, pairs_in, dropped, pairs_out "
              "FROM funnel ORDER BY step\"")
    if "train" in res:
        _print_training(res["train"])
    if "evaluate" in res:
        _print_evaluation(res["evaluate"])


def _options(model, given: dict, origin: str):
    """A config model from the CLI options the user gave (unset ones keep the model's defaults)."""
    from pipelines.recipes_io import validated

    return validated(model, {k: v for k, v in given.items() if v is not None}, origin)


@app.command()
def publish(
    export_dir: Annotated[Path, typer.Argument(help="An export folder: WORKDIR/exports/NAME/VERSION.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repo OWNER/NAME (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    version: Annotated[str | None, typer.Option(help="Tag to create; default: the export's version.")] = None,
) -> None:
    """Upload an export to the Hugging Face Hub as one commit tagged with its version (never re-tagged).

    The token comes from HF_TOKEN or your `hf auth login`; HF_ENDPOINT selects another Hub.
    Example: paradistill publish work/demo/exports/demo-paraphrases/0.1.0 --repo-id me/demo-paraphrases
    """
    from pipelines.publish import publish as run_publish

    res = run_publish(export_dir, repo_id, private, version)
    out.print(f"published {repo_id} version {res['version']} (commit {res['commit'][:12]}): {res['url']}")
    out.print(f"  datasets.load_dataset({repo_id!r}, revision={res['version']!r})")


@app.command()
def train(
    dataset: Annotated[str, typer.Option("--dataset", help="Export folder or Hub dataset id.")],
    model: Annotated[str | None, typer.Option(help="Base model path or Hub id (default: embedded SmolLM2-135M).")
                     ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision (a version tag) of the dataset.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Adapter folder (default: "
                                                "students/NAME-VERSION).")] = None,
    arch: Annotated[str | None, typer.Option(help="auto | causal | seq2seq.")] = None,
    template: Annotated[str | None, typer.Option(help="Prompt with {text}.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA r (8).")] = None,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha (16).")] = None,
    dropout: Annotated[float | None, typer.Option(help="LoRA dropout (0.05).")] = None,
    target_modules: Annotated[str | None, typer.Option(help="Comma-separated module names (default: peft's).")
                              ] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Learning rate (2e-4).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs (1).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps; overrides --epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (8).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Max tokens per example (128).")] = None,
    targets: Annotated[str | None, typer.Option(help="rotate (a different pseudo-target per epoch) | all.")
                       ] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validation loss every N steps (20).")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (20).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (0).")] = None,
    teacher_model: Annotated[str | None, typer.Option(
        help="Distil from this teacher (path or Hub id; 'default' = the embedded SmolLM2) with --kd word.")] = None,
    teacher_adapter: Annotated[str | None, typer.Option(help="A LoRA adapter on the teacher.")] = None,
    kd: Annotated[str | None, typer.Option(help="seq (the exported text) | word (the teacher's distributions).")
                  ] = None,
    kd_temperature: Annotated[float | None, typer.Option(help="Word-level KD temperature (1).")] = None,
    joint_teaching: Annotated[float | None, typer.Option(help="Share of steps on the student's own samples (0).")
                              ] = None,
    student_layers: Annotated[int | None, typer.Option(help="Keep this many of the base model's layers.")] = None,
) -> None:
    """Train a LoRA student on an exported dataset; rerun the same command to resume from its last checkpoint.

    Example: paradistill train --dataset work/demo/exports/demo-paraphrases/0.1.0 --steps 40 -o students/demo
    """
    from pipelines import student
    from schemas.recipe import TrainConfig

    given = {"model": model, "arch": arch, "template": template, "rank": rank, "alpha": alpha, "dropout": dropout,
             "target_modules": target_modules.split(",") if target_modules else None, "learning_rate": learning_rate,
             "epochs": epochs, "max_steps": steps, "batch_size": batch_size, "max_length": max_length,
             "targets": targets, "eval_every": eval_every, "save_every": save_every, "seed": seed,
             "student_layers": student_layers}
    kd_given = {"model": None if teacher_model == "default" else teacher_model, "adapter": teacher_adapter, "kd": kd,
                "kd_temperature": kd_temperature, "joint_teaching": joint_teaching}
    if teacher_model or any(v is not None for v in kd_given.values()):
        given["teacher"] = {k: v for k, v in kd_given.items() if v is not None}
    cfg = _options(TrainConfig, given, "paradistill train")
    _print_training(student.train(dataset, cfg, output, revision))


def _print_training(res: dict) -> None:
    losses = res["losses"]
    state = ("already trained; nothing to do" if res.get("skipped")
             else f"{res['steps']} steps in {res['seconds']:.0f} s")
    out.print(_label("student", f" {res['output']} ({state})"))
    if losses.get("val_step0") is not None:
        out.print(f"  validation loss {losses['val_step0']:.4f} at step 0 -> {losses['val_final']:.4f}")
    out.print(f"  paradistill evaluate --adapter {res['output']}")


@app.command()
def evaluate(
    adapter: Annotated[Path, typer.Option("--adapter", help="Adapter folder written by `paradistill train`.")],
    dataset: Annotated[str | None, typer.Option(help="Export folder or Hub id (default: the training dataset).")
                       ] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate on (test).")] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision of the dataset.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N sources.")] = None,
    num_beams: Annotated[int | None, typer.Option(help="Beams (4).")] = None,
    do_sample: Annotated[bool | None, typer.Option("--sample/--no-sample", help="Sample instead of beam search.")
                         ] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (1.0).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Sampling top-p (1.0).")] = None,
    num_return: Annotated[int | None, typer.Option(help="Outputs per source (2; >= 2 gives self-BLEU).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Max new tokens (64).")] = None,
    alpha: Annotated[float | None, typer.Option(help="iBLEU alpha (0.8).")] = None,
) -> None:
    """Generate with the student and print a teacher-vs-student table of the curation scorers (also as JSON).

    Example: paradistill evaluate --adapter students/demo --split test
    """
    from pipelines import student
    from schemas.recipe import EvaluateConfig

    given = {"split": split, "limit": limit, "num_beams": num_beams, "do_sample": do_sample,
             "temperature": temperature, "top_p": top_p, "num_return_sequences": num_return,
             "max_new_tokens": max_new_tokens, "alpha": alpha}
    cfg = _options(EvaluateConfig, given, "paradistill evaluate")
    _print_evaluation(student.evaluate(adapter, dataset, cfg, revision))


def _print_evaluation(res: dict) -> None:
    from training.evaluate import table_rows

    table = Table(title=f"{res['split']} split: {res['sources']} sources, {res['teacher_pairs']} teacher pairs")
    for col in ("metric", "teacher (dataset)", "student", "student - teacher"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in table_rows(res["metrics"]):
        table.add_row(*row)
    out.print(table)
    out.print(f"written to {res['path']}")


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and a non-zero exit."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # our own bars show progress; theirs are noise
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # deprecations, not ours
    try:
        app()
    except UserError as e:
        err.print(Text.assemble(("error:", "red"), f" {e}"))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before Typer took over
        _interrupted()
    except SystemExit as e:
        if e.code == INTERRUPTED:  # Typer turns a KeyboardInterrupt inside a verb into a silent exit 130
            _interrupted()
        raise


def _interrupted() -> None:
    err.print("interrupted; run the same command again to resume (nothing finished is lost)")
    sys.exit(INTERRUPTED)

if __name__ == "__main__":
    main()
