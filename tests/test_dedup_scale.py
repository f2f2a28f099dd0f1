"""Dedup at scale: the vectorised operators give today's results exactly where today's search is exact.

The reference implementations (the per-row loops dedup used before it was made to scale) are copied below and the
new operators are compared with them: the greedy keep/link pass on random graphs with ties, exact_links on random
frames (eager, lazy and streamed from parquet), the flat semantic search through chunked code, and the dedup step
with a tiny chunk size. The approximate index (IVF over 8-bit codes) is checked for recall, exact scores and the
recall it reports.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curation import dedup as dd

# ------------------------------------------------------------------ reference: the code before it scaled


def _ref_links(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=dd.LINK_SCHEMA, orient="row") if rows else dd.empty_links()


def _ref_exact_links(pairs: pl.DataFrame) -> pl.DataFrame:
    rows = [(r["pair_id"], r["source_id"], "exact-source", r["source_id"], "source", 1.0, None)
            for r in pairs.filter(pl.col("is_source_copy")).iter_rows(named=True)]
    rest = dd.priority_order(pairs.filter(~pl.col("is_source_copy")))
    rest = rest.with_columns(keeper=pl.col("pair_id").first().over("candidate_id", order_by=None))
    for r in rest.filter(pl.col("pair_id") != pl.col("keeper")).iter_rows(named=True):
        rows.append((r["pair_id"], r["source_id"], "exact", r["keeper"], "pair", 1.0, None))
    return _ref_links(rows)


def _ref_knn(vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    return index.search(vecs, min(k, vecs.shape[0]))


def _ref_within_edges(groups: np.ndarray, vecs: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    edges: list[tuple[int, int, float]] = []
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        members = order[a:b]
        if members.size < 2:
            continue
        gv = vecs[members]
        for start in range(0, members.size, 1024):
            sims = gv[start:start + 1024] @ gv.T
            ii, jj = np.nonzero(sims >= threshold)
            for i, j in zip(ii, jj, strict=True):
                gi = start + i
                if gi < j:
                    edges.append((int(members[gi]), int(members[j]), float(sims[i, j])))
    return edges


def _ref_greedy(order, adj: list[list[tuple]]) -> list[tuple]:
    kept = np.zeros(len(adj), dtype=bool)
    out = []
    for i in order:
        best = max(((s, j, m) for j, s, m in adj[i] if kept[j]), default=None)
        if best is None:
            kept[i] = True
            continue
        out.append((int(i), int(best[1]), best[0], best[2]))
    return out


def _ref_semantic_links(pairs: pl.DataFrame, vecs: np.ndarray, within, across, neighbors=16) -> pl.DataFrame:
    n = pairs.height
    groups = pairs.get_column("source_id").to_numpy()
    adj: list[list[tuple]] = [[] for _ in range(n)]
    if within is not None:
        for i, j, s in _ref_within_edges(groups, vecs, within):
            adj[i].append((j, s, "semantic-source"))
            adj[j].append((i, s, "semantic-source"))
    if across is not None:
        sims, ids = _ref_knn(vecs, neighbors + 1)
        for i in range(n):
            for s, j in zip(sims[i], ids[i], strict=True):
                if j < 0 or j == i or s < across or groups[j] == groups[i]:
                    continue
                adj[i].append((int(j), float(s), "semantic-corpus"))
                adj[int(j)].append((i, float(s), "semantic-corpus"))
    ranked = dd.priority_order(pairs.with_row_index("_row")).get_column("_row").to_list()
    ids_col = pairs.get_column("pair_id").to_list()
    rows = [(ids_col[i], groups[i], m, ids_col[j], "pair", round(s, 6), "flat" if m == "semantic-corpus"
             else "exact-block") for i, j, s, m in _ref_greedy(ranked, adj)]
    return _ref_links(rows)


def _ref_components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
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


# ------------------------------------------------------------------ helpers


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(rng, n: int, d: int, noise: float, groups: int | None = None) -> tuple[np.ndarray, pl.DataFrame]:
    """n unit vectors, a third of them near copies (cosine about 1/sqrt(1 + noise^2)) of others; pairs with
    priorities that tie (two decimals) and `groups` source groups (None: one per row; else half the near copies
    share their original's group)."""
    base = n - n // 3
    v = _unit(rng.standard_normal((n, d)))
    of = rng.integers(0, base, n - base)
    v[base:] = _unit(v[of] + noise * _unit(rng.standard_normal((n - base, d))))
    src = np.arange(n) if groups is None else rng.integers(0, groups, n)
    same = rng.random(n - base) < 0.5
    src[base:][same] = src[of[same]]
    perm = rng.permutation(n)
    v, src = v[perm], src[perm]
    pairs = pl.DataFrame({"pair_id": [f"p{i:06d}" for i in rng.permutation(n)],
                          "source_id": [f"s{g}" for g in src], "priority": np.round(rng.random(n), 2)})
    return v, pairs


def _gcode(pairs: pl.DataFrame) -> np.ndarray:
    return pairs.get_column("source_id").rank("dense").to_numpy().astype(np.int64)


def _edge_set(a, b) -> set[tuple[int, int]]:
    return {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist(), strict=True)}


# ------------------------------------------------------------------ (a) greedy pass


def _random_graph(rng, kind: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if kind == "sparse":
        e = 2 * n
        a, b = rng.integers(0, n, e), rng.integers(0, n, e)  # self loops and repeated edges included
    elif kind == "chain":
        a, b = np.arange(n - 1), np.arange(1, n)
    elif kind == "star":
        hubs = rng.integers(0, n, 5)
        a = np.repeat(hubs, n // 5)
        b = rng.integers(0, n, a.size)
    else:  # cliques
        a, b = np.triu_indices(12, 1)
        shift = rng.integers(0, n - 12, 6)
        a, b = np.concatenate([a + s for s in shift]), np.concatenate([b + s for s in shift])
    scores = rng.choice(np.array([0.95, 0.96, 0.97], dtype=np.float32), a.size)  # ties
    methods = rng.integers(0, 2, a.size).astype(np.int8)
    return a.astype(np.int64), b.astype(np.int64), scores, methods


@pytest.mark.parametrize("kind", ["sparse", "chain", "star", "cliques"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_pass_equals_the_reference_loop(kind, seed):
    rng = np.random.default_rng(seed)
    n = 400
    a, b, s, m = _random_graph(rng, kind, n)
    pairs = pl.DataFrame({"pair_id": [f"p{i:04d}" for i in rng.permutation(n)],
                          "priority": np.round(rng.random(n), 1)})  # ties broken by pair_id
    order = dd.priority_order(pairs.with_row_index("_row")).get_column("_row").to_numpy().astype(np.int64)
    if kind == "chain":
        order = np.arange(n)  # priorities fall along the chain: the longest run of rounds
    adj: list[list[tuple]] = [[] for _ in range(n)]
    for x, y, sc, me in zip(a.tolist(), b.tolist(), s.tolist(), m.tolist(), strict=True):
        adj[x].append((y, sc, me))
        adj[y].append((x, sc, me))
    want = _ref_greedy(order.tolist(), adj)
    removed, linked, score, method = dd.greedy_links(order, a, b, s, m)
    got = list(zip(removed.tolist(), linked.tolist(), score.tolist(), method.tolist(), strict=True))
    assert got == want
    assert len(want) > 0


def test_components_and_nli_graph_links_match_the_union_find():
    rng = np.random.default_rng(3)
    n = 300
    edges = [(int(x), int(y), float(round(rng.random(), 2))) for x, y in rng.integers(0, n, (250, 2))]
    labels = dd.components(n, [(x, y) for x, y, _ in edges])
    assert labels.tolist() == _ref_components(n, [(x, y) for x, y, _ in edges]).tolist()
    pairs = pl.DataFrame({"pair_id": [f"p{i:04d}" for i in range(n)], "source_id": [f"s{i % 7}" for i in range(n)],
                          "priority": np.round(rng.random(n), 1)})
    ref_labels = _ref_components(n, [(a, b) for a, b, _ in edges])
    strongest = np.zeros(n)
    for a, b, s in edges:
        strongest[a] = max(strongest[a], s)
        strongest[b] = max(strongest[b], s)
    df = dd.priority_order(pairs.with_columns(_comp=pl.Series(ref_labels), _strong=pl.Series(strongest)))
    df = df.with_columns(keeper=pl.col("pair_id").first().over("_comp"))
    want = _ref_links([(r["pair_id"], r["source_id"], "nli-graph", r["keeper"], "pair", round(float(r["_strong"]), 6),
                        None) for r in df.filter(pl.col("pair_id") != pl.col("keeper")).iter_rows(named=True)])
    assert_frame_equal(dd.nli_graph_links(pairs, edges), want)


# ------------------------------------------------------------------ (b) exact links


def _random_pairs(rng, n: int) -> pl.DataFrame:
    prio = np.round(rng.random(n), 1)
    prio[rng.random(n) < 0.03] = np.nan
    frame = pl.DataFrame({
        "pair_id": [f"p{i:05d}" for i in rng.permutation(n)], "source_id": [f"s{i}" for i in rng.integers(0, 50, n)],
        "candidate_id": [f"c{i}" for i in rng.integers(0, n // 4, n)], "is_source_copy": rng.random(n) < 0.1,
        "priority": prio})
    return frame.with_columns(pl.when(pl.Series(rng.random(n) < 0.03)).then(None).otherwise(pl.col("priority"))
                              .alias("priority"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_links_equal_the_reference_eager_lazy_and_streamed(seed, tmp_path):
    rng = np.random.default_rng(seed)
    pairs = _random_pairs(rng, 3000)
    want = _ref_exact_links(pairs)
    assert want.height > 500 and want.filter(pl.col("method") == "exact").height > 300
    assert_frame_equal(dd.exact_links(pairs), want)
    assert_frame_equal(dd.exact_links(pairs.lazy(), engine="in-memory"), want)
    path = tmp_path / "pairs.parquet"
    pairs.write_parquet(path, row_group_size=256)
    assert_frame_equal(dd.exact_links(pl.scan_parquet(path)), want)


# ------------------------------------------------------------------ (c) ivf


def test_ivf_finds_the_exact_links_with_exact_scores_and_reports_its_recall():
    rng = np.random.default_rng(7)
    n, d = 30_000, 32
    v, pairs = _planted(rng, n, d, noise=0.33)  # near copies at cosine ~0.95
    gcode = _gcode(pairs)
    fa, fb, fs = dd.across_edges(v, gcode, 0.9, 16, "flat")
    exact = _edge_set(fa, fb)
    assert len(exact) > 5000
    # the default settings: (nearly) every exact link found, each scored exactly
    info: dict = {}
    links = dd.semantic_links(pairs, v, None, 0.9, 16, "ivf", info=info)
    assert info["lists"] == round(4 * n ** 0.5) and info["probe"] == 16 and info["code"] == "sq8"
    order = dd.priority_order(pairs.with_row_index("_row")).get_column("_row").to_numpy().astype(np.int64)
    ids = pairs.get_column("pair_id")
    flat_removed = set(ids.gather(dd.greedy_links(order, fa, fb, fs)[0]).to_list())
    found = len(set(links.get_column("pair_id")) & flat_removed) / len(flat_removed)
    assert found >= 0.95 and abs(info["recall"] - found) <= 0.05, (found, info)
    assert links.get_column("index").unique().to_list() == [
        f"ivf-sq8:lists={info['lists']},probe=16,recall={info['recall']:.4f}"]
    row = {p: i for i, p in enumerate(ids.to_list())}
    i = np.array([row[p] for p in links.get_column("pair_id")])
    j = np.array([row[p] for p in links.get_column("duplicate_of")])
    exact_cos = (v[i].astype(np.float64) * v[j]).sum(axis=1)
    assert np.abs(links.get_column("score").to_numpy() - exact_cos).max() <= 1.5e-6
    # one list probed: links are missed, and the recall measured on a sample says how many
    info = {}
    ia, ib, isc = dd.across_edges(v, gcode, 0.9, 16, "ivf", probe=1, info=info)
    measured = len(_edge_set(ia, ib) & exact) / len(exact)
    assert 0.5 < measured < 0.97 and abs(info["recall"] - measured) <= 0.05, (measured, info)
    cos = (v[ia].astype(np.float64) * v[ib]).sum(axis=1)
    assert np.abs(isc - cos).max() < 1e-6 and (isc >= np.float32(0.9)).all()


def test_hnsw_still_works_and_reports_its_recall():
    rng = np.random.default_rng(8)
    v, pairs = _planted(rng, 4000, 32, noise=0.33)
    gcode = _gcode(pairs)
    exact = _edge_set(*dd.across_edges(v, gcode, 0.9, 16, "flat")[:2])
    info: dict = {}
    ha, hb, _ = dd.across_edges(v, gcode, 0.9, 16, "hnsw", recall_sample=500, info=info)
    measured = len(_edge_set(ha, hb) & exact) / len(exact)
    assert measured >= 0.9 and abs(info["recall"] - measured) <= 0.05, (measured, info)
    assert info["label"] == "hnsw:M=32,efSearch=64" and info["recall_queries"] == 500
    info = {}
    links = dd.semantic_links(pairs, v, None, 0.9, 16, "hnsw", info=info)
    assert set(links.get_column("index")) == {f"hnsw:M=32,efSearch=64,recall={info['recall']:.4f}"}


# ------------------------------------------------------------------ (d) flat equals the old code


def test_flat_search_through_chunked_code_equals_the_reference(monkeypatch):
    rng = np.random.default_rng(11)
    n, d = 5200, 384
    v, pairs = _planted(rng, n, d, noise=0.3, groups=1500)
    big = np.arange(n) < 1100  # one group larger than a within block (1024 rows)
    pairs = pairs.with_columns(source_id=pl.when(pl.Series(big)).then(pl.lit("big")).otherwise(pl.col("source_id")))
    monkeypatch.setattr(dd, "SEARCH_CHUNK", 1)  # several query chunks, each aligned on FAISS's 4096-query tile
    monkeypatch.setattr(dd, "WITHIN_ROWS", 64)  # many stacked batches of groups
    monkeypatch.setattr(dd, "RESCORE_CHUNK", 7)
    for within, across in ((0.9, 0.9), (0.6, None), (None, 0.8)):
        want = _ref_semantic_links(pairs, v, within, across)
        got = dd.semantic_links(pairs, v, within, across, 16, "flat")
        kinds = {m: got.filter(pl.col("method") == m).height for m in dd.SEMANTIC_METHODS}
        assert all(kinds[m] > 100 for m, t in zip(dd.SEMANTIC_METHODS, (across, within), strict=True) if t), kinds
        assert_frame_equal(got, want)


def test_flat_query_chunks_start_on_blas_tiles_and_never_leave_a_short_tail():
    import faiss

    tile = faiss.cvar.distance_compute_blas_query_bs
    for n in (10, 4095, 4096 * 4 + 5, 100_000):
        ranges = dd._query_chunks(n, 384)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a % tile == 0 for a, _ in ranges)
        assert all(b - a >= 334 for a, b in ranges[:-1]) and (len(ranges) == 1 or ranges[-1][1] - ranges[-1][0] >= 334)


# ------------------------------------------------------------------ (e) the step, chunked


def _workdir(root, rng, n_sources: int = 60, per: int = 5, d: int = 48):
    from pipelines.steps import embed as embed_step
    from pipelines.store import Workdir
    from schemas.recipe import EmbedConfig

    wd = Workdir(root).create()
    src_vec = _unit(rng.standard_normal((n_sources, d)))
    texts, vecs, rows = [], [], []
    for s in range(n_sources):
        sid = f"src{s:03d}"
        texts.append(sid)
        vecs.append(src_vec[s])
        for k in range(per):
            kind = rng.integers(0, 5)
            if kind == 0:  # a copy of the source
                cid, vec = sid, src_vec[s]
            elif kind == 1 and s > 0:  # the same paraphrase text under another source
                cid, vec = f"shared{s % 7}", _unit(np.ones((1, d)) + (s % 7))[0]
            else:  # near its source, sometimes near another paraphrase of it or of another source
                cid = f"t{s:03d}-{k}"
                anchor = src_vec[(s + (k % 2)) % n_sources]
                vec = _unit((anchor + rng.choice([0.05, 0.15, 0.6]) * rng.standard_normal(d))[None])[0]
            if cid not in texts:
                texts.append(cid)
                vecs.append(vec)
            rows.append({"pair_id": f"pair{s:03d}-{k}", "source_id": sid, "candidate_id": cid,
                         "is_source_copy": cid == sid})
    mid = embed_step.model_id(EmbedConfig())
    order = rng.permutation(len(texts))
    wd.append("embeddings", pl.DataFrame({
        "text_id": [texts[i] for i in order], "model_id": [mid] * len(texts),
        "embedding": pl.Series([vecs[i].astype(np.float32) for i in order], dtype=pl.List(pl.Float32))}))
    pairs = (pl.DataFrame(rows).unique("pair_id", keep="first").sort("pair_id")
             .with_columns(source=pl.col("source_id"), paraphrase=pl.col("candidate_id"), request_id=pl.lit("r"),
                           group_id=pl.col("source_id")))
    return wd, pairs, dict(zip(texts, vecs, strict=True))


def test_dedup_step_gives_the_same_links_with_a_tiny_chunk_and_as_the_reference(tmp_path, monkeypatch):
    from pipelines.steps import dedup as step
    from schemas.recipe import DedupConfig, EmbedConfig, NLIConfig

    cfg = DedupConfig(within_source=0.9, across_sources=0.9)
    results = []
    for chunk, name in ((3, "tiny"), (10_000, "large")):
        monkeypatch.setattr(step, "CHUNK", chunk)
        wd, pairs, vec_of = _workdir(tmp_path / name, np.random.default_rng(5))
        stats = step.dedup(wd, cfg, EmbedConfig(), NLIConfig(), pairs)
        assert stats["index"] == "flat" and stats["search"]["kind"] == "flat"
        results.append(wd.read_current("dedup_links").drop("dedup_id"))
    assert_frame_equal(results[0], results[1])
    # the reference: the whole pair set's vectors at once, the old priority expression, the old operators
    src = np.stack([vec_of[t] for t in pairs.get_column("source_id")])
    para = np.stack([vec_of[t] for t in pairs.get_column("candidate_id")])
    work = pairs.with_columns(priority=pl.Series((src * para).sum(axis=1), dtype=pl.Float64)).with_row_index("_vec")
    exact = _ref_exact_links(work)
    rest = work.join(exact.select("pair_id"), on="pair_id", how="anti").sort("pair_id")
    sem = _ref_semantic_links(rest, para[rest.get_column("_vec").to_numpy()], 0.9, 0.9)
    want = pl.concat([exact, sem])
    assert {"exact-source", "exact", "semantic-source", "semantic-corpus"} <= set(want.get_column("method"))
    assert_frame_equal(results[0], want)


def test_dedup_step_with_ivf_records_the_index_and_its_recall(tmp_path):
    from pipelines.steps import dedup as step
    from schemas.recipe import DedupConfig, EmbedConfig, NLIConfig

    wd, pairs, _ = _workdir(tmp_path / "ivf", np.random.default_rng(6))
    cfg = DedupConfig(within_source=0.9, across_sources=0.9, index="auto", exact_max=10, ivf_probe=4,
                      recall_sample=50)
    stats = step.dedup(wd, cfg, EmbedConfig(), NLIConfig(), pairs)
    search = stats["search"]
    assert search["kind"] == "ivf" and search["code"] == "sq8" and search["probe"] == 4
    assert stats["index"] == f"ivf-sq8:lists={search['lists']},probe=4"
    assert search["recall_queries"] == 50 and search["recall"] is not None and 0 <= search["recall"] <= 1
    corpus = wd.read_current("dedup_links").filter(pl.col("method") == "semantic-corpus")
    assert corpus.height > 0
    assert set(corpus.get_column("index")) == {f"{stats['index']},recall={search['recall']:.4f}"}
