"""Dedup operators: exact (normalised text), semantic (FAISS on normalised embeddings), NLI graph (method B).

Each returns link rows (schemas.tables.DEDUP_LINKS without dedup_id): for every removed pair, the pair or source it
duplicated, the method and the score. Where several rows duplicate each other, the one with the highest
`priority` (then the smallest pair_id) is kept, so results do not depend on input order.
"""

from __future__ import annotations

import numpy as np
import polars as pl

LINK_SCHEMA = {"pair_id": pl.String, "source_id": pl.String, "method": pl.String, "duplicate_of": pl.String,
               "duplicate_kind": pl.String, "score": pl.Float64, "index": pl.String}
WITHIN_BLOCK = 1024  # rows per block of the within-source similarity matrix


def empty_links() -> pl.DataFrame:
    return pl.DataFrame(schema=LINK_SCHEMA)


def _links(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=LINK_SCHEMA, orient="row") if rows else empty_links()


def priority_order(pairs: pl.DataFrame, priority: str = "priority") -> pl.DataFrame:
    """Best first: highest priority, then the smallest pair_id (deterministic)."""
    return pairs.sort([priority, "pair_id"], descending=[True, False], nulls_last=True)


def exact_links(pairs: pl.DataFrame) -> pl.DataFrame:
    """Copies of their source, and the same paraphrase text under several sources (keep the best pair).

    `pairs`: pair_id, source_id, candidate_id, is_source_copy, priority.
    """
    rows = [(r["pair_id"], r["source_id"], "exact-source", r["source_id"], "source", 1.0, None)
            for r in pairs.filter(pl.col("is_source_copy")).iter_rows(named=True)]
    rest = priority_order(pairs.filter(~pl.col("is_source_copy")))
    rest = rest.with_columns(keeper=pl.col("pair_id").first().over("candidate_id", order_by=None))
    for r in rest.filter(pl.col("pair_id") != pl.col("keeper")).iter_rows(named=True):
        rows.append((r["pair_id"], r["source_id"], "exact", r["keeper"], "pair", 1.0, None))
    return _links(rows)


def choose_index(n: int, requested: str = "auto", exact_max: int = 100_000) -> str:
    """flat (exact inner product) for small sets, HNSW above `exact_max` vectors."""
    if requested != "auto":
        return requested
    return "flat" if n <= exact_max else "hnsw"


def knn(vecs: np.ndarray, k: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product k nearest neighbours of every row among all rows (self included), with FAISS."""
    import faiss

    n, d = vecs.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(64, 2 * k)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(vecs)
    sims, ids = index.search(vecs, min(k, n))
    return sims, ids


def _within_edges(groups: np.ndarray, vecs: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair of rows of one group with cosine >= threshold (exact, blockwise)."""
    edges: list[tuple[int, int, float]] = []
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        members = order[a:b]
        if members.size < 2:
            continue
        gv = vecs[members]
        for start in range(0, members.size, WITHIN_BLOCK):
            sims = gv[start:start + WITHIN_BLOCK] @ gv.T
            ii, jj = np.nonzero(sims >= threshold)
            for i, j in zip(ii, jj, strict=True):
                gi = start + i
                if gi < j:
                    edges.append((int(members[gi]), int(members[j]), float(sims[i, j])))
    return edges


def semantic_links(pairs: pl.DataFrame, vecs: np.ndarray, within: float | None, across: float | None,
                   neighbors: int = 16, index: str = "flat") -> pl.DataFrame:
    """Near-duplicate paraphrases: cosine >= `within` inside one source group, >= `across` between groups.

    `pairs` (pair_id, source_id, priority) is aligned with `vecs` (L2-normalised paraphrase embeddings). Greedy in
    priority order: a pair is removed when an already kept pair is a duplicate of it; it links to the most similar.
    Across groups, only each row's `neighbors` nearest are examined (FAISS `index`: flat or hnsw).
    """
    n = pairs.height
    if n < 2 or (within is None and across is None):
        return empty_links()
    groups = pairs.get_column("source_id").to_numpy()
    adj: list[list[tuple[int, float, str]]] = [[] for _ in range(n)]
    if within is not None:
        for i, j, s in _within_edges(groups, vecs, within):
            adj[i].append((j, s, "semantic-source"))
            adj[j].append((i, s, "semantic-source"))
    if across is not None:
        sims, ids = knn(vecs, neighbors + 1, index)
        for i in range(n):
            for s, j in zip(sims[i], ids[i], strict=True):
                if j < 0 or j == i or s < across or groups[j] == groups[i]:
                    continue
                adj[i].append((int(j), float(s), "semantic-corpus"))
                adj[int(j)].append((i, float(s), "semantic-corpus"))
    ranked = priority_order(pairs.with_row_index("_row"))
    kept = np.zeros(n, dtype=bool)
    ids_col = pairs.get_column("pair_id").to_list()
    rows = []
    for i in ranked.get_column("_row").to_list():
        best = max(((s, j, m) for j, s, m in adj[i] if kept[j]), default=None)
        if best is None:
            kept[i] = True
            continue
        s, j, method = best
        rows.append((ids_col[i], groups[i], method, ids_col[j], "pair", round(s, 6),
                     index if method == "semantic-corpus" else "exact-block"))
    return _links(rows)


def components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """Connected-component label of each of n nodes (union-find)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def nli_graph_links(pairs: pl.DataFrame, edges: list[tuple[int, int, float]]) -> pl.DataFrame:
    """Method B's diversity filter: pairs joined by mutual entailment form components; keep one per component.

    `pairs` (pair_id, source_id, priority = p(x=>y) + p(y=>x)); `edges` (row a, row b, min of both entailments)
    are the links at or above the threshold. The kept pair has the highest priority; each other member links to
    it with the strongest entailment that joined it to the component.
    """
    if not edges:
        return empty_links()
    labels = components(pairs.height, [(a, b) for a, b, _ in edges])
    strongest = np.zeros(pairs.height)
    for a, b, s in edges:
        strongest[a] = max(strongest[a], s)
        strongest[b] = max(strongest[b], s)
    df = priority_order(pairs.with_columns(_comp=pl.Series(labels), _strong=pl.Series(strongest)))
    df = df.with_columns(keeper=pl.col("pair_id").first().over("_comp"))
    rows = [(r["pair_id"], r["source_id"], "nli-graph", r["keeper"], "pair", round(float(r["_strong"]), 6), None)
            for r in df.filter(pl.col("pair_id") != pl.col("keeper")).iter_rows(named=True)]
    return _links(rows)
