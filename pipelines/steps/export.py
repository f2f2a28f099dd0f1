"""Export step: write the workdir's usable pairs as `exports/NAME/VERSION/`, never overwriting a version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid

import polars as pl

from curation.export import (
    SPLITS,
    assign_splits,
    calibration_card,
    calibration_card_info,
    card_metadata,
    md_text,
    render_card,
    write_dataset,
)
from pipelines.manifest import latest_manifests
from pipelines.steps.calibrate import calibration_in_use
from pipelines.store import Workdir, atomic_write_json
from schemas.errors import StateError
from schemas.recipe import ExportConfig


def existing_versions(wd: Workdir, name: str) -> list[tuple[int, int, int]]:
    folder = wd.root / "exports" / name
    out = []
    for p in folder.glob("*") if folder.is_dir() else []:
        parts = p.name.split(".")
        if p.is_dir() and len(parts) == 3 and all(x.isdigit() for x in parts):
            out.append(tuple(int(x) for x in parts))
    return sorted(out)


def next_version(wd: Workdir, name: str, asked: str | None) -> str:
    versions = existing_versions(wd, name)
    if asked:
        if tuple(int(x) for x in asked.split(".")) in versions:
            raise StateError(f"{wd.root / 'exports' / name / asked}: version {asked} exists and is never "
                             "overwritten; pass another --version or omit it to bump the patch number")
        return asked
    if not versions:
        return "0.1.0"
    major, minor, patch = versions[-1]
    return f"{major}.{minor}.{patch + 1}"


def exportable_pairs(wd: Workdir, include_source_copies: bool) -> pl.DataFrame:
    """Pairs joined with their source text and teacher lineage; repeats left out.

    After curation (a current `decisions` set) only kept pairs are exported, with their score columns; without
    it, every pair but source copies (unless `include_source_copies`).
    """
    cands = wd.scan("candidates").filter(~pl.col("is_repeat"))
    gens = wd.scan("generations").select("request_id", pl.col("model").alias("teacher_model"),
                                         "prompt_version")
    src = wd.scan("sources").select("source_id", pl.col("text").alias("source"))
    base = ["pair_id", "source_id", "source", "paraphrase", "request_id", "teacher_model", "prompt_version"]
    if wd.current_set("decisions") is None:
        if not include_source_copies:
            cands = cands.filter(~pl.col("is_source_copy"))
        return cands.join(src, on="source_id").join(gens, on="request_id").select(base).sort("pair_id").collect()
    decisions = wd.read_current("decisions")
    current = cands.select("pair_id").unique().collect()
    if current.height != decisions.height or current.join(decisions, on="pair_id", how="anti").height:
        raise StateError(f"{wd.root}: the candidates changed after the last filter run; run `paradistill filter` "
                         "(or the recipe) again before exporting")
    scores = wd.read_current("scores").drop("score_set", "source_id")
    score_cols = [c for c in scores.columns if c != "pair_id" and scores.get_column(c).null_count() < scores.height]
    kept = decisions.filter(pl.col("kept")).select("pair_id").lazy()
    return (cands.join(kept, on="pair_id").join(src, on="source_id").join(gens, on="request_id")
            .join(scores.lazy().select("pair_id", *score_cols), on="pair_id", how="left")
            .select(*base, *score_cols).unique("pair_id", keep="first").sort("pair_id").collect())


def _curation(wd: Workdir) -> dict | None:
    """The current funnel and corpus metrics, for the card and the export's lineage (None if not curated); with
    the calibration behind the scores' quality column and the thresholds the filter chose on it, if any."""
    fid = wd.current_set("decisions")
    if fid is None:
        return None
    funnel = wd.read_current("funnel").sort("step").select("rule", "description", "pairs_in", "dropped", "pairs_out")
    corpus = wd.read_current("corpus_metrics").drop("filter_id")
    cal = calibration_in_use(wd)
    info = None
    if cal:
        thresholds = (wd.stage_done("filter", fid) or {}).get("thresholds")
        fitted_here = (wd.root / cal["path"]).resolve().is_relative_to((wd.root / "calibrations").resolve())
        info = calibration_card_info(cal, thresholds, fitted_here)
    return {"filter_id": fid, "score_set": wd.current_set("scores"), "dedup_id": wd.current_set("dedup_links"),
            "funnel": funnel.to_dicts(), "corpus_metrics": corpus.to_dicts(), "calibration": info}


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _curation_section(cur: dict | None) -> str:
    if cur is None:
        return "## Curation\nNot curated: every pair except source copies and repeats is included.\n"
    cols = ["cos_sim", "h2", "h3", "msttr", "jaccard", "ted_3", "ted_f", "wpd", "ld", "pairs", "sources",
            "pairs_per_source"]
    metrics = "\n".join("| " + " | ".join([r["selection"], *(_fmt(r.get(c)) for c in cols)]) + " |"
                        for r in cur["corpus_metrics"])
    funnel = "\n".join(f"| {md_text(r['rule'])} | {md_text(r['description'])} | {r['pairs_in']} | {r['dropped']} | "
                       f"{r['pairs_out']} |" for r in cur["funnel"])
    return f"""## Curation
Only pairs kept by the filter are included. Each rule, in order (`dropped` counts the pairs it removed first):

| rule | keeps / removes | in | dropped | out |
|---|---|---|---|---|
{funnel}

Corpus metrics (method B's dataset-quality columns; cos-sim and Jaccard x100, MSTTR x100; lower Jaccard and
higher TED, WPD and LD mean more diverse paraphrases):

| selection | cos-sim | H2 | H3 | MSTTR | Jaccard | TED-3 | TED-F | WPD | LD | pairs | sources | pairs/source |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{metrics}

Filter set `{cur['filter_id']}`, score set `{cur['score_set']}`, dedup set `{cur['dedup_id']}`.
""" + (f"\n{calibration_card(cur['calibration'])}" if cur.get("calibration") else "")


# stages that read the corpus without changing its pairs: a run that did only these did not make the export
_READ_ONLY_STAGES = {"export", "report", "train", "evaluate"}


def _making_runs(wd: Workdir) -> list[dict]:
    """The runs that built the corpus, oldest first; a command rerun with the same recipe counts once (its last)."""
    runs: dict[tuple, dict] = {}
    for m in latest_manifests(wd):
        if not set(m.get("stages") or {}) - _READ_ONLY_STAGES:
            continue
        recipe = m.get("recipe") or {}
        key = (m.get("command"), m.get("recipe_hash"))
        runs.pop(key, None)  # keep the order of last occurrences
        runs[key] = {"run_id": m.get("run_id"), "command": m.get("command"), "recipe": recipe.get("name"),
                     "recipe_hash": m.get("recipe_hash"), "package_version": m.get("package_version"),
                     "status": m.get("status")}
    return list(runs.values())


def _lineage(wd: Workdir) -> dict:
    counts = {t: wd.count(t) for t in ("sources", "quarantine", "source_duplicates", "generations",
                                       "candidates")}
    gens = wd.scan("generations")
    counts["parse_errors"] = gens.filter(pl.col("parse_error").is_not_null()).select(pl.len()).collect().item()
    cands = wd.scan("candidates")
    counts["source_copies"] = cands.filter(pl.col("is_source_copy")).select(pl.len()).collect().item()
    counts["repeats"] = cands.filter(pl.col("is_repeat")).select(pl.len()).collect().item()
    teachers = gens.select("model", "prompt_version").unique().sort("model", "prompt_version").collect()
    runs = _making_runs(wd)
    last = next((r for r in reversed(runs) if r["recipe_hash"]), runs[-1] if runs else {})
    return {"counts": counts, "teachers": teachers.to_dicts(), "recipe_hash": last.get("recipe_hash"),
            "run_id": last.get("run_id"), "package_version": last.get("package_version"), "runs": runs,
            "curation": _curation(wd)}


def made_by(lineage: dict) -> str:
    """One card line saying what made the corpus: the recipe run, or the stages run one by one (never `None`)."""
    runs = lineage.get("runs")
    if runs is None and lineage.get("run_id"):  # lineage written before `runs` was recorded
        runs = [{"run_id": lineage["run_id"], "command": "run", "recipe": None,
                 "recipe_hash": lineage.get("recipe_hash"), "package_version": lineage.get("package_version")}]
    if not runs:
        return "- made by: no run manifest in the workdir (its tables were written outside paradistill's runs)"
    versions = ", ".join(sorted({r["package_version"] for r in runs if r.get("package_version")})) or "(unknown)"
    parts = []
    for r in runs:
        command = r.get("command") or "run"
        if command.startswith("run") and r.get("recipe_hash"):
            what = f"recipe `{r['recipe']}`" if r.get("recipe") else "a recipe"
        else:
            what = f"`{command}`" + (f" with recipe `{r['recipe']}`" if r.get("recipe") else "")
        detail = [f"hash `{r['recipe_hash']}`"] if r.get("recipe_hash") else []
        detail.append(f"run `{r['run_id']}`")
        if r.get("status") not in (None, "complete", "running"):
            detail.append(str(r["status"]))
        parts.append(f"{what} ({', '.join(detail)})")
    if not any(r.get("recipe_hash") for r in runs):
        return f"- built stage by stage with paradistill {versions}: " + ", ".join(parts)
    if len(parts) == 1:
        return f"- made by {parts[0]} with paradistill {versions}"
    return f"- made by paradistill {versions}, in order: " + "; ".join(parts)


def _card_body(name: str, version: str, lineage: dict, frames: dict[str, pl.DataFrame]) -> str:
    c = lineage["counts"]
    teachers = "\n".join(f"- `{t['model']}` with prompt `{t['prompt_version']}`" for t in lineage["teachers"])
    calibrated = (lineage.get("curation") or {}).get("calibration")
    quality = ("\n- `quality`: the calibrated probability of a good paraphrase (see Quality calibration)."
               if calibrated else "")
    split_rows = "\n".join(f"| {s} | {f.height} | {f['source_id'].n_unique() if f.height else 0} |"
                           for s, f in frames.items())
    return f"""# {name} {version}

Paraphrase pairs (`source` -> `paraphrase`) written by a teacher model and curated with
[paradistill](https://pypi.org/project/paradistill/) for sequence-level knowledge distillation.

## Splits
Assigned by hashing the source id, so every paraphrase of one source is in one split.

| split | pairs | sources |
|---|---|---|
{split_rows}

## Lineage
Teacher:
{teachers or "- (none)"}

{made_by(lineage)}

| stage | rows |
|---|---|
| sources kept | {c['sources']} |
| input rows quarantined | {c['quarantine']} |
| duplicate input rows collapsed | {c['source_duplicates']} |
| teacher requests | {c['generations']} |
| requests with no parsable paraphrase | {c['parse_errors']} |
| candidate pairs | {c['candidates']} |
| candidates that copy their source (excluded) | {c['source_copies']} |
| repeated pairs (excluded) | {c['repeats']} |
| pairs exported | {sum(f.height for f in frames.values())} |

{_curation_section(lineage['curation'])}
## Columns
- `pair_id`, `source_id`: content ids (hashes of the normalised texts); `request_id`: the teacher request
  that produced the pair; `teacher_model`, `prompt_version`: how it was asked.
- Score columns (curated exports): `cosine` (sentence-embedding cosine), `nli_fwd`/`nli_bwd` (entailment
  probability source => paraphrase and back), `rouge_l` (ROUGE-L F1), `bleu` (sentence BLEU, 0-100), `jaccard`
  (token-set Jaccard), `wpd`/`ld` (word position / lexical deviation), `ted_3`/`ted_f` (tree edit distance of
  dependency trees, top 3 levels / full), `len_ratio_chars`/`len_ratio_tokens`, `numbers_ok` (no number
  absent from the source), `self_bleu` (BLEU against the other paraphrases of the same source).{quality}

## Load
```python
from datasets import load_dataset
ds = load_dataset("path/or/repo-id")  # splits: train, validation, test
```
"""


def content_hash(pairs: pl.DataFrame, cfg: ExportConfig, curation_sets: tuple = ()) -> str:
    """Hash of the exported pair ids, export options and curation sets (not the version): equal hash, equal data."""
    opts = cfg.model_dump(mode="json", exclude={"version"})
    h = hashlib.sha256(json.dumps([opts, list(curation_sets)], sort_keys=True).encode())
    for pid in pairs.get_column("pair_id").sort():
        h.update(pid.encode())
    return h.hexdigest()[:16]


def _sets(wd: Workdir) -> tuple:
    return (wd.current_set("decisions"), wd.current_set("scores"))


def latest_export(wd: Workdir, name: str) -> dict | None:
    """The newest version's paradistill.json (with its path), or None."""
    versions = existing_versions(wd, name)
    if not versions:
        return None
    path = wd.root / "exports" / name / ".".join(map(str, versions[-1]))
    meta = path / "paradistill.json"
    return {**json.loads(meta.read_text()), "path": str(path)} if meta.exists() else None


def export_if_changed(wd: Workdir, cfg: ExportConfig, progress=None) -> dict:
    """A recipe rerun exports a new version only when the pairs or options changed."""
    pairs = exportable_pairs(wd, cfg.include_source_copies)
    latest = latest_export(wd, cfg.name)
    if latest and latest.get("content_hash") == content_hash(pairs, cfg, _sets(wd)):
        return {"skipped": True, "path": latest["path"], "version": latest["version"], "pairs": pairs.height,
                "reason": "same pairs and options as the latest export"}
    return export_dataset(wd, cfg, progress, pairs)


def export_dataset(wd: Workdir, cfg: ExportConfig, progress=None, pairs: pl.DataFrame | None = None) -> dict:
    """Write the next (or the given) version atomically; returns its path, version and counts."""
    t0 = time.perf_counter()
    version = next_version(wd, cfg.name, cfg.version)
    if pairs is None:
        pairs = exportable_pairs(wd, cfg.include_source_copies)
    digest = content_hash(pairs, cfg, _sets(wd))
    task = progress.add_task("export", total=pairs.height, unit="pairs") if progress else None
    try:
        pairs = assign_splits(pairs, cfg.splits)
    except ValueError as e:
        raise StateError(f"export {cfg.name}: {e}") from None
    frames = {s: pairs.filter(pl.col("split") == s).drop("split") for s in SPLITS if cfg.splits[s] > 0}
    lineage = _lineage(wd)
    card = render_card(card_metadata(cfg.name, frames, cfg.license, cfg.tags),
                       _card_body(cfg.name, version, lineage, frames))
    final = wd.root / "exports" / cfg.name / version
    tmp = final.with_name(f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    write_dataset(tmp, frames, card)
    atomic_write_json(tmp / "paradistill.json", {"name": cfg.name, "version": version, "lineage": lineage,
                                                       "content_hash": digest})
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StateError(f"{final}: version {version} appeared meanwhile; run export again") from None
    if progress:
        progress.update(task, completed=pairs.height)
    return {"path": str(final), "version": version, "pairs": pairs.height,
            "splits": {s: f.height for s, f in frames.items()}, "seconds": round(time.perf_counter() - t0, 3)}

