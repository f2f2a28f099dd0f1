"""The runner: stage order, resume, run manifests and progress. Every CLI verb is a thin layer over these."""

from __future__ import annotations

import shlex
from contextlib import contextmanager, nullcontext
from pathlib import Path

from curation.embedding import resolve_device
from curation.filters import validate as validate_rules
from pipelines.manifest import RunManifest, close_stale_runs
from pipelines.pool import Background
from pipelines.progress import make_progress
from pipelines.ray_backend import open_backend
from pipelines.recipes_io import load_recipe, validated
from pipelines.steps.analyses import parse_missing
from pipelines.steps.candidates import build_candidates
from pipelines.steps.dedup import dedup
from pipelines.steps.dedup import methods as dedup_methods
from pipelines.steps.embed import embed_missing, on_backend
from pipelines.steps.export import export_dataset, export_if_changed
from pipelines.steps.filter import run_filter
from pipelines.steps.generate import generate as _generate
from pipelines.steps.import_pairs import import_pairs
from pipelines.steps.ingest import ingest_sources
from pipelines.steps.pairs import PairTexts, unique_pairs, unique_texts
from pipelines.steps.report import write_workdir_report
from pipelines.steps.score import available_columns, needs_parse, score
from pipelines.store import Workdir
from schemas.errors import BudgetReached, RecipeError, StateError, TeacherFailed, one_line
from schemas.recipe import (
    BatchTeacherConfig,
    ChatTeacherConfig,
    ContextualTeacherConfig,
    ExecutionConfig,
    ExportConfig,
    FilterConfig,
    ImportTeacherConfig,
    IngestConfig,
    JudgeConfig,
    LabelFileSpec,
    Recipe,
    SourceSpec,
    TeacherConfig,
)

CURATION_STAGES = ("embed", "dedup", "score", "filter", "report")


@contextmanager
def _session(workdir: str | Path, command: str, recipe: Recipe | None, show_progress: bool):
    """Lock the workdir, open a run manifest, and close both whatever happens."""
    wd = Workdir(workdir)
    with wd:
        close_stale_runs(wd)
        manifest = RunManifest(wd, command, recipe.model_dump(mode="json") if recipe else None)
        progress = make_progress() if show_progress else None
        try:
            if progress:
                progress.start()
            yield wd, manifest, progress
        except KeyboardInterrupt:
            manifest.finish("interrupted")
            raise
        except BudgetReached:
            manifest.finish("stopped-at-budget")
            raise
        except TeacherFailed:
            manifest.finish("requests-failed")
            raise
        except BaseException:
            manifest.finish("failed")
            raise
        else:
            manifest.finish("complete")
        finally:
            if progress:
                progress.stop()


def ingest(paths: list[str], workdir: str | Path, text_column: str = "text", split: str = "train",
           max_chars: int = IngestConfig().max_chars, progress: bool = True) -> dict:
    """Ingest files / datasets into `workdir`; returns counts (read = kept + duplicates + quarantined)."""
    specs = [SourceSpec(path=p, text_column=text_column, split=split) for p in paths]
    with _session(workdir, "ingest", None, progress) as (wd, manifest, prog):
        stats = ingest_sources(wd, specs, max_chars, manifest, prog)
        manifest.record_stage("ingest", stats)
        return {**stats, "run_id": manifest.run_id}


def _teacher_backend(wd: Workdir, execution: ExecutionConfig | None):
    """Where the local teacher and the contextual sampler sample: a Ray backend with `execution.backend: ray`,
    else None (this process, as ever). Held around a whole `run`, it keeps one Ray instance for every stage (the
    stages' own backends join it)."""
    if execution is None or execution.backend != "ray":
        return nullcontext(None)
    return open_backend(execution, wd.root / "state" / "ray")


def _teach(wd: Workdir, cfg, manifest: RunManifest, prog, dry_run: bool = False,
           execution: ExecutionConfig | None = None) -> dict:
    """Run the configured teacher (local, import, openai, openai-batch, contextual); resumable, never pays twice.
    With `execution.backend: ray` the local teacher and the contextual sampler run on Ray actors; the OpenAI
    teachers (I/O bound) stay in this process."""
    if dry_run and not isinstance(cfg, ChatTeacherConfig | BatchTeacherConfig):
        raise RecipeError(f"--dry-run estimates what an API teacher costs (teacher.kind openai or openai-batch); "
                          f"teacher.kind {cfg.kind} runs on this machine and costs nothing")
    if isinstance(cfg, ImportTeacherConfig):
        stats = import_pairs(wd, cfg, IngestConfig().max_chars, manifest, prog)
        manifest.record_stage("import", stats)
        return stats
    if not isinstance(cfg, ContextualTeacherConfig) and wd.count("sources") == 0:
        raise StateError(f"{wd.root}: no sources to generate from; ingest some first: "
                         f"paradistill ingest FILE -w {shlex.quote(str(wd.root))}")
    if isinstance(cfg, ContextualTeacherConfig):
        from pipelines.steps.contextual import generate_contextual

        with _teacher_backend(wd, execution) as backend:
            stats = generate_contextual(wd, cfg, manifest.run_id, prog, backend)
    elif isinstance(cfg, ChatTeacherConfig | BatchTeacherConfig):
        from pipelines.steps.batch import generate_batch
        from pipelines.steps.chat import generate_chat
        from pipelines.steps.moderation import moderate_sources

        flagged = None
        if cfg.moderation.sources and not dry_run:
            flagged, mstats = moderate_sources(wd, cfg)
            manifest.record_stage("moderation-sources", mstats)
        fn = generate_chat if isinstance(cfg, ChatTeacherConfig) else generate_batch
        stats = fn(wd, cfg, manifest.run_id, prog, dry_run=dry_run, moderated=flagged)
    else:
        with _teacher_backend(wd, execution) as backend:
            stats = _generate(wd, cfg, manifest.run_id, prog, backend)
    manifest.record_stage("generate", {**stats, "teacher": cfg.model_dump(mode="json")})
    return stats


def failure_cause(summary: dict) -> str:
    """'connection refused (ClientConnectorError: ...), 12 times' from a `top_failure` dict."""
    top = summary.get("top_failure")
    if not top:
        return "unknown"
    kind = str(top.get("kind") or "unknown").replace("_", " ")
    return f"{kind} ({one_line(top.get('error') or '')}), {top['count']} time{'s' if top['count'] != 1 else ''}"


def _failed_requests(wd: Workdir, stats: dict, manifest: RunManifest, curating: bool) -> TeacherFailed:
    """The one-line error of a teacher step that ended with failed requests."""
    failed = stats.get("failed", 0)
    total = failed + stats.get("generated", 0)
    where = "stopped before curation" if curating else f"candidates were built from the {stats.get('generated', 0)} " \
        "that succeeded"
    err = TeacherFailed(
        f"{failed} of {total} teacher request(s) failed after every retry; most common cause: "
        f"{failure_cause(stats)}; {where}. Fix the cause and rerun the same command: only the failed requests are "
        f"sent again (see them: paradistill sql -w {shlex.quote(str(wd.root))} \"SELECT failure_kind, error FROM "
        f"request_failures WHERE run_id = '{manifest.run_id}'\"), or set teacher.on_failures: continue to go on "
        "with what succeeded")
    err.stats = {**stats, "run_id": manifest.run_id}  # the teacher's stats, for a notebook that catches it
    return err


def _after_teacher(wd: Workdir, cfg, manifest: RunManifest, stats: dict, curating: bool = False) -> None:
    """Candidates from what was stored, output moderation, then a budget stop or requests that still failed
    become a clear exit (unless `teacher.on_failures: continue`)."""
    manifest.record_stage("candidates", build_candidates(wd))
    if getattr(cfg, "moderation", None) is not None and cfg.moderation.outputs:
        from pipelines.steps.moderation import moderate_outputs

        manifest.record_stage("moderation-outputs", moderate_outputs(wd, cfg))
    failed = stats.get("failed", 0) if getattr(cfg, "on_failures", "continue") == "stop" else 0
    if stats.get("stopped_at_budget"):
        also = f"; {failed} request(s) also failed, most common cause: {failure_cause(stats)}" if failed else ""
        raise BudgetReached(
            f"teacher stopped at the budget: ${stats.get('spent_total_usd', 0):.4f} spent of max_cost "
            f"${cfg.max_cost:.4f}; everything paid for is stored, rerun with a larger --max-cost to go on{also}")
    if failed:
        raise _failed_requests(wd, stats, manifest, curating)


def generate(workdir: str | Path, teacher=None, progress: bool = True, dry_run: bool = False) -> dict:
    """Ask the teacher for paraphrases of every source not yet done (resumable); `dry_run` only estimates.

    Requests that still failed after every retry raise TeacherFailed (exit 9; its `.stats` hold the teacher's
    stats) after candidates are built from what succeeded, unless `teacher.on_failures: continue`."""
    cfg = teacher or TeacherConfig()
    with _session(workdir, "generate", None, progress) as (wd, manifest, prog):
        wd.require()
        stats = _teach(wd, cfg, manifest, prog, dry_run)
        if not dry_run:
            _after_teacher(wd, cfg, manifest, stats)
        return {**stats, "run_id": manifest.run_id}


def candidates(workdir: str | Path) -> dict:
    """Turn stored generations into candidate pairs."""
    with _session(workdir, "candidates", None, False) as (wd, manifest, _):
        stats = build_candidates(wd)
        manifest.record_stage("candidates", stats)
        return stats


def export(workdir: str | Path, name: str, version: str | None = None, config: ExportConfig | None = None,
           progress: bool = True) -> dict:
    """Write `exports/NAME/VERSION/` (a Hub-ready dataset folder); never overwrites a version."""
    base = config.model_dump() if config else {}
    cfg = validated(ExportConfig, {**base, "name": name, "version": version}, "export")
    with _session(workdir, "export", None, progress) as (wd, manifest, prog):
        wd.require()
        stats = export_dataset(wd, cfg, prog)
        manifest.record_stage("export", stats)
        return stats


def ingest_pairs(path: str, workdir: str | Path, source_column: str = "source",
                 paraphrase_column: str = "paraphrase", split: str = "train", teacher: str = "imported",
                 limit: int | None = None, max_chars: int = IngestConfig().max_chars, progress: bool = True) -> dict:
    """Import a teacher corpus made elsewhere (pairs, or a source with a list of paraphrases per row)."""
    cfg = validated(ImportTeacherConfig, {"kind": "import", "path": path, "source_column": source_column,
                                          "paraphrase_column": paraphrase_column, "split": split,
                                          "teacher": teacher, "limit": limit}, "ingest-pairs options")
    with _session(workdir, "ingest-pairs", None, progress) as (wd, manifest, prog):
        stats = import_pairs(wd, cfg, max_chars, manifest, prog)
        manifest.record_stage("import", stats)
        cand = build_candidates(wd)
        manifest.record_stage("candidates", cand)
        return {**stats, "candidates": cand, "run_id": manifest.run_id}


def judge(workdir: str | Path, cfg: JudgeConfig, sample: int | None = None, progress: bool = True,
          dry_run: bool = False) -> dict:
    """Have the LLM judge label a stratified sample of the workdir's pairs (up to `sample` in all; resumable, a
    judged pair is never paid for twice); `dry_run` only estimates. Needs current scores (`curate` first)."""
    from pipelines.steps.judge import judge as judge_step

    with _session(workdir, "judge", None, progress) as (wd, manifest, prog):
        wd.require()
        stats = judge_step(wd, cfg, manifest.run_id, prog, dry_run=dry_run, sample=sample)
        manifest.record_stage("judge", stats)
        if stats.get("failed"):
            err = TeacherFailed(
                f"{stats['failed']} judge request(s) failed after every retry; most common cause: "
                f"{failure_cause(stats)}; {stats.get('judged', 0)} pair(s) were judged. Fix the cause and rerun "
                "the same command: only the pairs without a label are sent again")
            err.stats = {**stats, "run_id": manifest.run_id}
            raise err
        return {**stats, "run_id": manifest.run_id}


def _curate(wd: Workdir, recipe: Recipe, manifest: RunManifest, prog, upto: str) -> dict:
    """embed -> dedup -> score -> filter -> report over the current unique pairs, each skipped when unchanged."""
    stages = CURATION_STAGES[: CURATION_STAGES.index(upto) + 1]
    fcfg = recipe.filter or FilterConfig()
    if "filter" in stages:  # a rule naming an unknown or un-run column fails before any model is loaded
        validate_rules(fcfg, available_columns(recipe.score, recipe.nli) | {"pair_id", "source_id"})
    pairs = unique_pairs(wd, texts=False)  # ids only: each stage takes its chunk's texts from the text stores
    if pairs.height == 0:
        from pipelines.steps.chat import open_failures

        fails = open_failures(wd)
        if fails["count"]:
            raise TeacherFailed(f"{wd.root}: no candidate pairs to curate: {fails['count']} teacher request(s) "
                                f"failed and no stored response gave a pair; most common cause: "
                                f"{failure_cause(fails)}. Fix the cause and rerun the teacher (the same command): "
                                "only the failed requests are sent again")
        raise StateError(f"{wd.root}: no candidate pairs to curate; run generate/ingest-pairs and candidates first")
    out: dict = {}
    calibration = None
    texts = PairTexts.open(wd)
    with open_backend(recipe.execution, wd.root / "state" / "ray") as pool:
        embed_cfg = on_backend(recipe.embed, pool)[0]  # on Ray: what its actors embed with (their GPUs)
        parse = None
        if "score" in stages and needs_parse(recipe.score) and resolve_device(embed_cfg.device) != "cpu":
            # CPU workers parse while the GPU embeds. With the encoder on the CPU, its threads already use every
            # core and sharing them costs more than it overlaps (measured), so the pool parses after it.
            parse = Background(parse_missing, wd, unique_texts(pairs), recipe.score.spacy_model, pool,
                               recipe.execution.partition_size, prog, store=texts)
        try:
            out["embed"] = embed_missing(wd, embed_cfg, pairs, prog, store=texts, backend=pool)
            manifest.record_stage("embed", out["embed"])
            if "dedup" in stages:
                out["dedup"] = dedup(wd, recipe.dedup, embed_cfg, recipe.nli, pairs, prog, store=texts,
                                     backend=pool)
                manifest.record_stage("dedup", out["dedup"])
            if parse is not None:
                out["parse"] = parse.result()
                manifest.record_stage("parse", out["parse"])
        except BaseException:
            if parse is not None:  # no parse shard may be written once the workdir is unlocked
                pool.close(abort=True)
                parse.abandon()
            raise
        if "score" in stages:
            out["score"] = score(wd, recipe.score, embed_cfg, recipe.nli, pairs, pool,
                                 recipe.execution.partition_size, prog, store=texts)
            manifest.record_stage("score", out["score"])
            if "quality" in recipe.score.scorers:
                calibration = _quality(wd, recipe, embed_cfg, pool, manifest, prog, out)
    if "filter" in stages:
        rows = wd.count("candidates")
        out["filter"] = run_filter(wd, fcfg, texts.attach(pairs), rows, dedup_methods(recipe.dedup), calibration)
        manifest.record_stage("filter", out["filter"])
    if "report" in stages and recipe.report.enabled:
        out["report"] = write_workdir_report(wd, samples=recipe.report.samples,
                                             lineage={"recipe": recipe.name, "embed_model": out["embed"]["model_id"]})
        manifest.record_stage("report", out["report"])
    return out


def _quality(wd: Workdir, recipe: Recipe, embed_cfg, pool, manifest: RunManifest, prog, out: dict) -> dict:
    """The calibration behind the quality scorer (the recipe's file, or fitted to the labels now), applied to
    the current scores as their quality column."""
    from pipelines.steps import calibrate as cal_step

    if recipe.score.calibration:
        cal = cal_step.load(recipe.score.calibration, available_columns(recipe.score, recipe.nli))
    else:
        cal = cal_step.calibrate(wd, recipe.calibrate, recipe.score, embed_cfg, recipe.nli, pool,
                                 recipe.execution.partition_size, prog)
        out["calibrate"] = _calibration_stats(cal)
        manifest.record_stage("calibrate", out["calibrate"])
    out["quality"] = cal_step.apply_quality(wd, cal)
    manifest.record_stage("quality", out["quality"])
    return cal


def _calibration_stats(cal: dict) -> dict:
    """What a manifest and the CLI show of a calibration (not its curve)."""
    cv = cal["cv"]
    return {"version": cal["version"], "path": cal["path"], "reused": cal.get("reused", False),
            "labels": cal["labels"], "features": cal["features"], "auc": cv["auc"], "best_single": cv["best_single"],
            "summary": cal["summary"], "seconds": cal.get("seconds")}


def import_label_files(workdir: str | Path, specs: list[LabelFileSpec], max_chars: int = IngestConfig().max_chars,
                       progress: bool = True) -> dict:
    """Import human label files (source, paraphrase, label) into the workdir's `labels` table."""
    from pipelines.steps.labels import import_labels

    with _session(workdir, "labels import", None, progress) as (wd, manifest, prog):
        wd.create()
        files = []
        for spec in specs:
            stats = import_labels(wd, spec, max_chars, manifest, prog)
            manifest.record_stage("labels", stats)
            files.append(stats)
        return {"files": files, "run_id": manifest.run_id}


def calibrate(workdir: str | Path, recipe: Recipe | None = None, progress: bool = True) -> dict:
    """Fit (or reuse) the quality calibration of the workdir's labels; without a recipe, the current score set's
    own settings score the outside labelled pairs. Returns the stored calibration (and its `path`)."""
    from pipelines.steps import calibrate as cal_step

    with _session(workdir, "calibrate", recipe, progress) as (wd, manifest, prog):
        wd.require()
        if recipe is None:
            recipe = _scored_with(wd)
        with open_backend(recipe.execution, wd.root / "state" / "ray") as pool:
            embed_cfg = on_backend(recipe.embed, pool)[0]
            cal = cal_step.calibrate(wd, recipe.calibrate, recipe.score, embed_cfg, recipe.nli, pool,
                                     recipe.execution.partition_size, prog)
        manifest.record_stage("calibrate", _calibration_stats(cal))
        return {**cal, "run_id": manifest.run_id}


def _scored_with(wd: Workdir) -> Recipe:
    """A recipe with the settings the current score set was computed with."""
    from pipelines.steps.calibrate import base_score_set

    base = base_score_set(wd)
    if base is None:
        raise StateError(f"{wd.root}: no scores to calibrate with; run paradistill curate first")
    settings = (wd.stage_done("score", base) or {}).get("settings")
    if settings is None:
        raise StateError(f"{wd.root}: the current scores do not record their settings (made by an older "
                         "version); pass the recipe they were made with: paradistill calibrate -r RECIPE")
    return Recipe(name="calibrate", score=settings["score"], embed=settings["embed"], nli=settings["nli"])


def curate(workdir: str | Path, recipe: Recipe | None = None, upto: str = "report", progress: bool = True) -> dict:
    """Run the curation stages up to `upto` (embed, dedup, score, filter or report) with the recipe's settings."""
    if upto not in CURATION_STAGES:
        raise ValueError(f"upto must be one of {CURATION_STAGES}")
    recipe = recipe or Recipe(name="adhoc")
    with _session(workdir, upto, recipe, progress) as (wd, manifest, prog):
        wd.require()
        return {**_curate(wd, recipe, manifest, prog, upto), "run_id": manifest.run_id}


def report(workdir: str | Path, out_dir: str | Path | None = None, samples: int = 8) -> dict:
    """Write the quality report (HTML + JSON) of the current filter results."""
    with _session(workdir, "report", None, False) as (wd, manifest, _):
        wd.require()
        stats = write_workdir_report(wd, Path(out_dir) if out_dir else None, samples)
        manifest.record_stage("report", stats)
        return stats


def run(recipe_ref: str | Recipe, workdir: str | Path | None = None, progress: bool = True,
        dry_run: bool = False) -> dict:
    """Run a recipe end to end: ingest -> teacher -> candidates -> curation -> export. Resumes; `dry_run` stops
    after ingest with the teacher's estimate (requests, tokens, dollars) and spends nothing. Teacher requests that
    still failed after every retry stop the run before curation (TeacherFailed, exit 9) unless
    `teacher.on_failures: continue`."""
    recipe = load_recipe(recipe_ref)[0] if isinstance(recipe_ref, str) else recipe_ref
    needs_sources = isinstance(recipe.teacher, TeacherConfig | ChatTeacherConfig | BatchTeacherConfig)
    if not recipe.sources and needs_sources:
        raise RecipeError(f"recipe {recipe.name!r}: field sources: list at least one input")
    target = workdir or recipe.workdir
    result: dict = {"recipe": recipe.name, "workdir": str(Path(target).resolve())}
    with (_session(target, f"run {recipe.name}", recipe, progress) as (wd, manifest, prog),
          _teacher_backend(wd, recipe.execution)):  # on Ray: one instance for the teacher and the curation
        result["run_id"] = manifest.run_id
        if recipe.sources:
            stats = ingest_sources(wd, recipe.sources, recipe.ingest.max_chars, manifest, prog)
            manifest.record_stage("ingest", stats)
        if isinstance(recipe.teacher, ImportTeacherConfig) and not dry_run:
            stats = import_pairs(wd, recipe.teacher, recipe.ingest.max_chars, manifest, prog)
            manifest.record_stage("import", stats)
        else:
            stats = _teach(wd, recipe.teacher, manifest, prog, dry_run, recipe.execution)
        result["teacher"] = stats
        if dry_run:
            return result
        _after_teacher(wd, recipe.teacher, manifest, stats, curating=recipe.filter is not None)
        if recipe.labels:  # after the candidates, so each label knows whether its pair is in the corpus
            from pipelines.steps.labels import import_labels

            for spec in recipe.labels:
                manifest.record_stage("labels", import_labels(wd, spec, recipe.ingest.max_chars, manifest, prog))
        if stats.get("pending_batches"):
            result["stages"] = manifest.data["stages"]
            return result  # batches still running: curation waits for the whole corpus
        if recipe.filter is not None:
            result["curation"] = _curate(wd, recipe, manifest, prog, "report")
        if recipe.export:
            stats = export_if_changed(wd, recipe.export, prog)
            manifest.record_stage("export", stats)
            result["export"] = stats
            if recipe.train is not None:
                result.update(_student(wd, recipe, stats["path"], manifest, prog))
        result["stages"] = manifest.data["stages"]
    return result


def _student(wd: Workdir, recipe: Recipe, export_path: str, manifest: RunManifest, prog) -> dict:
    """Train the recipe's student on the export (students/NAME/VERSION), then evaluate it if asked."""
    from pipelines import student

    version = Path(export_path).name
    out = wd.root / "students" / recipe.export.name / version
    res = {"train": student.train(export_path, recipe.train, out, progress=prog)}
    manifest.record_stage("train", res["train"])
    if recipe.evaluate is not None:
        ev = student.evaluate(out, export_path, recipe.evaluate)
        manifest.record_stage("evaluate", {k: v for k, v in ev.items() if k != "samples"})
        res["evaluate"] = ev
    return res
