"""Dedup step: exact, FAISS-semantic and (with an NLI model) NLI-graph dedup over the unique pairs.

Writes one dedup_links set per dedup_id (settings + embedding model + pair set); a rerun with the same inputs
reuses it. The pair kept in each duplicate group is the one most similar to its source (cosine).

Memory stays bounded at any corpus size: vectors are read from the vector store (a memory-mapped file) in chunks of
CHUNK pairs, never all at once; the semantic search holds its index (8-bit codes above `exact_max` vectors).
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from curation.dedup import TakeVectors, choose_index, empty_links, exact_links, gather, nli_graph_links, semantic_links
from pipelines.pool import trim_heap
from pipelines.rowstore import VectorStore
from pipelines.steps import embed as embed_step
from pipelines.steps import nli as nli_step
from pipelines.steps.pairs import PairTexts, content_key, pair_set_hash
from pipelines.store import Workdir
from schemas.recipe import DedupConfig, EmbedConfig, NLIConfig

CHUNK = 50_000  # pairs whose vectors are gathered at once


def methods(cfg: DedupConfig) -> list[str]:
    """The dedup steps these settings run, in funnel order."""
    out = ["exact-source", "exact"] if cfg.exact else []
    out += ["semantic-source"] if cfg.within_source is not None else []
    out += ["semantic-corpus"] if cfg.across_sources is not None else []
    out += ["nli-graph"] if cfg.nli_graph else []
    return out


def dedup_id(cfg: DedupConfig, embed_cfg: EmbedConfig, nli_cfg: NLIConfig, pairs: pl.DataFrame) -> str:
    nli = nli_step.settings_key(nli_cfg) if cfg.nli_graph else None
    return content_key("dedup-v1", cfg.model_dump(), embed_step.model_id(embed_cfg), nli, pair_set_hash(pairs))


def _store_rows(vs: VectorStore, pairs: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The vector-store rows of every pair's source and paraphrase."""
    try:
        return vs.rows_of(pairs.get_column("source_id")), vs.rows_of(pairs.get_column("candidate_id"))
    except KeyError as e:
        raise RuntimeError(f"embeddings missing for some texts ({e.args[0]}); run the embed stage first") from None


def _cosines(vs: VectorStore, src_rows: np.ndarray, para_rows: np.ndarray) -> np.ndarray:
    """Cosine of each pair's source and paraphrase (float32, the same expression per row as over all rows at once),
    CHUNK pairs at a time."""
    out = np.zeros(src_rows.size, dtype=np.float32)
    for a in range(0, src_rows.size, CHUNK):
        src, para = gather(vs, src_rows[a:a + CHUNK]), gather(vs, para_rows[a:a + CHUNK])
        out[a:a + CHUNK] = (src * para).sum(axis=1)
    return out


def _nli_edges(wd: Workdir, cfg: DedupConfig, nli_cfg: NLIConfig, rest: pl.DataFrame, vecs: np.ndarray,
               progress) -> list[tuple[int, int, float]]:
    """Pairs of one group whose targets entail each other (both ways >= threshold); in a context (method B) also
    pairs whose sources do (the same source counts as entailing itself)."""
    groups = rest.get_column("group_id").to_list()
    contextual = rest.get_column("group_id") != rest.get_column("source_id")
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    tgt, src, same = [], [], []
    src_ids = rest.get_column("source_id").to_list()
    for members in by_group.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1:]:
                if float(vecs[a] @ vecs[b]) >= cfg.nli_min_cosine:
                    tgt.append((a, b))
                if contextual[a]:
                    (same if src_ids[a] == src_ids[b] else src).append((a, b))
    edges = [(a, b, 1.0) for a, b in same]
    for side, cand in (("candidate_id", tgt), ("source_id", src)):
        if not cand:
            continue
        text_col = "paraphrase" if side == "candidate_id" else "source"
        ids, texts = rest.get_column(side).to_list(), rest.get_column(text_col).to_list()
        a_idx, b_idx = [a for a, _ in cand], [b for _, b in cand]
        frame = pl.DataFrame({
            "premise_id": [ids[i] for i in a_idx + b_idx], "premise": [texts[i] for i in a_idx + b_idx],
            "hypothesis_id": [ids[i] for i in b_idx + a_idx], "hypothesis": [texts[i] for i in b_idx + a_idx]})
        probs = nli_step.entailment(wd, nli_cfg, frame, progress, label="nli graph")
        mutual = np.minimum(probs[: len(cand)], probs[len(cand):])
        edges += [(a, b, float(m)) for (a, b), m in zip(cand, mutual, strict=True) if m >= cfg.nli_threshold]
    return edges


def dedup(wd: Workdir, cfg: DedupConfig, embed_cfg: EmbedConfig, nli_cfg: NLIConfig, pairs: pl.DataFrame,
          progress=None, store: PairTexts | None = None) -> dict:
    """Compute (or reuse) the dedup links of `pairs` (ids only, or with texts) and make them the current set.

    Only the NLI graph reads texts: those of the pairs left after the other methods (from `store` when `pairs`
    are ids only)."""
    t0 = time.perf_counter()
    did = dedup_id(cfg, embed_cfg, nli_cfg, pairs)
    stats: dict = {"dedup_id": did, "pairs": pairs.height, "methods": methods(cfg)}
    done = wd.stage_done("dedup", did)
    if done:
        if wd.current_set("dedup_links") != did:
            wd.make_current("dedup_links", did)
        return {**done, "skipped": True}
    vs = VectorStore.open(wd, embed_step.model_id(embed_cfg))
    src_rows, para_rows = _store_rows(vs, pairs)
    cosine = _cosines(vs, src_rows, para_rows)
    work = pairs.with_columns(priority=pl.Series(cosine, dtype=pl.Float64)).with_row_index("_vec")
    links = [exact_links(work.lazy()) if cfg.exact else empty_links()]
    rest = work.join(links[0].select("pair_id"), on="pair_id", how="anti").sort("pair_id")
    index = choose_index(rest.height, cfg.index, cfg.exact_max)
    search: dict = {}
    vecs = TakeVectors(vs, para_rows[rest.get_column("_vec").to_numpy()])
    sem = semantic_links(rest, vecs, cfg.within_source, cfg.across_sources, cfg.neighbors, index,
                         ivf_lists=cfg.ivf_lists, ivf_probe=cfg.ivf_probe, recall_sample=cfg.recall_sample,
                         info=search)
    stats["index"] = search.get("label", index) if cfg.across_sources is not None else None
    if cfg.across_sources is not None:
        stats["search"] = search  # index kind, parameters, timings and (approximate kinds) measured recall
    links.append(sem)
    if cfg.nli_graph:
        rest = rest.join(sem.select("pair_id"), on="pair_id", how="anti").sort("pair_id")
        if "source" not in rest.columns:
            rest = (store or PairTexts.open(wd)).attach(rest)
        fwd, bwd = nli_step.both_directions(wd, nli_cfg, rest, progress)
        rest = rest.with_columns(priority=pl.Series(fwd.astype(np.float64) + bwd))
        vecs = gather(vs, para_rows[rest.get_column("_vec").to_numpy()])
        links.append(nli_graph_links(rest, _nli_edges(wd, cfg, nli_cfg, rest, vecs, progress)))
    all_links = pl.concat(links).with_columns(dedup_id=pl.lit(did))
    wd.append("dedup_links", all_links, key=did)
    wd.make_current("dedup_links", did)
    counts = all_links.group_by("method").len().sort("method")
    stats["removed"] = dict(zip(counts["method"].to_list(), counts["len"].to_list(), strict=True))
    del vecs, rest, work, links, sem
    trim_heap()  # the index and its search results are gone: the stages after this one run beside workers
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    wd.mark_stage_done("dedup", did, stats)
    return stats
