"""Shared fixtures: offline Hub, an isolated model cache per session, a CLI runner over real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
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
