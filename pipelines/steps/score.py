"""Score step: every unique pair scored by the recipe's scorers into one `scores` set per score_set id.

A set is keyed by the scorer settings, the model ids and the pair set, so a rerun with the same inputs reuses
it. The pairs are scored in partitions (a source's pairs together) by the process pool; each partition is one
shard of the set, so an interrupted score resumes after its last written partition. A partition reads its
vectors and parses from the row stores (pipelines/rowstore.py) and its NLI probabilities through the cache.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from curation.nli import nli_model_id
from curation.scoring import PairAnalyses, score_pairs
from pipelines.partitions import by_source
from pipelines.pool import Pool
from pipelines.rowstore import RowsStore, VectorStore, opened
from pipelines.steps import embed as embed_step
from pipelines.steps import nli as nli_step
from pipelines.steps.analyses import analyses_store, analyzer_id, parse_missing
from pipelines.steps.pairs import PairTexts, content_key, pair_set_hash, unique_texts
from pipelines.store import Workdir
from schemas.recipe import EmbedConfig, NLIConfig, ScoreConfig
from schemas.tables import SCORER_COLUMNS

SCORERS_VERSION = "v1"  # bump when a scorer's definition changes, so stored sets are not reused
PAIR_COLUMNS = ("pair_id", "source_id", "candidate_id", "source", "paraphrase")
ID_COLUMNS = PAIR_COLUMNS[:3]


def active_scorers(cfg: ScoreConfig, nli_cfg: NLIConfig) -> list[str]:
    """The scorers this step runs; `quality` is not one of them: it is computed from their columns afterwards
    (pipelines/steps/calibrate.py), so a new calibration never rescores the corpus."""
    return [s for s in SCORER_COLUMNS if s != "quality" and (s in cfg.scorers or (s == "nli" and nli_cfg.model))]


def available_columns(cfg: ScoreConfig, nli_cfg: NLIConfig) -> set[str]:
    names = [*active_scorers(cfg, nli_cfg), *(["quality"] if "quality" in cfg.scorers else [])]
    return {c for s in names for c in SCORER_COLUMNS[s]}


def needs_parse(cfg: ScoreConfig) -> bool:
    return bool({"wpd_ld", "ted"} & set(cfg.scorers))


def score_set_id(cfg: ScoreConfig, embed_cfg: EmbedConfig, nli_cfg: NLIConfig, pairs: pl.DataFrame) -> str:
    scorers = active_scorers(cfg, nli_cfg)
    return content_key("scores", SCORERS_VERSION, scorers, cfg.spacy_model,
                       embed_step.model_id(embed_cfg) if "cosine" in scorers else None,
                       nli_step.settings_key(nli_cfg) if "nli" in scorers else None, pair_set_hash(pairs))


def _score_rows(ctx: dict, rows: pl.DataFrame) -> pl.DataFrame:
    """Scores of one partition (in a pool worker or a Ray actor): gathers its texts, vectors and parses from the
    stores named in `ctx`, then runs the scorers; `rows` are the partition's pairs (ids, or with texts), with
    their NLI probabilities as `nli_fwd`/`nli_bwd` when NLI is scored."""
    kwargs = {}
    pairs = rows.drop("nli_fwd", "nli_bwd", strict=False)
    if "source" not in pairs.columns:  # ids only: the texts come from the stores
        pairs = opened(PairTexts, ctx["texts"]).attach(pairs)
    if ctx.get("vectors"):
        vs = opened(VectorStore, ctx["vectors"])
        kwargs["src_vecs"] = vs.vectors(pairs.get_column("source_id"))
        kwargs["para_vecs"] = vs.vectors(pairs.get_column("candidate_id"))
    if ctx.get("analyses"):
        ids = unique_texts(pairs).get_column("text_id")
        an = opened(RowsStore, ctx["analyses"]).take(ids).with_columns(text_id=ids).with_row_index("row")
        index = an.select("text_id", "row")

        def row_of(col: str) -> np.ndarray:
            return (pairs.select(pl.col(col).alias("text_id")).join(index, on="text_id", how="left",
                                                                     maintain_order="left")
                    .get_column("row").to_numpy().astype(np.int64))

        kwargs["analyses"] = PairAnalyses(an, row_of("source_id"), row_of("candidate_id"))
    if "nli_fwd" in rows.columns:
        kwargs["nli"] = (rows.get_column("nli_fwd").to_numpy(), rows.get_column("nli_bwd").to_numpy())
    return score_pairs(pairs, ctx["scorers"], **kwargs)


def _stale_partitions(wd: Workdir, sid: str, layout: str, table: str) -> None:
    """Drop the shards an interrupted run of this set wrote with another partition layout (or as one shard,
    as versions before partitions did)."""
    folder = wd.tables_dir / table
    for p in [*folder.glob(f"part-set-{sid}-*.parquet"), folder / f"part-set-{sid}.parquet"]:
        if p.exists() and not p.name.startswith(f"part-set-{sid}-{layout}-"):
            p.unlink()


def score(wd: Workdir, cfg: ScoreConfig, embed_cfg: EmbedConfig, nli_cfg: NLIConfig, pairs: pl.DataFrame,
          pool: Pool, partition_size: int, progress=None, store: PairTexts | None = None,
          table: str = "scores") -> dict:
    """Compute (or reuse) the scores of `pairs` (ids only, or with texts) and make them the current set.

    The pool's tasks carry pair ids; each worker takes its partition's texts from the text stores (`store`,
    or opened here). `table` "label_scores" scores labelled pairs from outside the corpus (with texts) the same
    way, apart from the corpus' scores."""
    t0 = time.perf_counter()
    stage = "score" if table == "scores" else "label-score"
    sid = score_set_id(cfg, embed_cfg, nli_cfg, pairs)
    done = wd.stage_done(stage, sid)
    if done:
        if wd.current_set(table) != sid:
            wd.make_current(table, sid)
        return {**done, "skipped": True}
    scorers = active_scorers(cfg, nli_cfg)
    stats: dict = {"score_set": sid, "pairs": pairs.height, "scorers": scorers, "seconds_by_input": {},
                   "partition_size": partition_size, "workers": pool.workers,
                   # what `paradistill calibrate` without a recipe scores outside labelled pairs with
                   "settings": {"score": cfg.model_dump(mode="json"), "embed": embed_cfg.model_dump(mode="json"),
                                "nli": nli_cfg.model_dump(mode="json")}}
    task_base: dict = {"scorers": scorers}
    columns = PAIR_COLUMNS if "source" in pairs.columns else ID_COLUMNS
    if columns == ID_COLUMNS:
        store = store or PairTexts.open(wd)
        task_base["texts"] = store.paths
    if "cosine" in scorers:
        t = time.perf_counter()
        task_base["vectors"] = VectorStore.open(wd, embed_step.model_id(embed_cfg)).path
        stats["seconds_by_input"]["vectors"] = round(time.perf_counter() - t, 3)
    if needs_parse(cfg):
        t = time.perf_counter()
        stats["parse"] = parse_missing(wd, unique_texts(pairs.select(columns)), cfg.spacy_model, pool,
                                       partition_size, progress, store=store)
        pool.recycle()  # the parse workers hold spaCy and its grown vocabulary; scoring needs neither: fresh ones
        task_base["analyses"] = analyses_store(wd, cfg.spacy_model).path
        stats["analyzer"] = analyzer_id(cfg.spacy_model)
        stats["seconds_by_input"]["parses"] = round(time.perf_counter() - t, 3)
    nli = None
    if "nli" in scorers:  # one pass over every pair, as before partitions: the model's batches (and so the last
        t = time.perf_counter()  # bits of its probabilities) do not depend on the partition size
        fwd, bwd = nli_step.both_directions(wd, nli_cfg, pairs if columns == PAIR_COLUMNS else store.attach(pairs),
                                            progress, backend=pool)
        nli = (fwd.astype(np.float64), bwd.astype(np.float64))
        stats["nli_model"] = nli_model_id(nli_cfg.model)
        stats["seconds_by_input"]["nli"] = round(time.perf_counter() - t, 3)
    # one pool task per partition / workers, so the pairs in flight stay about one partition
    task_size = max(1, -(-partition_size // pool.workers))
    parts = by_source(pairs, task_size)
    layout = f"{task_size}"
    _stale_partitions(wd, sid, layout, table)
    key = lambda k: f"{sid}-{layout}-{k:06d}"  # noqa: E731
    todo = [k for k in range(len(parts)) if not (wd.tables_dir / table / f"part-set-{key(k)}.parquet").exists()]
    stats.update({"partitions": len(parts), "partitions_reused": len(parts) - len(todo)})
    bar = progress.add_task(stage, total=pairs.height, unit="pairs") if progress else None
    if bar is not None:
        progress.advance(bar, pairs.height - sum(len(parts[k]) for k in todo))

    rows = np.concatenate([parts[k] for k in todo]) if todo else np.zeros(0, dtype=np.int64)
    plan = pairs[rows].select(columns).with_columns(part=pl.Series(np.repeat(todo, [len(parts[k]) for k in todo]),
                                                                   dtype=pl.Int64))
    if nli is not None:
        plan = plan.with_columns(nli_fwd=pl.Series(nli[0][rows]), nli_bwd=pl.Series(nli[1][rows]))
    t = time.perf_counter()
    for k, scores in pool.map_groups(_score_rows, task_base, plan, "part"):
        wd.append(table, scores.with_columns(score_set=pl.lit(sid)), key=key(k))
        if bar is not None:
            progress.advance(bar, scores.height)
    stats["seconds_by_input"]["metrics"] = round(time.perf_counter() - t, 3)
    wd.make_current(table, sid)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    wd.mark_stage_done(stage, sid, stats)
    return stats
