"""Dedup operators: exact (normalised text), semantic (FAISS on normalised embeddings), NLI graph (method B).

Each returns link rows (schemas.tables.DEDUP_LINKS without dedup_id): for every removed pair, the pair or source it
duplicated, the method and the score. Where several rows duplicate each other, the one with the highest
`priority` (then the smallest pair_id) is kept, so results do not depend on input order.

Scale: the operators never need every vector at once. Vectors come from a *vector source* (`VectorSource`: `dim`,
`len()` and `get(rows) -> float32 (len(rows), dim)`; an in-memory ndarray is wrapped by `as_vectors`), gathered
in bounded chunks. The across-source search is exact (FAISS flat, all against all) up to a modest size and an
inverted-list index over 8-bit codes above it, whose candidates are re-scored exactly; the keep/link pass works
on numpy edge arrays in rounds instead of a Python loop per neighbour.
"""

from __future__ import annotations

import math
import time
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl

LINK_SCHEMA = {"pair_id": pl.String, "source_id": pl.String, "method": pl.String, "duplicate_of": pl.String,
               "duplicate_kind": pl.String, "score": pl.Float64, "index": pl.String}
WITHIN_BLOCK = 1024  # rows per block of the within-source similarity matrix
WITHIN_ROWS = 16_384  # vectors gathered at once for the within-source blocks
WITHIN_CELLS = 8_000_000  # similarities computed at once for the within-source blocks (32 MB)
SEARCH_CHUNK = 16_384  # queries (and vectors added) per index call; a multiple of FAISS's 4096-query BLAS tile
RESCORE_CHUNK = 2048  # queries whose candidates are re-scored exactly at once
RECALL_CHUNK = 16_384  # database vectors per brute-force block of the recall check
GATHER_ROWS = 1024  # rows per call to a vector source: a memory-mapped one maps up to 64 KB (fault-around) per row
TRAIN_PER_LIST = 20  # ivf: training vectors per list (recall as with 40 on planted duplicates, in half the time)
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 80
SEMANTIC_METHODS = ("semantic-corpus", "semantic-source")  # sorted: codes 0 and 1 compare as the names do
WITHIN_LABEL = "exact-block"


@runtime_checkable
class VectorSource(Protocol):
    """Row-addressable float32 vectors: rows 0..len-1 in the operator's numbering."""

    dim: int

    def __len__(self) -> int: ...

    def get(self, rows: np.ndarray) -> np.ndarray:
        """A float32 C-contiguous copy of the vectors at `rows` (any order, repeats allowed)."""
        ...


class ArrayVectors:
    """An in-memory (n, dim) matrix as a vector source."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array)
        self.dim = int(self.array.shape[1]) if self.array.ndim == 2 else 0

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def get(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


class TakeVectors:
    """Row r of this source is row `rows[r]` of `base` (e.g. a store of every text's vector)."""

    def __init__(self, base: VectorSource, rows: np.ndarray):
        self.base, self.rows, self.dim = base, np.asarray(rows, dtype=np.int64), int(base.dim)

    def __len__(self) -> int:
        return int(self.rows.size)

    def get(self, rows: np.ndarray) -> np.ndarray:
        return self.base.get(self.rows[np.asarray(rows, dtype=np.int64)])


def as_vectors(vecs: np.ndarray | VectorSource) -> VectorSource:
    """`vecs` itself when it is a vector source; an ndarray wrapped as one."""
    if isinstance(vecs, np.ndarray):
        return ArrayVectors(vecs)
    if not hasattr(vecs, "get") or not hasattr(vecs, "dim"):
        raise TypeError(f"expected an ndarray or a vector source (get(rows), dim, len), got {type(vecs).__name__}")
    return vecs


def gather(src: VectorSource, rows: np.ndarray) -> np.ndarray:
    """`src.get(rows)` in pieces of GATHER_ROWS rows, so a memory-mapped source hands its pages back between pieces
    (resident memory follows the piece, not the spread of the rows over the file)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size <= GATHER_ROWS:
        return src.get(rows)
    out = np.empty((rows.size, src.dim), dtype=np.float32)
    for a in range(0, rows.size, GATHER_ROWS):
        out[a:a + GATHER_ROWS] = src.get(rows[a:a + GATHER_ROWS])
    return out


def _chunks(n: int, size: int, tail_min: int = 1) -> list[tuple[int, int]]:
    """[start, end) ranges of `size` rows; a last range shorter than `tail_min` joins the one before it."""
    bounds = list(range(0, n, size)) + [n]
    out = list(zip(bounds[:-1], bounds[1:], strict=True))
    if len(out) > 1 and out[-1][1] - out[-1][0] < tail_min:
        out[-2:] = [(out[-2][0], n)]
    return out


def empty_links() -> pl.DataFrame:
    return pl.DataFrame(schema=LINK_SCHEMA)


def _links(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=LINK_SCHEMA, orient="row") if rows else empty_links()


def priority_order(pairs: pl.DataFrame, priority: str = "priority") -> pl.DataFrame:
    """Best first: highest priority, then the smallest pair_id (deterministic)."""
    return pairs.sort([priority, "pair_id"], descending=[True, False], nulls_last=True)


# ---------------------------------------------------------------------------------------------------- exact


def exact_links(pairs: pl.DataFrame | pl.LazyFrame, priority: str = "priority",
                engine: str = "streaming") -> pl.DataFrame:
    """Copies of their source, and the same paraphrase text under several sources (keep the best pair).

    `pairs` (one row per pair_id): pair_id, source_id, candidate_id, is_source_copy, priority; a LazyFrame (e.g. a
    parquet scan) runs out of core with Polars' streaming engine. Rows: the source copies in input order, then the
    other duplicates best first (priority descending, NaN highest and nulls last as Polars sorts, then pair_id).
    The kept pair of a paraphrase is the best of its pairs: highest priority, then smallest pair_id.
    """
    lf = pairs.lazy()
    p = pl.col(priority)
    copies = lf.filter(pl.col("is_source_copy")).select(
        "pair_id", "source_id", method=pl.lit("exact-source"), duplicate_of=pl.col("source_id"),
        duplicate_kind=pl.lit("source"), score=pl.lit(1.0), index=pl.lit(None, dtype=pl.String))
    rest = lf.filter(~pl.col("is_source_copy")).select("pair_id", "source_id", "candidate_id", priority)
    best = rest.group_by("candidate_id").agg(_best=p.nan_max())  # NaN sorts above every number; nulls ignored
    tie = (pl.when(pl.col("_best").is_null()).then(True)  # only nulls: every pair ties
           .when(pl.col("_best").is_nan()).then(p.is_nan())
           .otherwise(p == pl.col("_best")))
    keepers = (rest.join(best, on="candidate_id").filter(tie.fill_null(False))
               .group_by("candidate_id").agg(_keeper=pl.col("pair_id").min()))
    dups = (rest.join(keepers, on="candidate_id").filter(pl.col("pair_id") != pl.col("_keeper"))
            .sort([priority, "pair_id"], descending=[True, False], nulls_last=True)
            .select("pair_id", "source_id", method=pl.lit("exact"), duplicate_of=pl.col("_keeper"),
                    duplicate_kind=pl.lit("pair"), score=pl.lit(1.0), index=pl.lit(None, dtype=pl.String)))
    out = pl.concat([copies, dups]).collect(engine=engine)
    return out.cast(LINK_SCHEMA) if out.height else empty_links()


# ---------------------------------------------------------------------------------------------------- search


def choose_index(n: int, requested: str = "auto", exact_max: int = 20_000) -> str:
    """flat (exact inner product, all against all) up to `exact_max` vectors, ivf above."""
    if requested != "auto":
        return requested
    return "flat" if n <= exact_max else "ivf"


def ivf_lists(n: int, lists: int | None = None) -> int:
    """Inverted lists for n vectors: `lists`, or about 4 x sqrt(n); never more than n."""
    want = lists if lists is not None else max(1, round(4 * math.sqrt(n)))
    return int(max(1, min(want, n)))


def corpus_label(info: dict, index: str) -> str:
    """The links' `index` value: the index and its parameters, and for an approximate one its measured recall."""
    label = info.get("label", index)
    return label if info.get("recall") is None else f"{label},recall={info['recall']:.4f}"


def index_label(kind: str, lists: int | None = None, probe: int | None = None, k: int = 17) -> str:
    """The `index` value of semantic-corpus links: the index kind and its parameters."""
    if kind == "ivf":
        return f"ivf-sq8:lists={lists},probe={probe}"
    if kind == "hnsw":
        return f"hnsw:M={HNSW_M},efSearch={max(64, 2 * k)}"
    return kind


def _query_chunks(n: int, dim: int) -> list[tuple[int, int]]:
    """Query ranges whose FAISS flat search computes exactly what one call over all n queries would: every range
    starts on a 4096-query BLAS tile and is long enough to take the BLAS path (a short tail joins the range before)."""
    import faiss

    tile = max(1, int(faiss.cvar.distance_compute_blas_query_bs))
    least = max(-(-int(faiss.cvar.distance_compute_blas_threshold) // max(1, dim)), faiss.omp_get_max_threads())
    size = -(-max(SEARCH_CHUNK, least) // tile) * tile
    return _chunks(n, size, tail_min=least)


def _exact_or_graph_index(src: VectorSource, kind: str, k: int):
    import faiss

    d = src.dim
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = max(64, 2 * k)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    for a, b in _chunks(len(src), SEARCH_CHUNK):
        index.add(gather(src, np.arange(a, b)))
    return index


def _ivf_index(src: VectorSource, lists: int, probe: int, seed: int):
    """FAISS IVF over 8-bit scalar-quantised vectors (inner product), trained on a seeded sample, filled in chunks."""
    import faiss

    n, d = len(src), src.dim
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, lists, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # the sample size is ours (TRAIN_PER_LIST); no warning for small sets
    rng = np.random.default_rng(seed)
    size = min(n, TRAIN_PER_LIST * lists)
    sample = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    index.train(gather(src, sample))
    for a, b in _chunks(n, SEARCH_CHUNK):
        index.add(gather(src, np.arange(a, b)))
    index.nprobe = min(probe, lists)
    return index, quantizer, size


def _rescore(src: VectorSource, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact cosine of each query (float32) with each of its candidates (ids < 0: -inf), from the float32 vectors
    (FAISS's inner product over rows, on every core; the same value whichever of the two rows is the query)."""
    import faiss

    out = np.full(ids.shape, -np.inf, dtype=np.float32)
    valid = ids >= 0
    if not valid.any():
        return out
    uniq, inv = np.unique(ids[valid], return_inverse=True)
    cand = gather(src, uniq)
    local = np.full(ids.shape, -1, dtype=np.int64)
    local[valid] = inv
    q = np.ascontiguousarray(queries, dtype=np.float32)
    faiss.fvec_inner_products_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(cand),
                                     faiss.swig_ptr(local), q.shape[1], ids.shape[0], ids.shape[1])
    return out


def _edge_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)


def across_edges(vecs: np.ndarray | VectorSource, gcode: np.ndarray, threshold: float, neighbors: int = 16,
                 kind: str = "flat", *, lists: int | None = None, probe: int = 16, recall_sample: int = 1000,
                 seed: int = 0, info: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row a, row b, cosine) for every row's neighbours (among its `neighbors` + 1 nearest, self included) of
    another group (`gcode`: an integer group per row) at or above `threshold`; a link may appear from both ends.

    kind flat / ivf / hnsw as in `semantic_links`; `info` receives the index parameters, timings and recall.
    """
    info = {} if info is None else info
    src = as_vectors(vecs)
    n, d = len(src), src.dim
    k_req = neighbors + 1
    k = min(k_req, n)
    t0 = time.perf_counter()
    keep_alive = None
    if kind == "ivf":
        lists = ivf_lists(n, lists)
        index, keep_alive, trained = _ivf_index(src, lists, probe, seed)
        probe = int(index.nprobe)
        info.update(lists=lists, probe=probe, code="sq8", trained_on=trained, rescored=True)
        ranges = _chunks(n, SEARCH_CHUNK)
    else:
        index = _exact_or_graph_index(src, kind, k_req)
        if kind == "hnsw":
            info.update(M=HNSW_M, efConstruction=HNSW_EF_CONSTRUCTION, efSearch=max(64, 2 * k_req))
        ranges = _query_chunks(n, d) if kind == "flat" else _chunks(n, SEARCH_CHUNK)
    info["label"] = index_label(kind, lists, probe, k_req)
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    thr = threshold  # compared as the reference loop did: float32 scores with a Python float in float32 (NEP 50)
    out_a, out_b, out_s = [], [], []
    for a, b in ranges:
        queries = gather(src, np.arange(a, b))
        sims, ids = index.search(queries, k)
        if kind == "ivf":
            for r0, r1 in _chunks(b - a, RESCORE_CHUNK):
                sims[r0:r1] = _rescore(src, queries[r0:r1], ids[r0:r1])
        rows = np.arange(a, b, dtype=np.int64)[:, None]
        ok = (ids >= 0) & (ids != rows) & (sims >= thr)
        ok[ok] = gcode[ids[ok]] != gcode[np.broadcast_to(rows, ids.shape)[ok]]
        out_a.append(np.broadcast_to(rows, ids.shape)[ok])
        out_b.append(ids[ok])
        out_s.append(sims[ok])
    del index, keep_alive
    info["search_seconds"] = round(time.perf_counter() - t0, 3)
    ea = np.concatenate(out_a) if out_a else np.zeros(0, np.int64)
    eb = np.concatenate(out_b) if out_b else np.zeros(0, np.int64)
    es = np.concatenate(out_s) if out_s else np.zeros(0, np.float32)
    if kind != "flat" and recall_sample > 0:
        t0 = time.perf_counter()
        info.update(_recall(src, gcode, thr, k, _edge_keys(ea, eb, n), recall_sample, seed))
        info["recall_seconds"] = round(time.perf_counter() - t0, 3)
    return ea, eb, es


def exact_neighbours(src: VectorSource, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top k of the given rows among all rows (self included), in database blocks."""
    import faiss

    q = gather(src, queries)
    n = len(src)
    best_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for a, b in _chunks(n, RECALL_CHUNK):
        s, i = faiss.knn(q, gather(src, np.arange(a, b)), min(k, b - a), faiss.METRIC_INNER_PRODUCT)
        s = np.concatenate([best_s, s], axis=1)
        i = np.concatenate([best_i, np.where(i >= 0, i + a, -1)], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_s, best_i


def _recall(src: VectorSource, gcode: np.ndarray, thr: float, k: int, found: np.ndarray, sample: int,
            seed: int) -> dict:
    """Recall of the approximate search against exact search on `sample` seeded queries: of the links exact search
    gives those queries (a neighbour of another group among the k nearest, at or above the threshold), the share
    the index found (in either direction)."""
    n = len(src)
    rng = np.random.default_rng(seed + 1)
    size = min(sample, n)
    queries = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    sims, ids = exact_neighbours(src, queries, k)
    rows = np.broadcast_to(queries[:, None], ids.shape)
    ok = (ids >= 0) & (ids != rows) & (sims >= thr)
    ok[ok] = gcode[ids[ok]] != gcode[rows[ok]]
    exact = np.unique(_edge_keys(rows[ok], ids[ok], n))
    hit = int(np.isin(exact, found).sum())
    return {"recall": round(hit / exact.size, 4) if exact.size else None, "recall_queries": int(size),
            "recall_exact_links": int(exact.size), "recall_found_links": hit}


# ---------------------------------------------------------------------------------------------------- clustered
# The search a cluster can spread over machines (NeMo Curator's SemDeDup layout): k-means on a seeded sample, every
# vector stored in its nearest cluster, each query searched exactly in its `probe` nearest clusters (one task per
# cluster), then each query's k best candidates over its clusters. With one cluster it is the flat search itself.


def kmeans_centroids(src: VectorSource, clusters: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids (FAISS, seeded) trained on TRAIN_PER_LIST sampled vectors per cluster."""
    import faiss

    n = len(src)
    clusters = int(max(1, min(clusters, n)))
    if clusters == 1:
        return np.zeros((1, src.dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    size = min(n, TRAIN_PER_LIST * clusters)
    sample = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    km = faiss.Kmeans(src.dim, clusters, niter=20, seed=seed, spherical=True, min_points_per_centroid=1)
    km.train(gather(src, sample))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest_clusters(src: VectorSource, centroids: np.ndarray, probe: int) -> np.ndarray:
    """(n, probe) the clusters of each row, nearest first (column 0: where the row is stored), SEARCH_CHUNK rows
    at a time."""
    import faiss

    probe = int(max(1, min(probe, centroids.shape[0])))
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    out = np.zeros((len(src), probe), dtype=np.int64)
    for a, b in _chunks(len(src), SEARCH_CHUNK):
        out[a:b] = index.search(gather(src, np.arange(a, b)), probe)[1]
    return out


def cluster_neighbours(db: VectorSource, queries: VectorSource, k: int,
                       threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's k nearest rows of `db` (exact: FAISS flat, queried as `across_edges` queries) whose cosine is
    at or above `threshold`: (query row, db row, cosine), in the rows' local numbering; a query's own row counts."""
    index = _exact_or_graph_index(db, "flat", k)
    k = min(k, len(db))
    out_q, out_d, out_s = [], [], []
    for a, b in _query_chunks(len(queries), queries.dim):
        sims, ids = index.search(gather(queries, np.arange(a, b)), k)
        ok = (ids >= 0) & (sims >= threshold)
        out_q.append(np.broadcast_to(np.arange(a, b, dtype=np.int64)[:, None], ids.shape)[ok])
        out_d.append(ids[ok])
        out_s.append(sims[ok])
    return np.concatenate(out_q), np.concatenate(out_d), np.concatenate(out_s)


def best_candidates(q: np.ndarray, d: np.ndarray, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """Of each query's candidates from all its clusters, its k best (cosine descending, then the smaller row)."""
    order = np.lexsort((d, -s, q))
    q, d, s = q[order], d[order], s[order]
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]) if q.size else np.zeros(0, np.int64)
    rank = np.arange(q.size) - np.repeat(starts, np.diff(np.r_[starts, q.size]))
    keep = rank < k
    return q[keep], d[keep], s[keep]


def other_group_edges(q: np.ndarray, d: np.ndarray, s: np.ndarray, gcode: np.ndarray, n: int,
                      recall_of: VectorSource | None = None, threshold: float = 0.0, k: int = 17,
                      recall_sample: int = 0, seed: int = 0, info: dict | None = None):
    """The links among candidate (query, row, cosine) triples: another row of another group; with `recall_of`,
    their recall against exact search on `recall_sample` seeded queries goes into `info`."""
    ok = (q != d) & (gcode[q] != gcode[d])
    q, d, s = q[ok], d[ok], s[ok]
    if recall_of is not None and recall_sample > 0 and info is not None:
        t0 = time.perf_counter()
        info.update(_recall(recall_of, gcode, threshold, k, _edge_keys(q, d, n), recall_sample, seed))
        info["recall_seconds"] = round(time.perf_counter() - t0, 3)
    return q, d, s


# ---------------------------------------------------------------------------------------------------- within


def _group_bounds(gcode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by group (rows ascending inside a group) and the bounds of each group in that order."""
    order = np.argsort(gcode, kind="stable")
    g = gcode[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True]) if g.size else np.zeros(1, np.int64)
    return order, bounds


def within_edges(gcode: np.ndarray, src: VectorSource, threshold: float) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """Every pair of rows of one group with cosine >= threshold: (row a, row b, cosine), exact.

    Each group's similarities are its members' vectors (rows ascending) times their transpose, as one matrix
    product per group (blocks of WITHIN_BLOCK rows for larger groups); groups of one size are stacked so one call
    computes many groups, each with the same product as alone.
    """
    order, bounds = _group_bounds(gcode)
    starts, sizes = bounds[:-1], np.diff(bounds)
    out_a, out_b, out_s = [], [], []
    for m in np.unique(sizes[sizes >= 2]):
        m = int(m)
        first = starts[sizes == m]
        if m > WITHIN_BLOCK:
            for s0 in first:
                _within_large(order[s0:s0 + m], src, threshold, out_a, out_b, out_s)
            continue
        members = order[first[:, None] + np.arange(m)]  # (groups, m)
        upper = np.triu(np.ones((m, m), dtype=bool), 1)
        per = max(1, min(WITHIN_ROWS // m, WITHIN_CELLS // (m * m)))
        for g0 in range(0, members.shape[0], per):
            block = members[g0:g0 + per]
            gv = gather(src, block.ravel()).reshape(block.shape[0], m, src.dim)
            sims = gv @ gv.transpose(0, 2, 1)
            g, i, j = np.nonzero((sims >= threshold) & upper)
            out_a.append(block[g, i])
            out_b.append(block[g, j])
            out_s.append(sims[g, i, j])
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)


def _within_large(members: np.ndarray, src: VectorSource, threshold: float, out_a: list, out_b: list,
                  out_s: list) -> None:
    """One group larger than WITHIN_BLOCK: blocks of rows against the whole group."""
    gv = gather(src, members)
    for start in range(0, members.size, WITHIN_BLOCK):
        sims = gv[start:start + WITHIN_BLOCK] @ gv.T
        ii, jj = np.nonzero(sims >= threshold)
        keep = start + ii < jj
        ii, jj = ii[keep], jj[keep]
        out_a.append(members[start + ii])
        out_b.append(members[jj])
        out_s.append(sims[ii, jj])


# ---------------------------------------------------------------------------------------------------- greedy


def greedy_links(order: np.ndarray, a: np.ndarray, b: np.ndarray, score: np.ndarray,
                 method: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The greedy keep/link pass over an undirected similarity graph, without a Python loop per node or edge.

    Nodes are taken in `order` (best first): a node is kept unless an already kept node is its neighbour, and a
    removed node links to its kept neighbour with the largest (score, node, method), as Python tuples compare.
    Edges (a[e], b[e], score[e], method[e] a small int) may repeat; a node's neighbour counts with its best entry.

    Decided in rounds: a node all of whose better-ranked neighbours are removed is kept, and every node with a
    kept better-ranked neighbour is removed; the rounds number the longest such chain (small in practice), each
    costing the edges of the nodes it decides.
    Returns (removed nodes in `order`, the node each links to, the score, the method).
    """
    order = np.asarray(order, dtype=np.int64)
    n = order.size
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    score = np.asarray(score)
    method = np.zeros(a.size, dtype=np.int8) if method is None else np.asarray(method)
    none = np.zeros(0, np.int64)
    keep = a != b
    a, b, score, method = a[keep], b[keep], score[keep], method[keep]
    if a.size == 0:
        return none, none, score[:0], method[:0]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    hi = np.where(rank[a] < rank[b], a, b)  # the better-ranked end
    lo = np.where(rank[a] < rank[b], b, a)
    srt = np.lexsort((method, score, lo, hi))  # each (hi, lo): its best (score, method) last
    hi, lo, score, method = hi[srt], lo[srt], score[srt], method[srt]
    last = np.r_[(hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1]), True]
    hi, lo, score, method = hi[last], lo[last], score[last], method[last]
    # compact node numbering: only nodes on an edge need deciding (the others are kept)
    nodes, inv = np.unique(np.r_[hi, lo], return_inverse=True)
    u, v = inv[:hi.size], inv[hi.size:]
    state = _decide(nodes.size, u, v)
    cand = (state[u] == 1) & (state[v] == 2)
    cu, cv, cs, cm = u[cand], v[cand], score[cand], method[cand]
    srt = np.lexsort((cm, cu, cs, cv))  # per removed node, its best (score, node, method) last
    cu, cv, cs, cm = cu[srt], cv[srt], cs[srt], cm[srt]
    last = np.r_[cv[1:] != cv[:-1], True]
    removed, linked, cs, cm = nodes[cv[last]], nodes[cu[last]], cs[last], cm[last]
    by_rank = np.argsort(rank[removed], kind="stable")
    return removed[by_rank], linked[by_rank], cs[by_rank], cm[by_rank]


def _decide(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Kept (1) or removed (2) for nodes 0..n-1 given edges u -> v from the better-ranked end, in rounds: a node is
    kept once every better-ranked neighbour is removed, removed as soon as one is kept. Each round follows only the
    edges out of the nodes decided in the round before."""
    order = np.argsort(u, kind="stable")
    tgt_of = v[order]
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n), out=ptr[1:])
    waiting = np.bincount(v, minlength=n)  # better-ranked neighbours not yet decided
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, 2 removed
    frontier = np.flatnonzero(waiting == 0)
    state[frontier] = 1
    while frontier.size:
        starts, counts = ptr[frontier], ptr[frontier + 1] - ptr[frontier]
        total = int(counts.sum())
        if total == 0:
            break
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
        src, tgt = np.repeat(frontier, counts), tgt_of[offsets]
        live = state[tgt] == 0
        src, tgt = src[live], tgt[live]
        removed = np.unique(tgt[state[src] == 1])
        state[removed] = 2
        seen, times = np.unique(tgt, return_counts=True)
        waiting[seen] -= times
        kept = seen[(waiting[seen] == 0) & (state[seen] == 0)]
        state[kept] = 1
        frontier = np.concatenate([removed, kept])
    return state


# ---------------------------------------------------------------------------------------------------- semantic


def semantic_links(pairs: pl.DataFrame, vecs: np.ndarray | VectorSource, within: float | None,
                   across: float | None, neighbors: int = 16, index: str = "flat", *, ivf_lists: int | None = None,
                   ivf_probe: int = 16, recall_sample: int = 1000, seed: int = 0,
                   info: dict | None = None, across_search=None) -> pl.DataFrame:
    """Near-duplicate paraphrases: cosine >= `within` inside one source group, >= `across` between groups.

    `pairs` (pair_id, source_id, priority) is aligned with `vecs` (L2-normalised paraphrase embeddings: an ndarray
    or a vector source over the same rows). Greedy in priority order: a pair is removed when an already kept pair
    is a duplicate of it; it links to the most similar. Within a group every pair of rows is compared exactly.
    Across groups, only each row's `neighbors` nearest are examined, with FAISS `index`:
    - flat: exact, all against all (the vectors held by the index as float32);
    - ivf: `ivf_lists` inverted lists (None: about 4 x sqrt(n)) over 8-bit codes, `ivf_probe` lists searched per
      query; each candidate is re-scored exactly, so scores and the threshold test are exact and only recall
      depends on the index;
    - hnsw: a graph over the float32 vectors.
    For ivf and hnsw, recall against exact search is measured on `recall_sample` seeded queries (0: skip).
    `info`, when given, receives the index kind, its parameters, timings and the recall.
    `across_search(src, gcode, info) -> (row a, row b, cosine)`, when given, finds the across-group links instead
    (e.g. the clustered search spread over a backend's tasks); `info["label"]` then names it.
    """
    info = {} if info is None else info
    src = as_vectors(vecs)
    n = pairs.height
    if len(src) != n:
        raise ValueError(f"{len(src)} vectors for {n} pairs")
    info.update(kind=index if across is not None else None, vectors=n)
    if n < 2 or (within is None and across is None):
        return empty_links()
    gcode = pairs.get_column("source_id").rank("dense").fill_null(0).to_numpy().astype(np.int64)
    parts = []
    if within is not None:
        ea, eb, es = within_edges(gcode, src, within)
        parts.append((ea, eb, es, np.ones(ea.size, dtype=np.int8)))
    if across is not None and across_search is not None:
        ea, eb, es = across_search(src, gcode, info)
        parts.append((ea, eb, es, np.zeros(ea.size, dtype=np.int8)))
    elif across is not None:
        ea, eb, es = across_edges(src, gcode, across, neighbors, index, lists=ivf_lists, probe=ivf_probe,
                                  recall_sample=recall_sample, seed=seed, info=info)
        parts.append((ea, eb, es, np.zeros(ea.size, dtype=np.int8)))
    a, b, s, m = (np.concatenate(col) for col in zip(*parts, strict=True))
    order = priority_order(pairs.with_row_index("_row")).get_column("_row").to_numpy().astype(np.int64)
    removed, linked, score, method = greedy_links(order, a, b, s, m)
    if removed.size == 0:
        return empty_links()
    ids = pairs.get_column("pair_id")
    corpus = method == 0
    return pl.DataFrame({
        "pair_id": ids.gather(removed), "source_id": pairs.get_column("source_id").gather(removed),
        "method": np.where(corpus, SEMANTIC_METHODS[0], SEMANTIC_METHODS[1]), "duplicate_of": ids.gather(linked),
        "duplicate_kind": "pair", "score": [round(float(x), 6) for x in score],
        "index": np.where(corpus, corpus_label(info, index), WITHIN_LABEL)}, schema=LINK_SCHEMA)


# ---------------------------------------------------------------------------------------------------- NLI graph


def components(n: int, edges: list[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes: the smallest node of its component."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
    except ImportError:  # pragma: no cover - scipy comes with sentence-transformers
        return _components_loop(n, e)
    graph = coo_matrix((np.ones(e.shape[0], dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # labels count up in order of each component's first node
    return first[labels]


def _components_loop(n: int, edges: np.ndarray) -> np.ndarray:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def nli_graph_links(pairs: pl.DataFrame, edges: list[tuple[int, int, float]]) -> pl.DataFrame:
    """Method B's diversity filter: pairs joined by mutual entailment form components; keep one per component.

    `pairs` (pair_id, source_id, priority = p(x=>y) + p(y=>x)); `edges` (row a, row b, min of both entailments)
    are the links at or above the threshold. The kept pair has the highest priority; each other member links to
    it with the strongest entailment that joined it to the component.
    """
    if not len(edges):
        return empty_links()
    e = np.asarray([(a, b) for a, b, _ in edges], dtype=np.int64)
    s = np.asarray([x for _, _, x in edges], dtype=np.float64)
    labels = components(pairs.height, e)
    strongest = np.zeros(pairs.height)
    np.maximum.at(strongest, e[:, 0], s)
    np.maximum.at(strongest, e[:, 1], s)
    df = priority_order(pairs.with_columns(_comp=pl.Series(labels), _strong=pl.Series(strongest)))
    df = df.with_columns(keeper=pl.col("pair_id").first().over("_comp"))
    out = df.filter(pl.col("pair_id") != pl.col("keeper"))
    if out.height == 0:
        return empty_links()
    return pl.DataFrame({
        "pair_id": out.get_column("pair_id"), "source_id": out.get_column("source_id"), "method": "nli-graph",
        "duplicate_of": out.get_column("keeper"), "duplicate_kind": "pair",
        "score": [round(float(x), 6) for x in out.get_column("_strong").to_list()], "index": None},
        schema=LINK_SCHEMA)
