"""Ray scaling benchmark: the same corpus curated on 1 and 2 Ray workers, beside the local backend.

    .venv/bin/python -m bench.ray_scaling [--pairs 20000] [--workers 1,2] [--partition-size P] [--recipe PATH]
                                          [--ray-address ADDR] [--keep DIR] [--json PATH]

A seeded synthetic corpus (bench/synthetic.py) is imported once (`runner.ingest_pairs`); every configuration
then curates its own fresh copy of that workdir (nothing cached between runs: no embeddings, parses or scores)
with `runner.curate` and the recipe (default: the shipped `diverse`), `execution.backend: ray` with 1, 2, ...
workers, and once with the local backend (2 workers) as the reference measured in the same run. One local Ray
instance (num_cpus = the most workers asked for, dashboard off) is started before the runs, so Ray's start-up
is in no row; `--ray-address` joins a cluster instead (the worker counts are then actor counts there). A small
other corpus is curated once before the timed runs, so imports, model loads and numba compilation are in no row
either.

Printed: the machine and versions; per configuration the curate seconds, the seconds of each stage (parse and
metrics are parts of score; on Ray every stage's tasks run on the actors, on an instance of k CPUs per row),
pairs/s, speed-up against 1 Ray worker and scaling efficiency (speed-up / workers), of the whole curation and of
the score stage alone, and the ratio against the local backend; then whether every run wrote the same
decisions and scores tables as the reference (the backends must give the same tables).

The default partition size is an eighth of the corpus (at least 64), so that every configuration has several
tasks per worker; the recipe's own (50,000) would give a 20k corpus one scoring task.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script too: bench/curation.py must not shadow the curation package
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import polars as pl  # noqa: E402

from bench import synthetic  # noqa: E402
from bench.table import print_table as print_rows  # noqa: E402

RECIPE = ROOT / "pipelines" / "recipes" / "diverse.yaml"
SET_COLUMNS = ["score_set", "filter_id"]
COMPARED = {"decisions": "pair_id", "scores": "pair_id"}
GB = 1024 ** 3
WARM_UP_PAIRS = 300


def machine() -> dict:
    """CPU count and model, memory, whether torch sees a GPU, and the versions that matter here."""
    import ray
    import torch

    from pipelines.pool import cpu_count

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor() or "unknown")
    mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "cpus_usable": cpu_count(), "cpu_model": model, "memory_gb": round(mem / GB, 1),
            "gpu": gpu, "python": platform.python_version(), "ray": ray.__version__, "polars": pl.__version__}


def start_ray(address: str | None, cpus: int, recipe) -> dict:
    """A Ray instance of `cpus` CPUs (or the cluster at `address`) that the backend then reuses; its resources."""
    import ray

    from pipelines.ray_backend import _object_store_bytes

    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=_object_store_bytes(recipe.execution),
                 **quiet)
    return {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def _stop_ray() -> None:
    """End this process' connection; an instance started here ends with it, a joined cluster keeps running."""
    import ray

    ray.shutdown()


def warm_up(recipe, folder: Path, seed: int) -> float:
    """Curate a small other corpus once, in this process, before the timed runs: the imports, the models' first
    load and the numba kernels' compilation (cached on disk for the workers) are then in no row."""
    from pipelines import runner

    t0 = time.perf_counter()
    corpus, root = folder / "warm-up.parquet", folder / "warm-up"
    shutil.rmtree(root, ignore_errors=True)
    synthetic.generate(corpus, WARM_UP_PAIRS, seed + 1)
    runner.ingest_pairs(str(corpus), root, progress=False)
    runner.curate(root, configured(recipe, "local", 1, 10_000_000, None), progress=False)
    shutil.rmtree(root, ignore_errors=True)
    return time.perf_counter() - t0


def configured(recipe, backend: str, workers: int, partition_size: int, address: str | None):
    """The recipe on `backend` with `workers`; on a local Ray instance of `workers` CPUs its embedding actors run
    `workers` torch threads too, so a row's every stage has that many cores."""
    ex = type(recipe.execution).model_validate({
        **recipe.execution.model_dump(), "backend": backend, "workers": workers, "partition_size": partition_size,
        "ray_address": address if backend == "ray" else None,
        "model_threads": workers if backend == "ray" and not address else "auto"})
    return recipe.model_copy(update={"execution": ex})


def stage_seconds(stats: dict) -> dict[str, float]:
    """embed, dedup, parse, metrics (parse and metrics: parts of score), score, filter, from curate's stats."""
    score = stats.get("score", {})
    parse = stats.get("parse") or score.get("parse") or {}  # top level when it ran beside a GPU encoder
    out = {"embed": stats.get("embed", {}).get("seconds"), "dedup": stats.get("dedup", {}).get("seconds"),
           "parse": parse.get("seconds"), "metrics": score.get("seconds_by_input", {}).get("metrics"),
           "score": score.get("seconds"), "filter": stats.get("filter", {}).get("seconds")}
    return {k: float(v) for k, v in out.items() if v is not None}


def tables(root: Path) -> dict[str, pl.DataFrame]:
    from pipelines.store import Workdir

    wd = Workdir(root)
    return {t: wd.read_current(t).drop(SET_COLUMNS, strict=False).sort(key) for t, key in COMPARED.items()}


def run_one(imported: Path, folder: Path, recipe, backend: str, workers: int) -> tuple[dict, dict]:
    from pipelines import runner

    root = folder / f"wd-{backend}-{workers}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(imported, root)
    print(f"[{backend} x{workers}] curating a fresh copy: {root} ...", flush=True)
    t0 = time.perf_counter()
    stats = runner.curate(root, recipe, progress=False)
    secs = time.perf_counter() - t0
    filt = stats.get("filter", {})
    row = {"backend": backend, "workers": workers, "curate_s": secs, "stages": stage_seconds(stats),
           "unique_pairs": filt.get("pairs"), "kept": filt.get("kept"),
           "score_tasks": stats.get("score", {}).get("partitions"),
           "parse_task_texts": (stats.get("parse") or stats.get("score", {}).get("parse") or {}).get("task_texts")}
    print(f"[{backend} x{workers}] {secs:.1f} s, kept {row['kept']:,} of {row['unique_pairs']:,}", flush=True)
    return row, tables(root)


def difference(ref: dict[str, pl.DataFrame], got: dict[str, pl.DataFrame]) -> str:
    """'equal', or how the decisions and scores differ from the reference's."""
    if all(t.equals(ref[name]) for name, t in got.items()):
        return "equal"
    a, b = ref["scores"], got["scores"]
    num = [c for c, t in a.schema.items() if t.is_float() and c in b.columns]
    worst = max(((a[c] - b[c]).abs().max() or 0.0) for c in num) if a.height == b.height and num else None
    kept = a.height == b.height and ref["decisions"]["kept"].equals(got["decisions"]["kept"])
    return f"differ (max score difference {worst}, {'same' if kept else 'other'} kept pairs)"


def fmt(x: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def print_table(rows: list[dict], pairs: int) -> None:
    ray1 = next((r for r in rows if r["backend"] == "ray" and r["workers"] == 1), None)
    local = next((r for r in rows if r["backend"] == "local"), None)
    for r in rows:
        r["pairs_per_s"] = pairs / r["curate_s"]
        r["speedup"] = ray1["curate_s"] / r["curate_s"] if ray1 else None
        r["efficiency"] = r["speedup"] / r["workers"] if r["speedup"] else None
        s1, s = (ray1 or {}).get("stages", {}).get("score"), r["stages"].get("score")
        r["score_speedup"] = s1 / s if s1 and s else None
        r["score_efficiency"] = r["score_speedup"] / r["workers"] if r["score_speedup"] else None
        r["vs_local"] = local["curate_s"] / r["curate_s"] if local else None
    stages = list(dict.fromkeys(k for r in rows for k in r["stages"]))
    head = ["backend", "workers", "curate s", *[f"{s} s" for s in stages], "pairs/s", "speed-up", "efficiency",
            "score speed-up", "score eff.", "x local"]
    table = [[r["backend"], str(r["workers"]), fmt(r["curate_s"]), *[fmt(r["stages"].get(s)) for s in stages],
              fmt(r["pairs_per_s"], ",.0f"), fmt(r["speedup"], ".2f", "x"), fmt(r["efficiency"], ".0%"),
              fmt(r["score_speedup"], ".2f", "x"), fmt(r["score_efficiency"], ".0%"), fmt(r["vs_local"], ".2f", "x")]
             for r in rows]
    print_rows(head, table)
    print("(parse and metrics are parts of score, the stage on Ray; speed-up and efficiency against 1 Ray worker; "
          "x local: the local backend's curate seconds / this row's)")


def parse_workers(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give worker counts like 1,2") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts must be at least 1")
    return ks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=synthetic.parse_count, default=20_000)
    ap.add_argument("--workers", type=parse_workers, default=[1, 2], help="Ray worker counts (default 1,2)")
    ap.add_argument("--local-workers", type=int, default=2, help="workers of the local reference run (default 2)")
    ap.add_argument("--partition-size", type=int, help="default: pairs / 8, at least 64")
    ap.add_argument("--recipe", default=str(RECIPE), help="a recipe file or shipped name (default: diverse)")
    ap.add_argument("--ray-address", help="join this cluster (auto, ray://HOST:PORT) instead of a local instance")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep the corpus and workdirs")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)

    from pipelines import runner
    from pipelines.recipes_io import load_recipe
    from schemas.errors import RecipeError

    try:
        recipe = load_recipe(args.recipe)[0]
    except RecipeError as e:
        raise SystemExit(f"error: {e}") from None
    psize = args.partition_size or max(64, -(-args.pairs // 8))
    info = machine()
    print(f"machine: {info['cpus']} CPUs ({info['cpus_usable']} usable), {info['cpu_model']}, "
          f"{info['memory_gb']} GB, GPU: {info['gpu'] or 'none visible to torch'}")
    print(f"versions: python {info['python']}, ray {info['ray']}, polars {info['polars']}")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        corpus = folder / f"pairs-{args.pairs}-seed{args.seed}.parquet"
        gen = synthetic.generate(corpus, args.pairs, args.seed)
        imported = folder / "imported"
        shutil.rmtree(imported, ignore_errors=True)
        t0 = time.perf_counter()
        runner.ingest_pairs(str(corpus), imported, progress=False)
        print(f"corpus: {args.pairs:,} pairs (seed {args.seed}, generated in {gen['seconds']:.1f} s, imported in "
              f"{time.perf_counter() - t0:.1f} s); recipe {recipe.name}, partition size {psize:,}", flush=True)
        print(f"warm-up: {WARM_UP_PAIRS} other pairs curated in {warm_up(recipe, folder, args.seed):.1f} s (in no "
              f"row); load average {os.getloadavg()[0]:.2f}", flush=True)
        plan = [("local", args.local_workers), *(("ray", k) for k in args.workers)]
        rows, frames = [], []
        for backend, k in plan:
            if backend == "ray":  # a local instance of k CPUs per row (a joined cluster: the same one)
                t0 = time.perf_counter()
                resources = start_ray(args.ray_address, k, recipe)
                print(f"ray: {'joined ' + args.ray_address if args.ray_address else 'local instance'} {resources}, "
                      f"started in {time.perf_counter() - t0:.1f} s (in no row)", flush=True)
            r = configured(recipe, backend, k, psize, args.ray_address)
            row, tabs = run_one(imported, folder, r, backend, k)
            rows.append(row)
            frames.append(tabs)
            _stop_ray()
    finally:
        _stop_ray()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    print(f"\nload average (1 min) after the runs: {os.getloadavg()[0]:.2f}, on {info['cpus_usable']} usable CPUs")
    print_table(rows, args.pairs)
    ref = frames[0]
    same = {f"{r['backend']} x{r['workers']}": difference(ref, f) for r, f in zip(rows, frames, strict=True)}
    kept = [r["kept"] for r in rows]
    agree = all(v == "equal" for v in same.values()) and len(set(kept)) == 1
    print(f"same tables: {'yes' if agree else 'NO'}: kept {', '.join(f'{k:,}' for k in kept)} of "
          f"{rows[0]['unique_pairs']:,} unique pairs; decisions and scores against the local run's: "
          + "; ".join(f"{k} {v}" for k, v in same.items()))
    print("(a CPU encoder's bf16 vectors can change with its thread count: a row whose actors run other than the "
          "local run's threads may differ in the last bits of a few cosines)")
    tasks = "; ".join(f"{r['backend']} x{r['workers']}: {r['score_tasks']} scoring tasks, parse tasks of "
                      f"{r['parse_task_texts']} texts" for r in rows)
    print(f"tasks: {tasks}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "pairs": args.pairs, "seed": args.seed,
                                         "partition_size": psize, "recipe": recipe.name, "rows": rows,
                                         "same_tables": agree}, indent=2))
        print(f"rows written to {args.json}")
    if any("other kept" in v for v in same.values()) or len(set(kept)) != 1:
        raise SystemExit("error: the runs kept other pairs")


if __name__ == "__main__":
    main()
