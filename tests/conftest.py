"""Shared fixtures: offline Hub, an isolated model cache per session, a CLI runner over real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Converted models go to a per-session cache, so tests never depend on what a user has cached."""
    path = tmp_path_factory.mktemp("paradistill-cache")
    os.environ["PARADISTILL_CACHE"] = str(path)
    return path


def cli(*args: str, cwd: Path | None = None, check: bool = False, timeout: int = 600
        ) -> subprocess.CompletedProcess:
    """Run `paradistill ARGS` in a subprocess exactly as a user would."""
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"paradistill {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error:` line a user mistake must produce (and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def fake_generations(wd, n_sources: int | None = None) -> None:
    """Generations as a teacher would leave them: one request per source (the first `n_sources`), two items,
    one copying the source."""
    import polars as pl

    rows = []
    src = wd.read("sources").select("source_id", "text")
    for i, (sid, text) in enumerate((src if n_sources is None else src.head(n_sources)).iter_rows()):
        rows.append({"request_id": f"r{i:03d}", "source_id": sid, "teacher_kind": "local", "model": "m",
                     "prompt_name": "p", "prompt_version": "p@1#x", "strategy": "list", "sample_index": 0,
                     "n_requested": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "dtype": "float32",
                     "seed": 0, "params_json": "{}", "raw_output": "...", "items": [f"Rewritten {i}.", text],
                     "parse_error": None, "prompt_tokens": 3, "completion_tokens": 4, "finish_reason": "stop",
                     "latency_s": 0.1, "run_id": "t", "cost_usd": None, "attempts": 1,
                     "batch_id": None, "refusal": None})
    wd.append("generations", pl.DataFrame(rows, schema_overrides={"items": pl.List(pl.String)}))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session, as CI runs it: 2 CPUs, a small object store, no dashboard."""
    ray = pytest.importorskip("ray", reason="the ray extra is installed by `make test`")
    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False,
                 logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


def kill_training_at(args: list[str], out: Path, step: int = 8, timeout: float = 300) -> None:
    """Run `paradistill ARGS` and SIGKILL it once it has written the checkpoint of `step` under `out`."""
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + timeout
    while not list((out / "checkpoints").glob(f"step-{step:07d}")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
