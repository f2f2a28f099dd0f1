"""Large-corpus curation benchmark (issue 13): time, memory and growth of the shipped `diverse` recipe at scale.

    make bench-scale                                  # 100k and 300k pairs
    .venv/bin/python bench/scale.py --sizes 1m        # the 1M size, by hand
    .venv/bin/python bench/scale.py --sizes 100k,300k [--partition-size N] [--workers auto|N] [--keep] [--json F]
    .venv/bin/python bench/scale.py --semhash [--semhash-texts 100000]   # semantic dedup beside semhash

For each size: a synthetic corpus (bench/synthetic.py: 2-5 paraphrases per source, 8-30 word sentences, planted
exact and near duplicates) is imported into a fresh workdir and curated with pipelines/recipes/diverse.yaml, in
a fresh subprocess, so that its peak memory is its own: the RSS of that process and all its children (the
worker pool) is summed every 0.2 s. Reported: seconds per stage (and the sub-timings the stages return), pairs/s,
unique texts, peak RSS, and the growth of time per pair from the smallest size. A reference from the same run:
the raw encoder (SentenceTransformer.encode with the embed step's settings) on a sample of the same unique texts;
whole curation throughput (unique texts/s of `curate`) is given as a ratio of it.

--semhash: on N unique texts of the synthetic corpus, embedded once with the default encoder (the vectors are
cached under the bench folder), times exact search (blocked matmul: every pair with cosine >= 0.95), semhash's
self-deduplication given the same vectors, and our semantic dedup (curation.dedup.semantic_links, each text its
own source), each with its recall against the exact search.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository before bench/: run as a script, bench/curation.py would shadow the curation package
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the weights-loading bar of every subprocess

import synthetic  # noqa: E402
from table import print_table  # noqa: E402

RECIPE = ROOT / "pipelines" / "recipes" / "diverse.yaml"
RSS_TARGET_GB = 4.0
GROWTH_TARGET = 1.2
ENCODER_TARGET = 0.8
SEMHASH_THRESHOLD = 0.95
STAGE_ORDER = ("embed", "parse", "dedup", "score", "filter", "report")
GB = 1024 ** 3


# ---------------------------------------------------------------- memory

class PeakRSS:
    """Peak resident memory of a process and all its descendants (summed), sampled in a thread, per phase.

    RSS summed over processes counts the pages they share (libraries, copy-on-write memory of forked workers)
    once per process: an upper bound. PSS (Linux) shares each such page out among them: the tree's actual use."""

    def __init__(self, pid: int | None = None, interval: float = 0.2) -> None:
        import psutil

        self._psutil = psutil
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.pss_peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int | None]:
        rss, pss = 0, 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                info = p.memory_full_info()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            rss += info.rss
            pss = pss + info.pss if pss is not None and hasattr(info, "pss") else None
        return rss, pss

    def _run(self) -> None:
        while True:
            rss, pss = self.sample()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            if pss is not None:
                self.pss_peaks[self.phase] = max(self.pss_peaks.get(self.phase, 0), pss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)


# ---------------------------------------------------------------- child processes

def with_execution(recipe, partition_size: int | None, workers: str | None):
    """The recipe with the flags' execution settings, and those settings."""
    ex, update = recipe.execution, {}
    if partition_size:
        update["partition_size"] = partition_size
    if workers:
        update["workers"] = workers if workers == "auto" else int(workers)
    ex = type(ex).model_validate({**ex.model_dump(), **update})
    return recipe.model_copy(update={"execution": ex}), ex.model_dump()


def child_curate(spec: dict) -> dict:
    """Import the corpus into a fresh workdir and curate it with the diverse recipe (runs in its own process)."""
    with PeakRSS() as rss:
        from pipelines import runner
        from pipelines.recipes_io import load_recipe

        recipe, _ = load_recipe(str(RECIPE))
        recipe, execution = with_execution(recipe, spec.get("partition_size"), spec.get("workers"))
        rss.phase = "import"
        t0 = time.perf_counter()
        imported = runner.ingest_pairs(spec["corpus"], spec["workdir"], progress=False)
        t_import = time.perf_counter() - t0
        rss.phase = "curate"
        t0 = time.perf_counter()
        stats = runner.curate(spec["workdir"], recipe=recipe, progress=False)
        t_curate = time.perf_counter() - t0
    return {"import_s": t_import, "curate_s": t_curate, "imported": imported, "stats": stats,
            "execution": execution, "peak_rss": dict(rss.peaks), "peak_rss_total": rss.peak,
            "peak_pss": dict(rss.pss_peaks)}


def child_encode(spec: dict) -> dict:
    """Raw SentenceTransformer.encode of the texts with the embed step's settings (warm-up outside the timing)."""
    import polars as pl

    from curation.embedding import encode, load_embedder
    from pipelines.recipes_io import load_recipe

    cfg = load_recipe(str(RECIPE))[0].embed
    texts = pl.read_parquet(spec["texts"]).get_column("text").to_list()
    emb = load_embedder(cfg.model, cfg.dtype, cfg.backend, cfg.device)
    encode(emb, texts[:256], cfg.batch_size)
    t0 = time.perf_counter()
    encode(emb, texts, cfg.batch_size)
    secs = time.perf_counter() - t0
    return {"texts": len(texts), "seconds": secs, "texts_per_s": len(texts) / secs, "batch_size": cfg.batch_size,
            **{k: emb.settings[k] for k in ("dtype", "device", "backend")}}


def in_subprocess(kind: str, spec: dict, folder: Path) -> dict:
    """Run child_<kind>(spec) in a fresh interpreter; its result comes back through a JSON file."""
    spec = {**spec, "kind": kind, "out": str(folder / f"result-{kind}-{os.getpid()}.json")}
    spec_path = folder / f"spec-{kind}-{os.getpid()}.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)], check=False)
    out = Path(spec["out"])
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"error: the {kind} subprocess failed (exit {proc.returncode}); its output is above")
    result = json.loads(out.read_text())
    out.unlink()
    spec_path.unlink()
    return result


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = {"curate": child_curate, "encode": child_encode}[spec["kind"]](spec)
    Path(spec["out"]).write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------- curation sizes

def label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def sample_texts(corpus: Path, n: int, out: Path, seed: int) -> int:
    """A seeded sample of `n` unique texts (sources and paraphrases) of the corpus, as a parquet `text` column."""
    import polars as pl

    df = pl.read_parquet(corpus)
    texts = pl.concat([df.get_column("source"), df.get_column("paraphrase")]).unique(maintain_order=True)
    texts = texts.sample(min(n, texts.len()), seed=seed, shuffle=True)
    pl.DataFrame({"text": texts}).write_parquet(out)
    return texts.len()


def timing_leaves(stats: dict, prefix: str = "", depth: int = 0) -> dict[str, float]:
    """Numeric figures of a stage's stats that are timings or rates (seconds, *_s, *_per_s), flattened."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 2:
            inner = timing_leaves(value, f"{name}.", depth + 1)
            out.update(inner)
        elif isinstance(value, int | float) and not isinstance(value, bool) and (
                "second" in key or key.endswith("_s") or key.endswith("per_s")):
            out[name] = float(value)
    return out


def scalars(stats: dict, prefix: str = "") -> dict:
    """The scalar figures of a stats dict, nested dicts flattened (a.b)."""
    out: dict = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}."))
        elif isinstance(value, str | int | float | bool) or value is None:
            out[f"{prefix}{key}"] = value
    return out


def size_row(n: int, res: dict) -> dict:
    stats = res["stats"]
    stages: dict[str, float] = {}
    for name in (*STAGE_ORDER, *sorted(k for k in stats if k not in STAGE_ORDER)):
        st = stats.get(name)
        if isinstance(st, dict) and isinstance(st.get("seconds"), int | float):
            stages[name] = float(st["seconds"])
    if "report" in stats and "report" not in stages:  # the report stage returns no timing: the rest of curate
        stages["report*"] = max(0.0, res["curate_s"] - sum(stages.values()))
    sub = {}
    for name, st in stats.items():
        if isinstance(st, dict):
            sub.update({f"{name}.{k}": v for k, v in timing_leaves(st).items() if k != "seconds"})
    dedup = stats.get("dedup", {})
    texts = stats.get("embed", {}).get("texts")
    return {
        "size": label(n), "pairs": n, "unique_pairs": dedup.get("pairs"), "unique_texts": texts,
        "import_s": res["import_s"], "curate_s": res["curate_s"], "stages": stages, "sub_timings": sub,
        "pairs_per_s": n / res["curate_s"], "texts_per_s": (texts or 0) / res["curate_s"],
        "peak_rss_gb": res["peak_rss_total"] / GB,
        "peak_rss_gb_by_phase": {k: v / GB for k, v in res["peak_rss"].items()},
        "peak_pss_gb": max(res["peak_pss"].values(), default=0) / GB or None,
        "peak_pss_gb_by_phase": {k: v / GB for k, v in res["peak_pss"].items()},
        "execution": res["execution"], "kept": stats.get("filter", {}).get("kept"),
        "dedup": {k: v for k, v in scalars(dedup).items() if not k.endswith("_id")},
        "embed": {k: stats.get("embed", {}).get(k) for k in ("dtype", "device", "batch_size", "backend")},
    }


def print_sizes(rows: list[dict], ref: dict | None) -> None:
    stage_cols = list(dict.fromkeys(k for r in rows for k in r["stages"]))
    head = ["size", "pairs", "texts", "import s", "curate s", *[f"{s} s" for s in stage_cols], "pairs/s",
            "texts/s", "x encoder", "RSS GB", "PSS GB", "growth"]
    table = []
    for r in rows:
        ratio = r["texts_per_s"] / ref["texts_per_s"] if ref else None
        table.append([r["size"], f"{r['pairs']:,}", f"{r['unique_texts'] or 0:,}", f"{r['import_s']:.1f}",
                      f"{r['curate_s']:.1f}", *[f"{r['stages'][s]:.1f}" if s in r["stages"] else "-"
                                                 for s in stage_cols],
                      f"{r['pairs_per_s']:,.0f}", f"{r['texts_per_s']:,.0f}", f"{ratio:.2f}x" if ratio else "-",
                      f"{r['peak_rss_gb']:.2f}", f"{r['peak_pss_gb']:.2f}" if r["peak_pss_gb"] else "-",
                      f"{r['growth']:.2f}x"])
    print_table(head, table)
    print("(RSS/PSS GB: peak of the import + curate process and its workers, summed; RSS counts shared pages once "
          "per process, PSS shares them out)")
    if any(s.endswith("*") for s in stage_cols):
        print("(report*: the report stage returns no timing; the rest of curate's wall time)")
    for r in rows:
        sub = ", ".join(f"{k} {v:,.1f}" for k, v in r["sub_timings"].items())
        print(f"{r['size']}: {sub}")
        phases = ", ".join(f"{k} {v:.2f}/{r['peak_pss_gb_by_phase'].get(k, 0):.2f}"
                           for k, v in r["peak_rss_gb_by_phase"].items())
        index = {k: v for k, v in r["dedup"].items() if any(w in k for w in ("index", "recall", "ivf", "probe"))}
        print(f"{'':{len(r['size'])}}  peak RSS/PSS GB by phase: {phases}; execution {r['execution']}; kept "
              f"{r['kept']:,} of {r['unique_pairs']:,} unique pairs; dedup {index}")
    if ref:
        print(f"encoder reference: {ref['texts']:,} texts in {ref['seconds']:.1f} s = {ref['texts_per_s']:,.0f} "
              f"texts/s ({ref['dtype']}, {ref['device']}, batch {ref['batch_size']})")


def targets(rows: list[dict], ref: dict | None) -> dict:
    out: dict = {}
    if rows:
        big = max(rows, key=lambda r: r["pairs"])
        out["peak_rss_under_4gb"] = {r["size"]: r["peak_rss_gb"] < RSS_TARGET_GB for r in rows}
        out["growth_at_largest"] = {"size": big["size"], "growth": big["growth"], "target": GROWTH_TARGET,
                                    "from": min(rows, key=lambda r: r["pairs"])["size"],
                                    "met": big["growth"] <= GROWTH_TARGET}
        if ref:
            out["encoder_ratio"] = {r["size"]: round(r["texts_per_s"] / ref["texts_per_s"], 3) for r in rows}
            out["encoder_ratio_met"] = {k: v >= ENCODER_TARGET for k, v in out["encoder_ratio"].items()}
    return out


def run_sizes(args, root: Path) -> tuple[list[dict], dict | None]:
    rows: list[dict] = []
    ref = None
    for i, n in enumerate(sorted(args.sizes)):
        corpus = root / f"pairs-{label(n)}-seed{args.seed}.parquet"
        gen = synthetic.generate(corpus, n, args.seed)
        print(f"[{label(n)}] corpus of {n:,} pairs generated in {gen['seconds']:.1f} s: {corpus}", flush=True)
        if i == 0 and args.ref_texts:
            sample = root / "encoder-sample.parquet"
            k = sample_texts(corpus, args.ref_texts, sample, args.seed)
            print(f"encoder reference on {k:,} of its unique texts ...", flush=True)
            ref = in_subprocess("encode", {"texts": str(sample)}, root)
            sample.unlink()
        wd = root / f"wd-{label(n)}"
        shutil.rmtree(wd, ignore_errors=True)
        print(f"[{label(n)}] import + curate (diverse recipe) in a fresh process, workdir {wd} ...", flush=True)
        res = in_subprocess("curate", {"corpus": str(corpus), "workdir": str(wd),
                                       "partition_size": args.partition_size, "workers": args.workers}, root)
        rows.append(size_row(n, res))
        print(f"[{label(n)}] curate {res['curate_s']:.1f} s, peak RSS {res['peak_rss_total'] / GB:.2f} GB",
              flush=True)
        if not args.keep:
            shutil.rmtree(wd, ignore_errors=True)
            corpus.unlink(missing_ok=True)
    base = rows[0]["curate_s"] / rows[0]["pairs"] if rows else 1.0
    for r in rows:
        r["growth"] = (r["curate_s"] / r["pairs"]) / base
    return rows, ref


# ---------------------------------------------------------------- semantic dedup beside semhash

class StoredVectors:
    """The encoder semhash is handed: the vectors computed once with our encoder, looked up by text."""

    def __init__(self, texts: list[str], vecs) -> None:
        self.row = {t: i for i, t in enumerate(texts)}
        self.vecs = vecs

    def encode(self, inputs, **kwargs):
        return self.vecs[[self.row[t] for t in inputs]]


def cached_vectors(texts: list[str], folder: Path, seed: int):
    """L2-normalised vectors of `texts` with the recipe's embed settings, from a .npy cache when present."""
    import numpy as np

    from curation.embedding import encode, load_embedder
    from pipelines.recipes_io import load_recipe
    from pipelines.steps.embed import model_id

    cfg = load_recipe(str(RECIPE))[0].embed
    key = hashlib.sha256(json.dumps([synthetic.GENERATOR_VERSION, seed, len(texts), model_id(cfg)]).encode())
    path = folder / f"vectors-{len(texts)}-seed{seed}-{key.hexdigest()[:12]}.npy"
    if path.exists():
        vecs = np.load(path)
        print(f"vectors: {len(texts):,} from {path}", flush=True)
        return vecs, {"cached": True, "path": str(path)}
    emb = load_embedder(cfg.model, cfg.dtype, cfg.backend, cfg.device)
    t0 = time.perf_counter()
    vecs = encode(emb, texts, cfg.batch_size)
    secs = time.perf_counter() - t0
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(path)
    print(f"vectors: {len(texts):,} encoded in {secs:.1f} s ({len(texts) / secs:,.0f} texts/s), cached in {path}",
          flush=True)
    return vecs, {"cached": False, "path": str(path), "encode_s": secs}


def exact_pairs(vecs, threshold: float, block: int = 512):
    """Every pair i < j with cosine >= threshold, by blocked matmul over the upper triangle (the ground truth)."""
    import numpy as np

    ii, jj = [], []
    n = len(vecs)
    for start in range(0, n, block):
        sims = vecs[start:start + block] @ vecs[start:].T
        a, b = np.nonzero(sims >= threshold)
        keep = start + a < start + b
        ii.append(start + a[keep])
        jj.append(start + b[keep])
    return np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64)


def greedy_removed(n: int, ii, jj) -> set[int]:
    """Texts removed when rows are taken in order and a row goes if an earlier kept row is a duplicate of it
    (the rule semhash and our dedup both follow, given every neighbour)."""
    import numpy as np

    order = np.argsort(jj, kind="stable")
    later, earlier = jj[order], ii[order]
    bounds = np.searchsorted(later, np.arange(n + 1))
    kept = np.ones(n, dtype=bool)
    for j in np.unique(later):
        if kept[earlier[bounds[j]:bounds[j + 1]]].any():
            kept[j] = False
    return set(np.flatnonzero(~kept).tolist())


def semhash_dedup(texts: list[str], vecs, threshold: float) -> set[int]:
    """semhash's self-deduplication of the texts, its encoder returning our stored vectors."""
    from semhash import SemHash

    model = StoredVectors(texts, vecs)
    result = SemHash.from_records(records=texts, model=model).self_deduplicate(threshold=threshold)
    return {model.row[d.record] for d in result.filtered}


def our_dedup(vecs, threshold: float, index: str) -> tuple[set[int], str, dict]:
    """curation.dedup.semantic_links as the dedup step calls it, each text its own source, earlier rows first.

    `index`: a kind semantic_links knows, or auto (what the dedup step would choose for this many vectors)."""
    import numpy as np
    import polars as pl

    from curation import dedup
    from schemas.recipe import DedupConfig

    cfg = DedupConfig()
    kind = dedup.choose_index(len(vecs), index, cfg.exact_max)
    ids = [f"{i:09d}" for i in range(len(vecs))]
    frame = pl.DataFrame({"pair_id": ids, "source_id": ids, "priority": -np.arange(len(vecs), dtype=np.float64)})
    info: dict = {}
    links = dedup.semantic_links(frame, vecs, within=None, across=threshold, neighbors=cfg.neighbors, index=kind,
                                 ivf_lists=cfg.ivf_lists, ivf_probe=cfg.ivf_probe, recall_sample=cfg.recall_sample,
                                 info=info)
    return {int(p) for p in links.get_column("pair_id").to_list()}, kind, info


def run_semhash(args, root: Path) -> dict:
    import numpy as np

    folder = root / "semhash"
    folder.mkdir(parents=True, exist_ok=True)
    n, t = args.semhash_texts, SEMHASH_THRESHOLD
    t0 = time.perf_counter()
    texts = synthetic.unique_texts(n, args.seed)
    print(f"semhash comparison: {len(texts):,} unique synthetic texts ({time.perf_counter() - t0:.1f} s)", flush=True)
    vecs, vec_info = cached_vectors(texts, folder, args.seed)
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    t0 = time.perf_counter()
    ii, jj = exact_pairs(vecs, t)
    t_exact = time.perf_counter() - t0
    truth = greedy_removed(len(texts), ii, jj)
    rows = [{"method": "exact search (numpy blocked matmul)", "seconds": t_exact, "removed": len(truth),
             "recall": 1.0, "precision": 1.0}]

    def add(method: str, fn) -> None:
        t0 = time.perf_counter()
        removed = fn()
        secs = time.perf_counter() - t0
        hit = len(removed & truth)
        rows.append({"method": method, "seconds": secs, "removed": len(removed),
                     "recall": hit / len(truth) if truth else 1.0, "precision": hit / len(removed) if removed else 1.0})

    add("semhash self_deduplicate (usearch)", lambda: semhash_dedup(texts, vecs, t))
    for index in args.dedup_index:
        got: list = []

        def ours(index=index, got=got):
            removed, kind, info = our_dedup(vecs, t, index)
            got.extend((kind, info))
            return removed

        add(f"ours semantic_links (index {index})", ours)
        rows[-1]["method"] = f"ours semantic_links (index {got[0]}{' = auto' if index == 'auto' else ''})"
        rows[-1]["index_info"] = {k: v for k, v in scalars(got[1]).items() if not isinstance(v, str) or len(v) < 80}
    for r in rows:
        r["texts_per_s"] = len(texts) / r["seconds"]
    head = f"{'method':<44} {'seconds':>8} {'texts/s':>10} {'removed':>8} {'recall':>7} {'precision':>9}"
    print(f"\nsemantic dedup of {len(texts):,} texts at cosine >= {t} ({len(ii):,} exact duplicate pairs)")
    print(head)
    for r in rows:
        print(f"{r['method']:<44} {r['seconds']:>8.2f} {r['texts_per_s']:>10,.0f} {r['removed']:>8,} "
              f"{r['recall']:>7.4f} {r['precision']:>9.4f}")
    for r in rows:
        if r.get("index_info"):
            print(f"{r['method']}: {r['index_info']}")
    print("recall = the fraction of the texts that exact search removes (rows taken in order; a row goes when an "
          "earlier kept row has cosine >= the threshold with it) that the method removes too; precision = the "
          "fraction of the method's removals that exact search makes. Vectors given, not timed.")
    ours_rows = [r for r in rows if r["method"].startswith("ours")]
    sem = rows[1]
    met = any(r["texts_per_s"] >= sem["texts_per_s"] and r["recall"] >= 0.95 for r in ours_rows)
    return {"texts": len(texts), "threshold": t, "exact_pairs": int(len(ii)), "vectors": vec_info, "rows": rows,
            "target_met": met}


# ---------------------------------------------------------------- main

def machine() -> dict:
    import psutil

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / GB, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def parse_sizes(text: str) -> list[int]:
    return [synthetic.parse_count(s) for s in text.split(",") if s.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_sizes, default=None,
                    help="corpus sizes in pairs, comma-separated (default 100k,300k; with --semhash: none)")
    ap.add_argument("--partition-size", type=int, default=None, help="execution.partition_size of the recipe")
    ap.add_argument("--workers", default=None, help="execution.workers of the recipe: auto or a number")
    ap.add_argument("--keep", action="store_true", help="keep each corpus and curated workdir")
    ap.add_argument("--json", default=None, help="also write all figures to this JSON file")
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench-scale"), help="the bench folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-texts", type=lambda t: 0 if t.strip() == "0" else synthetic.parse_count(t), default=20_000,
                    help="unique texts the raw encoder reference is timed on (0: no reference)")
    ap.add_argument("--semhash", action="store_true", help="run the semantic dedup comparison with semhash")
    ap.add_argument("--semhash-texts", type=synthetic.parse_count, default=100_000)
    ap.add_argument("--dedup-index", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                    default=["auto"], help="our index kinds to time in --semhash (auto = the dedup step's choice)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.workers not in (None, "auto") and not (args.workers.isdigit() and int(args.workers) >= 1):
        ap.error(f"--workers {args.workers!r}: give auto or a positive number")
    if args.sizes is None:
        args.sizes = [] if args.semhash else [100_000, 300_000]
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "recipe": str(RECIPE.relative_to(ROOT)), "seed": args.seed,
                    "generator_version": synthetic.GENERATOR_VERSION}
    rows, ref = run_sizes(args, root) if args.sizes else ([], None)
    if rows:
        print()
        print_sizes(rows, ref)
        result.update(sizes=rows, encoder_reference=ref, targets=targets(rows, ref))
        print("targets:", json.dumps(result["targets"]))
    if args.semhash:
        result["semhash"] = run_semhash(args, root)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    line = json.dumps(result, default=str)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")


if __name__ == "__main__":
    main()
