"""The local backend's process pool: CPU-bound partition work (the spaCy parse, the metric kernels) on every core.

Workers are spawned (never forked: Polars, torch and OpenMP threads do not survive a fork), each loads its
models once through the operators' cached loaders, and runs with one BLAS/OpenMP thread so N workers use N
cores. With one worker everything runs in this process, through the same functions: the results are the same.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import polars as pl

from schemas.errors import WorkerDied


def cpu_count() -> int:
    """Cores this process may use: the affinity mask (taskset, cpusets) and a cgroup CPU quota (a container
    limited to 2 CPUs on a 64-core host gets 2)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return n


def resolve_workers(workers: int | str) -> int:
    return cpu_count() if workers == "auto" else max(1, int(workers))


def _init_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from threadpoolctl import threadpool_limits

    os.environ["NUMBA_NUM_THREADS"] = "1"  # read when numba is first imported (by the first task)
    threadpool_limits(1)  # one core per worker: the pool, not each worker's BLAS or OpenMP, spreads the work
    if "numba" in sys.modules:  # already imported by the main module's re-import
        sys.modules["numba"].set_num_threads(1)


def group_bounds(plan: pl.DataFrame, group: str) -> tuple[list[int], np.ndarray]:
    """The groups of `plan` (sorted by `group`) and the row where each starts (plus the end)."""
    col = plan.get_column(group).to_numpy()
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]]) if col.size else np.zeros(0, dtype=np.int64)
    return col[starts].tolist(), np.r_[starts, col.size]


def trim_heap() -> None:
    """Hand this process' freed heap back to the OS (glibc keeps it otherwise: after the encoder, about 0.3 GB at
    20k texts; after the dedup's index, more)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _call(task: tuple) -> pl.DataFrame:
    fn, ctx, rows = task
    return fn(ctx, rows)


class Pool:
    """`map` runs a picklable function over tasks in worker processes (or inline with one worker), in order."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(abort=exc_type is not None)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker)
        return self._executor

    def map(self, fn: Callable, tasks: Iterable, n_tasks: int | None = None, ahead: int | None = None) -> Iterator:
        """fn(task) for each task, yielded in task order; at most `ahead` (default 2 per worker) in flight, so
        results waiting to be consumed stay bounded. A single task (`n_tasks` 1) runs here: starting workers
        would cost more than it saves."""
        if self.workers == 1 or (n_tasks is not None and n_tasks <= 1):
            for task in tasks:
                yield fn(task)
            return
        pool, pending = self._pool(), deque()
        limit = ahead or 2 * self.workers
        try:
            for task in tasks:
                pending.append(pool.submit(fn, task))
                while len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise WorkerDied(
                "a curation worker process died (killed, or out of memory?); what was written is kept and a rerun "
                "resumes from it. Lower execution.partition_size (--partition-size) or --workers; from a Python "
                "script, run curation under `if __name__ == \"__main__\":` (workers are spawned and import the "
                "main script)") from None
        finally:
            for f in pending:
                f.cancel()

    def map_groups(self, fn: Callable, ctx: dict, plan: pl.DataFrame, group: str, *, num_cpus: float = 1,
                   num_gpus: float = 0, stop: threading.Event | None = None, tasks_per_worker: int | None = None,
                   threads: int | None = None) -> Iterator[tuple[int, pl.DataFrame]]:
        """(g, fn(ctx, rows of group g)) for each group of `plan` (sorted by its integer `group` column), in group
        order; the backends' one interface for a per-partition stage (`num_cpus`/`num_gpus`/`threads` are Ray's;
        here each worker has one core). `stop` set: no further group is started. `tasks_per_worker`: fresh workers
        after about that many tasks each (a worker whose memory grows with what it has seen, as spaCy's
        vocabulary does, stays bounded)."""
        keys, bounds = group_bounds(plan, group)
        per_round = len(keys) if not tasks_per_worker else tasks_per_worker * self.workers
        for r in range(0, len(keys), max(1, per_round)):
            if r:
                self.recycle()
            round_keys = keys[r:r + per_round]

            def tasks(start=r, n=len(round_keys)):
                for a, b in zip(bounds[start:start + n], bounds[start + 1:start + n + 1], strict=True):
                    if stop is not None and stop.is_set():
                        return
                    yield fn, ctx, plan.slice(int(a), int(b - a)).drop(group)

            yield from zip(round_keys, self.map(_call, tasks(), n_tasks=len(round_keys)), strict=False)
            if stop is not None and stop.is_set():
                return

    def recycle(self) -> None:
        """Replace the workers by fresh ones at their next task (models a stage loaded are not kept)."""
        self.close()

    def close(self, abort: bool = False) -> None:
        """Stop the workers; `abort` (an error or Ctrl-C in this process) ends running tasks at once: their
        partitions were not written and are redone by the next run."""
        if self._executor is None:
            return
        procs = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=not abort, cancel_futures=True)
        if abort:
            for proc in procs:
                proc.terminate()
        self._executor = None


class Background:
    """A step run in a thread beside the main one (the parse beside a GPU encoder); `result()` joins it."""

    def __init__(self, fn, *args, **kwargs):
        self.stop = threading.Event()
        self._out: dict = {}
        self._thread = threading.Thread(target=self._run, args=(fn, args, {**kwargs, "stop": self.stop}),
                                        daemon=True, name="paradistill-background")
        self._thread.start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            self._out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread by result()
            self._out["error"] = e

    def result(self):
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]

    def abandon(self, timeout: float = 60.0) -> None:
        """After an error elsewhere: submit nothing more and wait for the thread (its pool is being closed, so
        it ends soon); its own error, if any, is dropped in favour of the first one."""
        self.stop.set()
        self._thread.join(timeout)
