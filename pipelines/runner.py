"""The runner: stage order, resume, run manifests and progress. Every CLI verb is a thin layer over these."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from pipelines.manifest import RunManifest, close_stale_runs
from pipelines.progress import make_progress
from pipelines.recipes_io import load_recipe, validated
from pipelines.steps.candidates import build_candidates
from pipelines.steps.export import export_dataset, export_if_changed
from pipelines.steps.generate import generate as _generate
from pipelines.steps.ingest import ingest_sources
from pipelines.store import Workdir
from schemas.errors import RecipeError
from schemas.recipe import ExportConfig, IngestConfig, Recipe, SourceSpec, TeacherConfig


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


def generate(workdir: str | Path, teacher: TeacherConfig | None = None, progress: bool = True) -> dict:
    """Ask the teacher for paraphrases of every source not yet done (resumable)."""
    cfg = teacher or TeacherConfig()
    with _session(workdir, "generate", None, progress) as (wd, manifest, prog):
        wd.require()
        stats = _generate(wd, cfg, manifest.run_id, prog)
        manifest.record_stage("generate", {**stats, "teacher": cfg.model_dump(mode="json")})
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


def run(recipe_ref: str | Recipe, workdir: str | Path | None = None, progress: bool = True) -> dict:
    """Run a recipe end to end: ingest -> generate -> candidates -> export. Rerunning resumes."""
    recipe = load_recipe(recipe_ref)[0] if isinstance(recipe_ref, str) else recipe_ref
    if not recipe.sources:
        raise RecipeError(f"recipe {recipe.name!r}: field sources: list at least one input")
    target = workdir or recipe.workdir
    result: dict = {"recipe": recipe.name, "workdir": str(Path(target).resolve())}
    with _session(target, f"run {recipe.name}", recipe, progress) as (wd, manifest, prog):
        result["run_id"] = manifest.run_id
        stats = ingest_sources(wd, recipe.sources, recipe.ingest.max_chars, manifest, prog)
        manifest.record_stage("ingest", stats)
        stats = _generate(wd, recipe.teacher, manifest.run_id, prog)
        manifest.record_stage("generate", stats)
        stats = build_candidates(wd)
        manifest.record_stage("candidates", stats)
        if recipe.export:
            stats = export_if_changed(wd, recipe.export, prog)
            manifest.record_stage("export", stats)
            result["export"] = stats
        result["stages"] = manifest.data["stages"]
    return result
