"""The Ray backend: the stages' tasks (local teacher batches, embedding and NLI chunks, the exact dedup's hash
partitions and the kmeans search's clusters, parse tasks, score partitions) on a Ray cluster, through Ray Data,
with the local backend's operators and the same tables.

A stage hands the backend a plan (one row per text, pair or vector, an integer column naming each row's task)
and an operator `fn(ctx, rows) -> frame`. The plan is written as parquet under the workdir, which every node
sees, one file per task; a Ray Data dataset of the task files (`from_items`: no file-listing task, which would
need a CPU an actor may hold) is mapped by an actor pool whose actors read their task's file and load their
models once (`map_batches`); the driver gets each task's rows back and writes them as shards of the
same workdir table the local backend writes, so resume, SQL, the report and export are unchanged.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from pipelines.pool import cpu_count, group_bounds
from schemas.errors import RecipeError, WorkerDied
from schemas.recipe import ExecutionConfig

MB = 1024 ** 2
COUNT = "__task_rows__"  # how many rows a task's result has, so the driver knows when it holds all of them


def import_ray():
    """The ray module, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RecipeError("execution.backend is ray, but Ray is not installed: run `pip install 'paradistill[ray]'` "
                          "(or use --backend local)") from None
    return ray


def _object_store_bytes(cfg: ExecutionConfig) -> int:
    """The object store of a Ray instance we start: `object_store_mb`, else a fifth of memory (at most 2 GB)."""
    if cfg.object_store_mb:
        return cfg.object_store_mb * MB
    try:
        total = int(open("/proc/meminfo").read().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        total = 8 * 1024 * MB
    return max(80 * MB, min(2048 * MB, total // 5))


class _GroupActor:
    """Task files -> the operator's results (a Ray Data actor: `fn` loads its models once per actor). A batch
    names plan files on the shared workdir, each one whole task, which the actor reads itself."""

    def __init__(self, fn: Callable, ctx: dict, group: str, threads: int | None = None):
        self.fn, self.ctx, self.group = fn, ctx, group
        if threads:  # a model stage: torch's thread count, which its float results can depend on
            import torch

            torch.set_num_threads(threads)

    def __call__(self, batch: dict) -> dict:
        outs = []
        for path in batch["path"]:
            rows = pl.read_parquet(str(path))
            g = int(rows.get_column(self.group)[0])
            out = self.fn(self.ctx, rows.drop(self.group))
            n = out.height  # an empty result travels as one null row, so its task is reported done too
            outs.append((out if n else out.clear(1)).with_columns(pl.lit(g, pl.Int64).alias(self.group),
                                                                   pl.lit(n, pl.Int64).alias(COUNT)))
        return pl.concat(outs, how="vertical_relaxed").to_arrow(compat_level=pl.CompatLevel.oldest())


class RayBackend:
    """`map_groups` on Ray: joins `execution.ray_address`, or starts a local instance sized to this machine
    (dashboard off, object store sized explicitly), or uses the instance this process already runs."""

    distributed = True  # model stages (embed, NLI) run on its actors, not in the driver

    def __init__(self, cfg: ExecutionConfig, scratch: Path):
        ray = import_ray()
        self.scratch = scratch
        self._started = False
        if not ray.is_initialized():
            quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, **quiet)
            else:
                ray.init(num_cpus=cpu_count(), include_dashboard=False,
                         object_store_memory=_object_store_bytes(cfg), **quiet)
                self._started = True
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-dataset INFO lines; our progress says it
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours report the stage; Ray's would interleave with them
        ctx.print_on_execution_start = False
        resources = ray.cluster_resources()
        self.cpus = cpus = int(resources.get("CPU", 1))
        self.gpus = int(resources.get("GPU", 0))
        largest = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=cpus)
        self.model_threads = min(cpu_count(), largest) if cfg.model_threads == "auto" else int(cfg.model_threads)
        self.workers = cpus if cfg.workers == "auto" else min(int(cfg.workers), cpus)
        self.cfg = cfg

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(abort=exc_type is not None)

    def map_groups(self, fn: Callable, ctx: dict, plan: pl.DataFrame, group: str, *, num_cpus: float = 1,
                   num_gpus: float = 0, stop: threading.Event | None = None, tasks_per_worker: int | None = None,
                   threads: int | None = None) -> Iterator[tuple[int, pl.DataFrame]]:
        """(g, fn(ctx, rows of group g)) for each group of `plan`, as the groups finish (in any order); each
        stage's actors end with it (`tasks_per_worker` is the local pool's). `threads`: a model stage's torch
        threads per actor; the pool then holds at most CPUs / threads actors. (Each actor asks Ray for one CPU
        all the same: Ray Data never schedules an actor that asks for every CPU of a small instance.)"""
        if plan.height == 0:
            return
        import ray

        folder = self.scratch / f"plan-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        plan = plan.with_columns(pl.col(group).cast(pl.Int64))
        keys, bounds = group_bounds(plan, group)
        files = []
        for g, a, b in zip(keys, bounds[:-1], bounds[1:], strict=True):  # one file per task, in plan order
            files.append(str(folder / f"task-{g:08d}.parquet"))
            plan.slice(int(a), int(b - a)).write_parquet(files[-1])
        fits = self.cpus // max(num_cpus, threads or 0) if num_cpus or threads else len(keys)
        if num_gpus:
            fits = min(fits, self.gpus // num_gpus)
        # the pool grows from one actor as tasks queue; the task list is made here, not by a file-listing task, which
        # would need a CPU an actor may hold (a deadlock on a 1-CPU instance)
        actors = ray.data.ActorPoolStrategy(min_size=1, max_size=int(max(1, min(self.workers, len(keys), fits))))
        try:
            ds = (ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
                  .map_batches(_GroupActor, fn_constructor_args=(fn, ctx, group, threads), batch_size=1,
                               batch_format="numpy", compute=actors, num_cpus=num_cpus, num_gpus=num_gpus))
            got: dict[int, list[pl.DataFrame]] = {}
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                for (g,), part in frame.partition_by(group, as_dict=True, maintain_order=True).items():
                    n = part.get_column(COUNT)[0]
                    got.setdefault(g, []).append(part.drop(group, COUNT).head(n))
                    if sum(p.height for p in got[g]) == n:
                        yield g, pl.concat(got.pop(g))
                if stop is not None and stop.is_set():
                    return
        except ray.exceptions.RayError as e:
            raise WorkerDied(f"a Ray worker failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); what was "
                             "written is kept and a rerun resumes from it") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def recycle(self) -> None:
        """Nothing to do: each stage's actors end with its dataset."""

    def close(self, abort: bool = False) -> None:
        """Stop the Ray instance this backend started (one it joined keeps running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def actor_device(device: str, backend) -> tuple[str, int]:
    """The device a model stage runs on and the GPUs each of its actors takes: on Ray, `auto` means the cluster's
    GPUs when it has any (the driver may have none); locally the setting as given, in this process."""
    if not getattr(backend, "distributed", False):
        return device, 0
    gpus = backend.gpus
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    return device, (1 if gpus and device.startswith("cuda") else 0)


def open_backend(cfg: ExecutionConfig, scratch: Path):
    """The recipe's backend: the local process pool, or Ray."""
    from pipelines.pool import Pool, resolve_workers

    if cfg.backend == "ray":
        return RayBackend(cfg, scratch)
    return Pool(resolve_workers(cfg.workers))
