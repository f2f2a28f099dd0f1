"""Run manifests: what a run did, with what recipe and inputs, so any export can be traced to its making."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from pipelines.store import Workdir, atomic_write_json


def package_version() -> str:
    try:
        return metadata.version("paradistill")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def recipe_hash(recipe_dict: dict) -> str:
    """Hash of what a recipe makes: its workdir (where the result is stored, an absolute path resolved from the
    recipe's folder or the current directory) and its execution settings (partition size and workers change how
    fast, never what) are left out, so one recipe has one hash wherever and however it is run."""
    made = {k: v for k, v in recipe_dict.items() if k not in ("workdir", "execution")}
    canon = json.dumps(made, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def file_fingerprint(path: Path) -> dict:
    """Content hash, size and mtime of an input file (a folder: hash over its files' names and contents)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size = 0
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    return {"path": str(path), "sha256": h.hexdigest(), "bytes": size}


class RunManifest:
    """`runs/<run_id>/manifest.json`, rewritten atomically after every stage so a killed run leaves a trace."""

    def __init__(self, workdir: Workdir, command: str, recipe: dict | None = None):
        now = datetime.now(UTC)
        self.run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        self.path = workdir.root / "runs" / self.run_id / "manifest.json"
        self.data: dict = {
            "run_id": self.run_id,
            "command": command,
            "status": "running",
            "started_at": now.isoformat(),
            "package_version": package_version(),
            "recipe": recipe,
            "recipe_hash": recipe_hash(recipe) if recipe is not None else None,
            "inputs": [],
            "stages": {},
        }
        self._t0 = time.perf_counter()
        self.save()

    def add_input(self, fingerprint: dict) -> None:
        self.data["inputs"].append(fingerprint)

    def record_stage(self, name: str, info: dict) -> None:
        self.data["stages"][name] = info
        self.save()

    def finish(self, status: str = "complete") -> None:
        self.data["status"] = status
        self.data["finished_at"] = datetime.now(UTC).isoformat()
        self.data["seconds"] = round(time.perf_counter() - self._t0, 3)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def latest_manifests(workdir: Workdir) -> list[dict]:
    """All manifests of a workdir, oldest first."""
    out = []
    for p in sorted((workdir.root / "runs").glob("*/manifest.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    # by start time (microseconds): run ids sort by the second only, and two runs can start in one second
    return sorted(out, key=lambda m: (str(m.get("started_at") or ""), str(m.get("run_id") or "")))


def close_stale_runs(workdir: Workdir) -> list[str]:
    """Mark runs still 'running' as 'interrupted'; call only while holding the workdir lock (none can be live)."""
    stale = []
    for p in sorted((workdir.root / "runs").glob("*/manifest.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("status") == "running":
            data["status"] = "interrupted"
            atomic_write_json(p, data)
            stale.append(data.get("run_id", p.parent.name))
    return stale
