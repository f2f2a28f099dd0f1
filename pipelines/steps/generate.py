"""Generate step: plan one request per (source, sample), run them in fixed batches, append each batch.

Resume: requests are ordered by (source_id, sample_index) and cut into fixed batches; each batch is seeded
from the recipe seed and its first request id and written as one atomic shard. A rerun skips batches whose
rows exist, so an interrupted run ends with exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import time

import polars as pl

from curation.parsing import parse_paraphrases
from curation.prompt_templates import PromptTemplate, load_template, student_template
from curation.teachers.local import LocalTeacher
from curation.text import request_id
from pipelines.store import Workdir
from pipelines.student import resolve_adapter
from schemas.recipe import TeacherConfig


def sampling_params(cfg: TeacherConfig, template: PromptTemplate, dtype: str) -> dict:
    """Every parameter that changes what the teacher returns (and so the request id)."""
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
            "n": cfg.n if template.mode == "list" else 1, "seed": cfg.seed, "dtype": dtype}


def plan_requests(sources: pl.DataFrame, cfg: TeacherConfig, template: PromptTemplate, model_id: str,
                  dtype: str) -> pl.DataFrame:
    """One row per request: `single` prompts make n requests per source, `list` prompts one."""
    params = sampling_params(cfg, template, dtype)
    samples = range(cfg.n) if template.mode == "single" else range(1)
    rows = [
        (request_id("local", model_id, template.version_id, params, sid, k), sid, text, k)
        for sid, text in zip(sources["source_id"], sources["text"], strict=True)
        for k in samples
    ]
    return pl.DataFrame(rows, schema={"request_id": pl.String, "source_id": pl.String, "text": pl.String,
                                      "sample_index": pl.Int64}, orient="row")


def _batch_seed(seed: int, first_request: str) -> int:
    return int(hashlib.sha256(f"{seed}:{first_request}".encode()).hexdigest()[:8], 16)


def generate(wd: Workdir, cfg: TeacherConfig, run_id: str, progress=None) -> dict:
    """Run every planned request not yet stored; returns counts, tokens and timings."""
    t0 = time.perf_counter()
    teacher = LocalTeacher(cfg.model, cfg.dtype, resolve_adapter(cfg.adapter) if cfg.adapter else None)
    template = student_template(teacher.student.template) if teacher.student else load_template(cfg.prompt)
    sources = wd.read("sources").select("source_id", "text").sort("source_id")
    if cfg.limit:
        sources = sources.head(cfg.limit)
    plan = plan_requests(sources, cfg, template, teacher.model_id, teacher.dtype)
    done = set(wd.scan("generations").select("request_id").collect().get_column("request_id"))
    params = sampling_params(cfg, template, teacher.dtype)
    params_json = json.dumps(params, sort_keys=True)
    base = {
        "teacher_kind": teacher.kind, "model": teacher.model_id, "prompt_name": template.name,
        "prompt_version": template.version_id, "strategy": template.mode, "n_requested": cfg.n,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
        "dtype": teacher.dtype, "seed": cfg.seed, "params_json": params_json, "run_id": run_id,
    }
    n_done_before = sum(1 for r in plan.get_column("request_id") if r in done)
    task = progress.add_task("generate", total=plan.height, unit="req", tokens=0) if progress else None
    if progress:
        progress.update(task, completed=n_done_before)
    stats = {"planned": plan.height, "already_done": n_done_before, "generated": 0, "parse_errors": 0,
             "prompt_tokens": 0, "completion_tokens": 0}
    n_ask = cfg.n if template.mode == "list" else 1
    for start in range(0, plan.height, cfg.batch_size):
        batch = plan.slice(start, cfg.batch_size)
        todo = batch.filter(~pl.col("request_id").is_in(list(done)))
        if todo.height == 0:
            continue
        seed = _batch_seed(cfg.seed, batch["request_id"][0])
        messages = [template.messages(t, n_ask) for t in todo["text"]]
        completions, latency = teacher.complete(
            messages, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=seed
        )
        rows = []
        for req, c in zip(todo.iter_rows(named=True), completions, strict=True):
            items, err = parse_paraphrases(c.raw_output, template.mode)
            rows.append({**base, "request_id": req["request_id"], "source_id": req["source_id"],
                         "sample_index": req["sample_index"], "raw_output": c.raw_output, "items": items,
                         "parse_error": err, "prompt_tokens": c.prompt_tokens,
                         "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
                         "latency_s": round(latency, 4),
                         "cost_usd": None, "attempts": 1, "batch_id": None, "refusal": None})
            stats["parse_errors"] += err is not None
            stats["prompt_tokens"] += c.prompt_tokens
            stats["completion_tokens"] += c.completion_tokens
        wd.append("generations", pl.DataFrame(rows, schema_overrides={"items": pl.List(pl.String)}))
        stats["generated"] += len(rows)
        if progress:
            progress.update(task, advance=len(rows),
                            tokens=progress.tasks[task].fields["tokens"] + sum(c.completion_tokens
                                                                              for c in completions))
    stats.update(model=teacher.model_id, prompt_version=template.version_id, dtype=teacher.dtype,
                 seconds=round(time.perf_counter() - t0, 3))
    return stats
