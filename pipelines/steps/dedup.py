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

from curation.dedup import (
    TakeVectors,
    best_candidates,
    choose_index,
    cluster_neighbours,
    empty_links,
    exact_links,
    gather,
    kmeans_centroids,
    nearest_clusters,
    nli_graph_links,
    other_group_edges,
    semantic_links,
)
from pipelines.pool import trim_heap
from pipelines.rowstore import VectorStore, opened
from pipelines.steps import embed as embed_step
from pipelines.steps import nli as nli_step
from pipelines.steps.pairs import PairTexts, content_key, pair_set_hash
from pipelines.store import Workdir
from schemas.recipe import DedupConfig, EmbedConfig, NLIConfig

CHUNK = 50_000  # pairs whose vectors are gathered at once
CLUSTER_ROWS = 50_000  # kmeans: vectors per cluster (one exact search task each) when the recipe gives no count
EXACT_TASKS_PER_WORKER = 2  # distributed exact dedup: hash partitions of the pairs per worker


def methods(cfg: DedupConfig) -> list[str]:
    """The dedup steps these settings run, in funnel order."""
    out = ["exact-source", "exact"] if cfg.exact else []
    out += ["semantic-source"] if cfg.within_source is not None else []
    out += ["semantic-corpus"] if cfg.across_sources is not None else []
    out += ["nli-graph"] if cfg.nli_graph else []
    return out


def distributed(backend) -> bool:
    return bool(getattr(backend, "distributed", False))


def index_kind(cfg: DedupConfig, n: int, backend) -> str:
    """The corpus search: `cfg.index`, or for auto flat up to exact_max vectors, above it ivf in this process or,
    on a distributed backend, kmeans spread over its workers."""
    kind = choose_index(n, cfg.index, cfg.exact_max)
    return "kmeans" if cfg.index == "auto" and kind == "ivf" and distributed(backend) else kind


def dedup_id(cfg: DedupConfig, embed_cfg: EmbedConfig, nli_cfg: NLIConfig, pairs: pl.DataFrame,
             backend=None) -> str:
    nli = nli_step.settings_key(nli_cfg) if cfg.nli_graph else None
    parts = ["dedup-v1", cfg.model_dump(), embed_step.model_id(embed_cfg), nli, pair_set_hash(pairs)]
    if cfg.index == "auto" and distributed(backend):  # its auto may search with kmeans where a local run uses ivf
        parts.append("auto-distributed")
    return content_key(*parts)


def _exact_rows(ctx: dict, rows: pl.DataFrame) -> pl.DataFrame:
    """One hash partition's exact duplicates (every pair of a paraphrase text is in the same partition)."""
    return exact_links(rows)


def _exact_on(backend, work: pl.DataFrame) -> pl.DataFrame:
    """`exact_links(work)` as a distributed group-by: the pairs hashed by paraphrase into tasks on the backend's
    workers; the same rows in the same order (source copies, then duplicates best first)."""
    copies = exact_links(work.filter(pl.col("is_source_copy")))
    tasks = max(1, backend.workers * EXACT_TASKS_PER_WORKER)
    plan = (work.filter(~pl.col("is_source_copy"))
            .select("pair_id", "source_id", "candidate_id", "is_source_copy", "priority")
            .with_columns(task=(pl.col("candidate_id").hash(0) % tasks).cast(pl.Int64))
            .sort("task", maintain_order=True))
    dups = pl.concat([empty_links(), *(out for _, out in backend.map_groups(_exact_rows, {}, plan, "task"))])
    dups = (dups.join(work.select("pair_id", "priority"), on="pair_id")
            .sort(["priority", "pair_id"], descending=[True, False], nulls_last=True).drop("priority"))
    return pl.concat([copies, dups])


def _cluster_rows(ctx: dict, rows: pl.DataFrame) -> pl.DataFrame:
    """One cluster's search (on a worker): its queries (`row`, `store_row`) against its members, exactly."""
    vs = opened(VectorStore, ctx["vectors"])
    db = rows.filter(pl.col("member"))
    q, d, sims = cluster_neighbours(TakeVectors(vs, db.get_column("store_row").to_numpy()),
                                    TakeVectors(vs, rows.get_column("store_row").to_numpy()), ctx["k"],
                                    ctx["threshold"])
    return pl.DataFrame({"a": rows.get_column("row").to_numpy()[q], "b": db.get_column("row").to_numpy()[d],
                         "s": sims})


def clustered_search(cfg: DedupConfig, vs: VectorStore, store_rows: np.ndarray, backend):
    """`semantic_links`' across-group search as kmeans clusters searched on `backend`'s workers: k-means on a
    seeded sample, each vector stored in its nearest cluster and searched in its `kmeans_probe` nearest, then
    each query's `neighbors` + 1 best; recall against exact search is measured on a sample (several clusters)."""
    def search(src, gcode: np.ndarray, info: dict):
        n, k = len(src), cfg.neighbors + 1
        t0 = time.perf_counter()
        clusters = cfg.kmeans_clusters or max(1, round(n / CLUSTER_ROWS))
        near = nearest_clusters(src, kmeans_centroids(src, clusters), cfg.kmeans_probe)
        clusters, probe = min(clusters, n), near.shape[1]
        info.update(clusters=clusters, probe=probe, label=f"kmeans:clusters={clusters},probe={probe}",
                    build_seconds=round(time.perf_counter() - t0, 3))
        t0 = time.perf_counter()
        rows = np.repeat(np.arange(n, dtype=np.int64), probe)
        plan = pl.DataFrame({"row": rows, "store_row": store_rows[rows], "member": np.tile(np.arange(probe) == 0, n),
                             "cluster": near.ravel()}).sort("cluster", maintain_order=True)
        ctx = {"vectors": vs.path, "k": k, "threshold": cfg.across_sources}
        found = [out for _, out in backend.map_groups(_cluster_rows, ctx, plan, "cluster")]
        edges = pl.concat(found)
        q, d, sims = best_candidates(edges.get_column("a").to_numpy(), edges.get_column("b").to_numpy(),
                                     edges.get_column("s").to_numpy(), k)
        info["search_seconds"] = round(time.perf_counter() - t0, 3)
        return other_group_edges(q, d, sims, gcode, n, recall_of=src if clusters > 1 else None,
                                 threshold=cfg.across_sources, k=k, recall_sample=cfg.recall_sample, info=info)
    return search


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
               progress, backend=None) -> list[tuple[int, int, float]]:
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
        probs = nli_step.entailment(wd, nli_cfg, frame, progress, label="nli graph", backend=backend)
        mutual = np.minimum(probs[: len(cand)], probs[len(cand):])
        edges += [(a, b, float(m)) for (a, b), m in zip(cand, mutual, strict=True) if m >= cfg.nli_threshold]
    return edges


def dedup(wd: Workdir, cfg: DedupConfig, embed_cfg: EmbedConfig, nli_cfg: NLIConfig, pairs: pl.DataFrame,
          progress=None, store: PairTexts | None = None, backend=None) -> dict:
    """Compute (or reuse) the dedup links of `pairs` (ids only, or with texts) and make them the current set.

    Only the NLI graph reads texts: those of the pairs left after the other methods (from `store` when `pairs`
    are ids only). On a distributed backend (Ray) the exact dedup is a group-by over its workers, the corpus
    search (kmeans) runs there cluster by cluster, and NLI runs on its actors; kmeans runs on the local pool too."""
    t0 = time.perf_counter()
    did = dedup_id(cfg, embed_cfg, nli_cfg, pairs, backend)
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
    if not cfg.exact:
        links = [empty_links()]
    else:
        links = [_exact_on(backend, work) if distributed(backend) else exact_links(work.lazy())]
    rest = work.join(links[0].select("pair_id"), on="pair_id", how="anti").sort("pair_id")
    index = index_kind(cfg, rest.height, backend)
    search: dict = {}
    vecs = TakeVectors(vs, para_rows[rest.get_column("_vec").to_numpy()])
    sem = semantic_links(rest, vecs, cfg.within_source, cfg.across_sources, cfg.neighbors, index,
                         ivf_lists=cfg.ivf_lists, ivf_probe=cfg.ivf_probe, recall_sample=cfg.recall_sample,
                         info=search, across_search=clustered_search(cfg, vs, vecs.rows, backend)
                         if index == "kmeans" else None)
    stats["index"] = search.get("label", index) if cfg.across_sources is not None else None
    if cfg.across_sources is not None:
        stats["search"] = search  # index kind, parameters, timings and (approximate kinds) measured recall
    links.append(sem)
    if cfg.nli_graph:
        rest = rest.join(sem.select("pair_id"), on="pair_id", how="anti").sort("pair_id")
        if "source" not in rest.columns:
            rest = (store or PairTexts.open(wd)).attach(rest)
        fwd, bwd = nli_step.both_directions(wd, nli_cfg, rest, progress, backend=backend)
        rest = rest.with_columns(priority=pl.Series(fwd.astype(np.float64) + bwd))
        vecs = gather(vs, para_rows[rest.get_column("_vec").to_numpy()])
        links.append(nli_graph_links(rest, _nli_edges(wd, cfg, nli_cfg, rest, vecs, progress, backend)))
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
