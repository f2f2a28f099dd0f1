"""Score step: every unique pair scored by the recipe's scorers into one `scores` set per score_set id.

A set is keyed by the scorer settings, the model ids and the pair set, so a rerun with the same inputs reuses
it; a new set is cheap because embeddings, parses and NLI probabilities are cached per text (pair).
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from curation.scoring import PairAnalyses, score_pairs
from pipelines.steps import embed as embed_step
from pipelines.steps import nli as nli_step
from pipelines.steps.analyses import analyses, analyzer_id
from pipelines.steps.pairs import content_key, pair_set_hash, unique_texts
from pipelines.store import Workdir
from schemas.recipe import EmbedConfig, NLIConfig, ScoreConfig
from schemas.tables import SCORER_COLUMNS

SCORERS_VERSION = "v1"  # bump when a scorer's definition changes, so stored sets are not reused


def active_scorers(cfg: ScoreConfig, nli_cfg: NLIConfig) -> list[str]:
    return [s for s in SCORER_COLUMNS if s in cfg.scorers or (s == "nli" and nli_cfg.model)]


def available_columns(cfg: ScoreConfig, nli_cfg: NLIConfig) -> set[str]:
    return {c for s in active_scorers(cfg, nli_cfg) for c in SCORER_COLUMNS[s]}


def score_set_id(cfg: ScoreConfig, embed_cfg: EmbedConfig, nli_cfg: NLIConfig, pairs: pl.DataFrame) -> str:
    scorers = active_scorers(cfg, nli_cfg)
    return content_key("scores", SCORERS_VERSION, scorers, cfg.spacy_model,
                       embed_step.model_id(embed_cfg) if "cosine" in scorers else None,
                       nli_step.settings_key(nli_cfg) if "nli" in scorers else None, pair_set_hash(pairs))


def score(wd: Workdir, cfg: ScoreConfig, embed_cfg: EmbedConfig, nli_cfg: NLIConfig, pairs: pl.DataFrame,
          progress=None) -> dict:
    """Compute (or reuse) the scores of `pairs` and make them the current set."""
    t0 = time.perf_counter()
    sid = score_set_id(cfg, embed_cfg, nli_cfg, pairs)
    done = wd.stage_done("score", sid)
    if done:
        if wd.current_set("scores") != sid:
            wd.make_current("scores", sid)
        return {**done, "skipped": True}
    scorers = active_scorers(cfg, nli_cfg)
    stats: dict = {"score_set": sid, "pairs": pairs.height, "scorers": scorers, "seconds_by_input": {}}
    kwargs: dict = {}
    if "cosine" in scorers:
        t = time.perf_counter()
        mid = embed_step.model_id(embed_cfg)
        kwargs["src_vecs"] = embed_step.vectors(wd, mid, pairs.get_column("source_id"))
        kwargs["para_vecs"] = embed_step.vectors(wd, mid, pairs.get_column("candidate_id"))
        stats["seconds_by_input"]["vectors"] = round(time.perf_counter() - t, 3)
    if {"wpd_ld", "ted"} & set(scorers):
        t = time.perf_counter()
        an = analyses(wd, unique_texts(pairs), cfg.spacy_model, progress).with_row_index("row")
        rows = an.select("text_id", "row")

        def row_of(col: str) -> np.ndarray:
            return (pairs.select(pl.col(col).alias("text_id")).join(rows, on="text_id", how="left",
                                                                     maintain_order="left")
                    .get_column("row").to_numpy().astype(np.int64))

        kwargs["analyses"] = PairAnalyses(an, row_of("source_id"), row_of("candidate_id"))
        stats["analyzer"] = analyzer_id(cfg.spacy_model)
        stats["seconds_by_input"]["parses"] = round(time.perf_counter() - t, 3)
    if "nli" in scorers:
        t = time.perf_counter()
        fwd, bwd = nli_step.both_directions(wd, nli_cfg, pairs, progress)
        kwargs["nli"] = (fwd.astype(np.float64), bwd.astype(np.float64))
        stats["nli_model"] = nli_step.nli_model(nli_cfg).model_id
        stats["seconds_by_input"]["nli"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    scores = score_pairs(pairs, scorers, **kwargs).with_columns(score_set=pl.lit(sid))
    stats["seconds_by_input"]["metrics"] = round(time.perf_counter() - t, 3)
    wd.append("scores", scores, key=sid)
    wd.make_current("scores", sid)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    wd.mark_stage_done("score", sid, stats)
    return stats
