"""Python API of `paradistill train` and `paradistill evaluate`: resolve models, then call the trainer/evaluator.

The trainer sees only an exported dataset (folder or Hub id + revision); this layer adds what lives outside it:
the embedded base model, the embedding model for cosine, progress bars and where results are written.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import polars as pl

from curation.teachers.local import resolve_model
from pipelines.progress import make_progress
from schemas.errors import InputError, StateError, first_line
from schemas.recipe import EvaluateConfig, TrainConfig
from schemas.student import read_student

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def resolve_adapter(ref: str | Path) -> Path:
    """An adapter folder (holding student.json), or a folder of versioned ones (`X.Y.Z/`): the newest finished."""
    path = Path(ref)
    if read_student(path) is not None:
        return path.resolve()
    if path.is_dir():
        versions = sorted((tuple(map(int, p.name.split("."))), p) for p in path.iterdir()
                          if VERSION_RE.match(p.name) and read_student(p) is not None)
        if versions:
            return versions[-1][1].resolve()
    raise InputError(f"{ref}: no trained student here (no student.json); train one with `paradistill train` or "
                     "point at its output folder")


def default_output(dataset: str, version: str | None) -> Path:
    """students/NAME-VERSION for a dataset folder or Hub id."""
    dataset = dataset.removeprefix("hf:")
    name = Path(dataset.rstrip("/")).name if Path(dataset).exists() else dataset.replace("/", "--")
    if Path(dataset).exists() and VERSION_RE.match(name):  # exports/NAME/VERSION
        name = Path(dataset.rstrip("/")).parent.name
    return Path("students") / (f"{name}-{version}" if version else name)


def train(dataset: str, config: TrainConfig | None = None, output: str | Path | None = None,
          revision: str | None = None, progress=True) -> dict:
    """Train a LoRA student on an exported dataset; a rerun resumes from the last checkpoint or finds it done.

    `progress`: True (own bar), False, or a running rich Progress to add the bar to (the recipe runner's).
    """
    from training.data import load_splits
    from training.lora import train_student

    cfg = config or TrainConfig()
    token = os.environ.get("HF_TOKEN") or None
    frames, ref = load_splits(dataset, ["train", "validation"], revision, token, optional=("validation",))
    out = Path(output) if output else default_output(dataset, ref.version)
    base_ref = str(Path(cfg.model).resolve()) if cfg.model and Path(cfg.model).exists() else cfg.model
    base_model, loadable = resolve_model(base_ref)
    teacher = None
    if cfg.teacher is not None and cfg.teacher.kd == "word":
        t_ref = cfg.teacher.model
        t_ref = str(Path(t_ref).resolve()) if t_ref and Path(t_ref).exists() else t_ref
        adapter = resolve_adapter(cfg.teacher.adapter) if cfg.teacher.adapter else None
        teacher = (*resolve_model(t_ref), adapter)
    own = progress is True
    bar = make_progress() if own else (progress or None)
    task = bar.add_task("train", total=None, unit="steps") if bar else None

    def on_step(step: int, total: int, loss: float) -> None:
        if bar:
            bar.update(task, completed=step, total=total, description=f"train loss {loss:.3f}")

    if own:
        bar.start()
    try:
        result = train_student(loadable, base_model, base_ref, frames, ref, cfg, out, on_step, teacher)
    finally:
        if own:
            bar.stop()
    return {**result, "dataset": ref.dataset, "version": ref.version}


def evaluate(adapter: str | Path, dataset: str | None = None, config: EvaluateConfig | None = None,
             revision: str | None = None, output: str | Path | None = None) -> dict:
    """Decode the split with the student, score student and teacher, write `eval-SPLIT.json` next to the adapter."""
    from curation.embedding import encode, load_embedder
    from curation.metrics.syntax import load_spacy
    from training.data import load_splits
    from training.evaluate import decode, evaluate_outputs, load_student

    cfg = config or EvaluateConfig()
    t0 = time.perf_counter()
    folder = resolve_adapter(adapter)
    fmt = read_student(folder)
    dataset = dataset or fmt.dataset
    if revision is None and dataset == fmt.dataset:  # the very commit it was trained on, when known
        revision = fmt.options.get("dataset_commit") or fmt.dataset_revision
    frames, ref = load_splits(dataset, [cfg.split], revision, os.environ.get("HF_TOKEN") or None)
    split = frames[cfg.split].sort("source_id", "paraphrase")
    if cfg.limit:
        keep = split.get_column("source_id").unique().sort().head(cfg.limit)
        split = split.filter(pl.col("source_id").is_in(keep.implode()))
    if split.height == 0:
        raise StateError(f"{dataset}: split {cfg.split} has no pairs to evaluate on")
    sources = split.group_by("source_id").agg(pl.col("source").first()).sort("source_id")["source"].to_list()
    _, loadable = resolve_model(fmt.base_model_ref)
    try:
        model, tok = load_student(loadable, str(folder), fmt)
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: cannot load the student on {fmt.base_model_ref or fmt.base_model} "
                         f"({first_line(e)})") from None
    t1 = time.perf_counter()
    outputs = decode(model, tok, fmt, sources, cfg)
    decode_s = time.perf_counter() - t1
    embedder = load_embedder(cfg.embed_model)
    metrics = evaluate_outputs(split, outputs, lambda texts: encode(embedder, texts), load_spacy(), cfg.alpha)
    result = {"adapter": str(folder), "dataset": ref.dataset, "revision": ref.revision, "version": ref.version,
              "split": cfg.split, "sources": len(sources), "teacher_pairs": split.height,
              "decoding": cfg.model_dump(mode="json"), "metrics": metrics,
              "samples": [{"source": s, "student": o, "teacher": split.filter(pl.col("source") == s)["paraphrase"]
                           .to_list()} for s, o in list(zip(sources, outputs, strict=True))[:5]],
              "decode_seconds": round(decode_s, 3), "seconds": round(time.perf_counter() - t0, 3)}
    out = Path(output) if output else folder / f"eval-{cfg.split}.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out)
    pl.DataFrame({"source": sources, "outputs": outputs}).write_parquet(folder / f"eval-{cfg.split}-outputs.parquet")
    return {**result, "path": str(out)}
