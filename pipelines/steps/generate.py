"""Generate step: plan one request per (source, sample), run them in fixed batches, append each batch.

Resume: requests are ordered by (source_id, sample_index) and cut into fixed batches; each batch is seeded
from the recipe seed and its first request id and written as one atomic shard. A rerun skips batches whose
rows exist, so an interrupted run ends with exactly the rows of an uninterrupted one.

With the Ray backend the pending batches are tasks of an actor pool (one GPU per actor when the cluster has
GPUs; each actor loads the teacher once): a task is one whole batch with its seed, so it samples what this
process would, and this process writes each returned batch as the same shard, in the order they finish.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl

from curation.parsing import parse_paraphrases
from curation.prompt_templates import PromptTemplate, load_template, student_template
from curation.teachers.local import Completion, LocalTeacher
from curation.text import request_id
from pipelines.store import Workdir
from pipelines.student import resolve_adapter
from schemas.recipe import TeacherConfig
from training.prune import apply_pruning


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


def pending_batches(plan: pl.DataFrame, done: set[str], batch_size: int, seed: int
                    ) -> Iterator[tuple[int, int, pl.DataFrame]]:
    """(batch index, batch seed, its requests not yet stored) of each fixed batch of `plan` with work left; a
    batch's seed comes from its first request, stored or not, so a resumed batch samples as it would have."""
    stored = plan.get_column("request_id").is_in(pl.Series(list(done), dtype=pl.String))  # once, not per batch
    for i, start in enumerate(range(0, plan.height, batch_size)):
        todo = plan.slice(start, batch_size).filter(~stored.slice(start, batch_size))
        if todo.height:
            yield i, _batch_seed(seed, plan["request_id"][start]), todo


def portable_ref(ref: str | None) -> str | None:
    """A model reference every process resolves alike: an existing local path made absolute (a Ray actor does
    not run in this process's working folder); a Hub id, or None (the embedded model), as given."""
    return str(Path(ref).resolve()) if ref and Path(ref).exists() else ref


def _complete_here(teacher: LocalTeacher, template: PromptTemplate, n_ask: int, sampling: dict,
                   batches: Iterable[tuple[int, int, pl.DataFrame]]) -> Iterator[tuple[pl.DataFrame, list, float]]:
    """(requests, completions, seconds) of each batch, sampled in this process, in plan order."""
    for _, seed, todo in batches:
        messages = [template.messages(t, n_ask) for t in todo["text"]]
        completions, latency = teacher.complete(messages, seed=seed, **sampling)
        yield todo, completions, latency


@functools.lru_cache(maxsize=2)
def _actor_teacher(model: str | None, dtype: str, adapter: str | None) -> LocalTeacher:
    """The teacher of a Ray actor, made once per process (its weights load on the first batch)."""
    return LocalTeacher(model, dtype, adapter, prune=apply_pruning)


def _complete_rows(ctx: dict, rows: pl.DataFrame) -> pl.DataFrame:
    """One batch's completions in a Ray actor: `rows` are its requests (messages as JSON, the batch's seed)."""
    teacher = _actor_teacher(ctx["model"], ctx["dtype"], ctx["adapter"])
    if teacher.model_id != ctx["model_id"]:
        raise RuntimeError(f"this node resolves the teacher to {teacher.model_id}, the driver to {ctx['model_id']}")
    messages = [json.loads(m) for m in rows["messages"]]
    completions, latency = teacher.complete(messages, seed=int(rows["seed"][0]), **ctx["sampling"])
    return pl.DataFrame([(c.raw_output, c.prompt_tokens, c.completion_tokens, c.finish_reason, latency)
                         for c in completions],
                        schema={"raw_output": pl.String, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
                                "finish_reason": pl.String, "latency_s": pl.Float64}, orient="row")


def _complete_on_ray(backend, teacher: LocalTeacher, cfg: TeacherConfig, template: PromptTemplate, n_ask: int,
                     sampling: dict, batches: Iterable[tuple[int, int, pl.DataFrame]]
                     ) -> Iterator[tuple[pl.DataFrame, list, float]]:
    """(requests, completions, seconds) of each batch, sampled by the Ray backend's actors, as they finish."""
    todo = {i: (seed, reqs) for i, seed, reqs in batches}
    if not todo:
        return
    plan = pl.concat([reqs.select(batch=pl.lit(i, pl.Int64), seed=pl.lit(seed, pl.Int64), messages=pl.Series(
        [json.dumps(template.messages(t, n_ask)) for t in reqs["text"]], dtype=pl.String))
        for i, (seed, reqs) in todo.items()])
    ctx = {"model": portable_ref(cfg.model), "dtype": teacher.dtype,
           "adapter": str(teacher.adapter) if teacher.adapter else None, "model_id": teacher.model_id,
           "sampling": sampling}
    for i, out in backend.map_groups(_complete_rows, ctx, plan, "batch", num_gpus=1 if backend.gpus else 0):
        completions = [Completion(*r) for r in out.select("raw_output", "prompt_tokens", "completion_tokens",
                                                          "finish_reason").iter_rows()]
        yield todo[i][1], completions, float(out["latency_s"][0])


def generate(wd: Workdir, cfg: TeacherConfig, run_id: str, progress=None, backend=None) -> dict:
    """Run every planned request not yet stored; returns counts, tokens and timings. `backend`: a Ray backend
    whose actors sample the batches, or None (this process samples them)."""
    t0 = time.perf_counter()
    teacher = LocalTeacher(cfg.model, cfg.dtype, resolve_adapter(cfg.adapter) if cfg.adapter else None,
                           prune=apply_pruning)  # a pruned student as teacher: its base pruned alike
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
    batches = pending_batches(plan, done, cfg.batch_size, cfg.seed)
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}
    if backend is None:
        results = _complete_here(teacher, template, n_ask, sampling, batches)
    else:
        results = _complete_on_ray(backend, teacher, cfg, template, n_ask, sampling, batches)
    for todo, completions, latency in results:
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
