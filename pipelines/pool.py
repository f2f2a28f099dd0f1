"""The local backend's process pool: CPU-bound partition work (the spaCy parse, the metric kernels) on every core.

Workers are spawned (never forked: Polars, torch and OpenMP threads do not survive a fork), each loads its
models once through the operators' cached loaders, and runs with one BLAS/OpenMP thread so N workers use N
cores. With one worker everything runs in this process, through the same functions: the results are the same.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

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
