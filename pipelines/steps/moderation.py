"""Moderation step: each text is checked once per moderation model; flagged ones are quarantined with categories.

Flagged sources are never sent to the teacher; candidates whose paraphrase was flagged leave the curation set.
"""

from __future__ import annotations

import polars as pl

from curation.ingest import _preview
from curation.teachers.moderation import moderate
from curation.teachers.openai_chat import make_sync_client, resolve_server
from pipelines.store import Workdir


def _check(wd: Workdir, cfg, texts: pl.DataFrame, role: str) -> pl.DataFrame:
    """Moderate the (text_id, text) rows not yet checked with this model; returns the new verdict rows."""
    m = cfg.moderation
    seen = wd.scan("moderation").filter((pl.col("model") == m.model) & (pl.col("role") == role)).select("text_id")
    todo = texts.join(seen.collect(), on="text_id", how="anti").unique("text_id", keep="first")
    if todo.height == 0:
        return pl.DataFrame()
    base_url, key = resolve_server(cfg.base_url, cfg.api_key_env)
    verdicts = list(moderate(make_sync_client(base_url, key, 60.0), todo["text"].to_list(), m.model, m.batch_size))
    return todo.with_columns(model=pl.lit(m.model), role=pl.lit(role),
                             flagged=pl.Series([f for f, _ in verdicts], dtype=pl.Boolean),
                             categories=pl.Series([c for _, c in verdicts], dtype=pl.List(pl.String)))


def _quarantine(rows: pl.DataFrame, origin: pl.Expr, origin_row: pl.Expr, field: str) -> pl.DataFrame:
    return rows.filter("flagged").select(
        origin.alias("origin"), origin_row.alias("origin_row"), pl.lit(field).alias("field"),
        pl.concat_str(pl.lit("moderation flagged: "), pl.col("categories").list.join(", ")).alias("reason"),
        pl.col("text").map_elements(_preview, return_dtype=pl.String).alias("raw"), pl.lit("moderation").alias("stage"),
        pl.col("model").alias("ingest_id"))


def moderate_sources(wd: Workdir, cfg) -> tuple[set[str], dict]:
    """Flagged source ids (now and before), after checking the sources not yet checked."""
    src = wd.read("sources").select(pl.col("source_id").alias("text_id"), "text", "origin", "origin_row")
    new = _check(wd, cfg, src.select("text_id", "text"), "source")
    if new.height:
        q = _quarantine(new.join(src.select("text_id", "origin", "origin_row"), on="text_id"),
                        pl.col("origin"), pl.col("origin_row"), "text")
        wd.append("quarantine", q)
        wd.append("moderation", new)
    flagged = flagged_ids(wd, cfg.moderation.model, "source")
    return flagged, {"checked": new.height, "flagged": len(flagged)}


def moderate_outputs(wd: Workdir, cfg) -> dict:
    """Check every candidate paraphrase not yet checked; flagged ones are quarantined (candidates stay, unused)."""
    cands = wd.read("candidates").filter(~pl.col("is_repeat")).select(
        pl.col("candidate_id").alias("text_id"), pl.col("paraphrase").alias("text"), "request_id", "item_index")
    new = _check(wd, cfg, cands.select("text_id", "text"), "output")
    if new.height:
        first = cands.unique("text_id", keep="first").select("text_id", "request_id", "item_index")
        q = _quarantine(new.join(first, on="text_id"), pl.concat_str(pl.lit("generations:"), pl.col("request_id")),
                        pl.col("item_index") + 1, "items")
        wd.append("quarantine", q)
        wd.append("moderation", new)
    return {"checked": new.height, "flagged": len(flagged_ids(wd, cfg.moderation.model, "output"))}


def flagged_ids(wd: Workdir, model: str | None = None, role: str | None = None) -> set[str]:
    q = wd.scan("moderation").filter(pl.col("flagged"))
    if model:
        q = q.filter(pl.col("model") == model)
    if role:
        q = q.filter(pl.col("role") == role)
    return set(q.select("text_id").collect().get_column("text_id"))
