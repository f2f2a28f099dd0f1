"""Calibrate step: fit the `quality` model to the labels, store it as a versioned artefact, and apply it.

Labelled pairs of the corpus take their scores from the current `scores` set; outside pairs are scored the same
way into `label_scores`. A calibration is `calibrations/vN/calibration.json` (features, coefficients, the score
sets and labels it was fit on, the cross-validated precision/recall curve and AUC); the same labels, scores and
settings reuse the version that holds them. The quality column is added to a copy of the score set, shard by
shard, so a new calibration never rescores the corpus and memory follows a shard.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import polars as pl

from curation.calibration import check, content_id, default_features, describe, fit, quality_expr
from pipelines.journal import recover
from pipelines.steps import embed as embed_step
from pipelines.steps.labels import current_labels
from pipelines.steps.pairs import content_key
from pipelines.steps.score import PAIR_COLUMNS, available_columns, score
from pipelines.store import Workdir, atomic_write_json
from schemas.errors import RecipeError, StateError
from schemas.recipe import CalibrateConfig, EmbedConfig, NLIConfig, ScoreConfig
from schemas.tables import SCORES


def usable_labels(wd: Workdir) -> pl.DataFrame:
    """One label per pair: a human label where there is one, else the newest judge label; unreadable (null)
    labels left out."""
    labels = current_labels(wd).filter(pl.col("label").is_not_null())
    return (labels.with_columns(_human=pl.col("origin") == "human")
            .sort(["_human", "at"], descending=[True, True])
            .unique("pair_id", keep="first").drop("_human").sort("pair_id"))


def base_score_set(wd: Workdir) -> str | None:
    """The current score set without a quality column: the current set, or the one its quality was added to."""
    sid = wd.current_set("scores")
    quality = wd.stage_done("quality", sid) if sid else None
    return quality["base_score_set"] if quality else sid


def labelled_scores(wd: Workdir, labels: pl.DataFrame, score_cfg: ScoreConfig, embed_cfg: EmbedConfig,
                    nli_cfg: NLIConfig, pool, partition_size: int, progress=None) -> tuple[pl.DataFrame, dict]:
    """The labels joined with their score columns (`in_scores`: a corpus pair's); outside pairs are embedded and
    scored here first."""
    base = base_score_set(wd)
    corpus = (wd.scan("scores").filter(pl.col("score_set") == base).drop("score_set")
              .join(labels.lazy().select("pair_id"), on="pair_id", how="semi").collect()
              .with_columns(in_scores=pl.lit(True)))
    outside = labels.join(corpus.select("pair_id"), on="pair_id", how="anti").select(*PAIR_COLUMNS)
    sets = {"scores": base, "label_scores": None}
    if outside.height:
        embed_step.embed_missing(wd, embed_cfg, outside, progress, backend=pool)
        stats = score(wd, score_cfg, embed_cfg, nli_cfg, outside, pool, partition_size, progress, table="label_scores")
        sets["label_scores"] = stats["score_set"]
        scored = pl.concat([corpus, wd.read_current("label_scores").drop("score_set")
                            .with_columns(in_scores=pl.lit(False))], how="diagonal_relaxed")
    else:
        scored = corpus
    return labels.join(scored.drop("source_id", "quality", strict=False), on="pair_id", how="inner"), sets


def _target(frame: pl.DataFrame, cfg: CalibrateConfig) -> pl.Expr:
    if cfg.target == "meaning":
        return pl.col("label")
    return pl.col("label") & pl.col("rewrite").fill_null(True)


def _versions(wd: Workdir) -> list[Path]:
    folder = wd.root / "calibrations"
    found = [p for p in folder.glob("v*/calibration.json") if re.fullmatch(r"v\d+", p.parent.name)]
    return sorted(found, key=lambda p: int(p.parent.name[1:]))


def load(path: str | Path, available: set[str]) -> dict:
    """A calibration file given in the recipe (score.calibration), checked against the recipe's columns."""
    p = Path(path)
    try:
        cal = json.loads(p.read_text())
    except FileNotFoundError:
        raise RecipeError(f"score.calibration: {p}: no such file; make one with paradistill calibrate") from None
    except (OSError, ValueError) as e:
        raise RecipeError(f"score.calibration: {p}: not readable as JSON ({e.__class__.__name__})") from None
    check(cal, available, f"score.calibration: {p}")
    return {**cal, "path": str(p.resolve())}


def calibrate(wd: Workdir, cfg: CalibrateConfig, score_cfg: ScoreConfig, embed_cfg: EmbedConfig,
              nli_cfg: NLIConfig, pool, partition_size: int, progress=None) -> dict:
    """Fit (or reuse) the calibration of the current labels and scores; returns it with `path` and `version`."""
    t0 = time.perf_counter()
    if wd.current_set("scores") is None:
        raise StateError(f"{wd.root}: no scores to calibrate; run paradistill curate (or score) first")
    recover(wd, "labels")  # a killed judge run's last answers are still in its journal
    labels = usable_labels(wd)
    if labels.height == 0:
        raise RecipeError("the quality scorer needs labels and the workdir has none: import a label file "
                          "(paradistill labels import FILE, or the recipe's labels:) or have a judge label a sample "
                          "(paradistill judge)")
    frame, sets = labelled_scores(wd, labels, score_cfg, embed_cfg, nli_cfg, pool, partition_size, progress)
    columns = {c: t for c, t in SCORES.items() if c in available_columns(score_cfg, nli_cfg) - {"quality"}}
    if cfg.features:
        unknown = [f for f in cfg.features if f not in columns]
        if unknown:
            raise RecipeError(f"calibrate.features: {', '.join(unknown)} is not a score column of this recipe; "
                              f"its columns: {', '.join(columns)}")
    features = cfg.features or default_features(columns, frame)
    frame = frame.with_columns(target=_target(frame, cfg))
    digest = content_key("labels", frame.select("pair_id", "target").sort("pair_id").hash_rows(seed=0).to_list())
    key = content_key("calibration-v1", cfg.model_dump(mode="json"), features, sets, digest)
    for path in reversed(_versions(wd)):
        cal = json.loads(path.read_text())
        if cal.get("key") == key:
            return {**cal, "path": str(path.relative_to(wd.root)), "reused": True,
                    "seconds": round(time.perf_counter() - t0, 3)}
    cal = fit(frame, features, cfg)
    versions = _versions(wd)
    version = int(versions[-1].parent.name[1:]) + 1 if versions else 1
    origin = frame.get_column("origin")
    cal.update({
        "version": version, "key": key, "id": content_id(cal), "score_sets": sets,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "labels": {"count": frame.height, "by_origin": {o: int((origin == o).sum()) for o in sorted(set(origin))},
                   "in_corpus": int(frame.get_column("in_scores").sum()),
                   "judge_models": sorted({m for m in frame.get_column("judge_model").drop_nulls()}),
                   "judge_prompts": sorted({m for m in frame.get_column("prompt_version").drop_nulls()}),
                   "files": sorted({f for f in frame.get_column("file").drop_nulls()})},
    })
    cal["summary"] = describe(cal)
    path = Path("calibrations") / f"v{version}" / "calibration.json"  # relative: a moved workdir keeps it
    (wd.root / path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(wd.root / path, cal)
    return {**cal, "path": str(path), "reused": False, "seconds": round(time.perf_counter() - t0, 3)}


def quality_set_id(base: str, cal: dict) -> str:
    return content_key("quality-v1", base, cal["id"])


def apply_quality(wd: Workdir, cal: dict) -> dict:
    """Make current a copy of the current score set with the calibrated `quality` column (shard by shard)."""
    t0 = time.perf_counter()
    base = wd.current_set("scores")
    sid = quality_set_id(base, cal)
    info = {"score_set": sid, "base_score_set": base, "calibration": cal["path"], "calibration_id": cal["id"],
            "version": cal.get("version")}
    if wd.stage_done("quality", sid):
        if wd.current_set("scores") != sid:
            wd.make_current("scores", sid)
        return {**info, "skipped": True}
    expr = quality_expr(cal)
    prefix = f"part-set-{base}-"
    shards = [p for p in wd.shards("scores") if p.name.startswith(prefix)]
    for k, shard in enumerate(shards):
        frame = pl.read_parquet(shard).filter(pl.col("score_set") == base)
        wd.append("scores", frame.with_columns(expr, score_set=pl.lit(sid)), key=f"{sid}-{k:06d}")
    wd.make_current("scores", sid)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    wd.mark_stage_done("quality", sid, info)
    return info


def calibration_in_use(wd: Workdir) -> dict | None:
    """The calibration behind the current score set's quality column (None when it has none)."""
    info = wd.stage_done("quality", wd.current_set("scores") or "")
    if not info:
        return None
    path = Path(info["calibration"])
    try:
        return {**json.loads((path if path.is_absolute() else wd.root / path).read_text()), "path": str(path)}
    except (OSError, ValueError):
        return None
