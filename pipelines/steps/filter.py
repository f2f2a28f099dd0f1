"""Filter step: recipe rules + dedup removals + top-k -> decisions, funnel and corpus metrics (one set each)."""

from __future__ import annotations

import time

import polars as pl

from curation.filters import decide
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


def run_filter(wd: Workdir, cfg: FilterConfig, pairs: pl.DataFrame, candidate_rows: int, dedup_methods: list[str]
               ) -> dict:
    """Decide every unique pair from the current scores and dedup links; store and make current the results."""
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
    decisions, funnel = decide(scored, removed, cfg, dedup_methods)
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
             "funnel": funnel.select("rule", "pairs_in", "dropped", "pairs_out").to_dicts(),
             "seconds": round(time.perf_counter() - t0, 3)}
    wd.mark_stage_done("filter", fid, stats)
    return stats
