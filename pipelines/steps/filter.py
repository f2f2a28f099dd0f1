"""Filter step: recipe rules + dedup removals + top-k -> decisions, funnel and corpus metrics (one set each)."""

from __future__ import annotations

import time

import polars as pl

from curation.calibration import why
from curation.filters import decide, describe, resolve_targets
from curation.metrics.corpus import corpus_metrics_split
from pipelines.steps.pairs import content_key
from pipelines.store import Workdir
from schemas.recipe import FilterConfig
from schemas.tables import CORPUS_METRICS

REPEAT_STEP = ("repeat", "the same pair again from another sample or request")


def filter_id(cfg: FilterConfig, score_set: str, dedup_id: str, candidate_rows: int) -> str:
    return content_key("filter-v1", cfg.model_dump(), score_set, dedup_id, candidate_rows)


def metrics_by_selection(pairs: pl.DataFrame, scores: pl.DataFrame, decisions: pl.DataFrame) -> pl.DataFrame:
    """Method B's dataset-quality columns for all, kept and dropped pairs.

    The rows keep `pairs`' order (MSTTR's token stream follows it, whatever order the scores were written in);
    the join carries each pair's row number,
    not its texts, which are tokenised once, in `pairs`, for the three selections."""
    row = "__pair_row__"
    df = (pairs.select("pair_id").with_row_index(row)
          .join(scores.drop("source_id"), on="pair_id", maintain_order="left")
          .join(decisions.select("pair_id", "kept"), on="pair_id", maintain_order="left"))
    texts = pairs.select("source_id", "source", "paraphrase")
    by_selection = corpus_metrics_split(df.drop(row, "kept"), df.get_column("kept"), texts=texts, rows=df[row])
    frame = pl.DataFrame([{"selection": name, **m} for name, m in by_selection.items()], infer_schema_length=None)
    return frame.select([pl.col(c).cast(t) if c in frame.columns else pl.lit(None, t).alias(c)
                         for c, t in CORPUS_METRICS.items() if c != "filter_id"])


def explain_quality(decisions: pl.DataFrame, scored: pl.DataFrame, calibration: dict | None) -> pl.DataFrame:
    """Decisions with each pair's quality and, for a dropped pair, the features that pulled its quality down."""
    if calibration is None or "quality" not in scored.columns:
        return decisions.with_columns(quality=pl.lit(None, pl.Float64), quality_why=pl.lit(None, pl.String))
    df = decisions.join(scored.drop("source_id"), on="pair_id", how="left", maintain_order="left")
    dropped = ~df.get_column("kept")
    reasons = pl.Series("quality_why", [None] * df.height, dtype=pl.String)
    if dropped.any():
        idx = dropped.arg_true()
        reasons = reasons.scatter(idx, why(df[idx], calibration))
    return decisions.with_columns(quality=df.get_column("quality"), quality_why=reasons)


def run_filter(wd: Workdir, cfg: FilterConfig, pairs: pl.DataFrame, candidate_rows: int, dedup_methods: list[str],
               calibration: dict | None = None) -> dict:
    """Decide every unique pair from the current scores and dedup links; store and make current the results.

    `calibration`: the one behind the scores' quality column (its precision targets become thresholds here)."""
    t0 = time.perf_counter()
    score_set, dedup_set = wd.current_set("scores"), wd.current_set("dedup_links")
    fid = filter_id(cfg, score_set, dedup_set, candidate_rows)
    done = wd.stage_done("filter", fid)
    if done:
        for table in ("decisions", "funnel", "corpus_metrics"):
            if wd.current_set(table) != fid:
                wd.make_current(table, fid)
        return {**done, "skipped": True}
    scores = wd.read_current("scores").drop("score_set")
    removed = wd.read_current("dedup_links")
    scored = pairs.select("pair_id").join(scores, on="pair_id", how="left", maintain_order="left")
    resolved, targets = resolve_targets(cfg, calibration)
    decisions, funnel = decide(scored, removed, resolved, dedup_methods)
    decisions = explain_quality(decisions, scored, calibration)
    for rule in cfg.rules:  # a precision target's row says what it asked for and what that chose
        if rule.name in targets:
            t = targets[rule.name]
            text = (f"{describe(rule)}: quality >= {t['threshold']:.4f} (cross-validated precision "
                    f"{t['precision']:.3f}, recall {t['recall']:.3f}; calibration v{t['calibration']})")
            funnel = funnel.with_columns(description=pl.when(pl.col("rule") == rule.name).then(pl.lit(text))
                                         .otherwise(pl.col("description")))
    first = pl.DataFrame({"step": [0], "rule": [REPEAT_STEP[0]], "description": [REPEAT_STEP[1]],
                          "pairs_in": [candidate_rows], "dropped": [candidate_rows - pairs.height],
                          "pairs_out": [pairs.height]})
    funnel = pl.concat([first, funnel])
    corpus = metrics_by_selection(pairs, scores, decisions)
    for table, frame in (("decisions", decisions), ("funnel", funnel), ("corpus_metrics", corpus)):
        wd.append(table, frame.with_columns(filter_id=pl.lit(fid)), key=fid)
        wd.make_current(table, fid)
    kept = int(decisions.get_column("kept").sum())
    stats = {"filter_id": fid, "pairs": pairs.height, "kept": kept, "dropped": pairs.height - kept,
             **({"thresholds": targets} if targets else {}),
             "funnel": funnel.select("rule", "pairs_in", "dropped", "pairs_out").to_dicts(),
             "seconds": round(time.perf_counter() - t0, 3)}
    wd.mark_stage_done("filter", fid, stats)
    return stats
