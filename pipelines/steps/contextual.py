"""Contextual teacher step (method B, steps 1-3): contexts, k continuations per context, then pairs.

1. Contexts: request i (of `contexts`) samples a continuation of prefix i (prefixes in turn); the sampled text
   is cut to its first m complete sentences (`trim_context`). Its request id is the context id.
2. Continuations: k per kept context, each prompted with the trimmed context (no trailing space: the LM makes
   the leading-space word token itself); the first sentence of each is kept when it is a proper sentence.
3. Pairs: once all k continuations of a context are stored, its distinct sentences go to `sources` and every
   unordered pair of them to `candidates` (with `context_id`).

Resume, as in the generate step: both request lists are ordered and cut into fixed batches, each batch seeded
from the recipe seed and its first request id and written as one atomic `generations` shard. Step 3 writes
per-context shards named by the context id (`wd.append(..., key=)`), sources first, candidates last, in context
id order; a context counts as done once its candidates shard exists, so a run killed anywhere is finished by the
next one with exactly the rows of an uninterrupted run, and a run with nothing to do loads no model.

With the Ray backend each phase's pending batches are tasks of an actor pool (as in the generate step: one
whole batch and its seed per task, a GPU per actor when the cluster has GPUs), written here as they finish.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Iterator

import polars as pl

from curation.teachers.contextual import (
    ContextualSampler,
    Sample,
    context_ingest_id,
    context_pairs,
    first_sentence,
    trim_context,
)
from curation.text import request_id
from pipelines.steps.generate import _batch_seed, pending_batches, portable_ref
from pipelines.store import Workdir
from schemas.errors import RecipeError
from schemas.recipe import ContextualTeacherConfig

TEACHER = "contextual"
PROMPT_NAME = "contextual"
PROMPT_VERSION = "contextual@1"
NO_SENTENCE = "no proper sentence (>= 3 chars ending . ? !)"


def context_params(cfg: ContextualTeacherConfig, dtype: str) -> dict:
    """Every parameter that changes a context (and so its request id, the context id)."""
    return {"temperature": cfg.context_temperature, "top_p": cfg.context_top_p,
            "max_new_tokens": cfg.context_max_new_tokens, "context_sentences": list(cfg.context_sentences),
            "dtype": dtype, "seed": cfg.seed}


def continuation_params(cfg: ContextualTeacherConfig, dtype: str) -> dict:
    """Every parameter that changes a continuation (the context itself is in its id)."""
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
            "no_repeat_ngram_size": cfg.no_repeat_ngram_size, "dtype": dtype, "seed": cfg.seed}


def plan_contexts(cfg: ContextualTeacherConfig, model_id: str, dtype: str) -> pl.DataFrame:
    """One row per context request, in sample order: request_id (= context_id), prefix, sample_index."""
    params = context_params(cfg, dtype)
    rows = []
    for i in range(cfg.contexts):
        prefix = cfg.prefixes[i % len(cfg.prefixes)]
        rows.append((request_id(TEACHER, model_id, "context", params, prefix, i), prefix, i))
    return pl.DataFrame(rows, schema={"request_id": pl.String, "prefix": pl.String, "sample_index": pl.Int64},
                        orient="row")


def plan_continuations(contexts: pl.DataFrame, cfg: ContextualTeacherConfig, model_id: str,
                       dtype: str) -> pl.DataFrame:
    """k rows per kept context (`contexts`: context_id, context), ordered by (context_id, sample_index)."""
    params = continuation_params(cfg, dtype)
    rows = [
        (request_id(TEACHER, model_id, "continuation", params, cid, j), cid, j, ctx)
        for cid, ctx in sorted(zip(contexts["context_id"], contexts["context"], strict=True))
        for j in range(cfg.k)
    ]
    return pl.DataFrame(rows, schema={"request_id": pl.String, "context_id": pl.String, "sample_index": pl.Int64,
                                      "prompt": pl.String}, orient="row")


def _context_text(prefix: str, continuation: str) -> str:
    """The text trimmed into a context: the prefix and the continuation on one line."""
    return prefix + (" " + continuation.lstrip() if continuation[:1].isspace() else continuation)


def _trim_rng(seed: int, context_id: str) -> random.Random:
    return random.Random(_batch_seed(seed, f"trim:{context_id}"))


def _set_key(context_id: str) -> str:
    return f"contextual-{context_id}"


def _has_set(wd: Workdir, table: str, key: str) -> bool:
    """Whether `wd.append(table, ..., key=key)` has written its shard (the store names it part-set-KEY)."""
    return (wd.tables_dir / table / f"part-set-{key}.parquet").exists()


def _stored(wd: Workdir, ids: list[str]) -> pl.DataFrame:
    """Stored generations among `ids` (first row per request id): request_id, items."""
    if not ids:
        return pl.DataFrame(schema={"request_id": pl.String, "items": pl.List(pl.String)})
    return (wd.scan("generations").filter(pl.col("request_id").is_in(pl.Series(ids).implode()))
            .select("request_id", "items").collect().unique("request_id", keep="first", maintain_order=True))


@functools.lru_cache(maxsize=2)
def _actor_sampler(model: str | None, dtype: str) -> ContextualSampler:
    """The sampler of a Ray actor, made once per process (its weights load on the first batch)."""
    return ContextualSampler(model, dtype)


def _sample_rows(ctx: dict, rows: pl.DataFrame) -> pl.DataFrame:
    """One batch's samples in a Ray actor: `rows` are its prompts and the batch's seed (the sampler is made
    once per actor)."""
    sampler = _actor_sampler(ctx["model"], ctx["dtype"])
    if sampler.model_id != ctx["model_id"]:
        raise RuntimeError(f"this node resolves the model to {sampler.model_id}, the driver to {ctx['model_id']}")
    samples = sampler.sample_detailed(rows["prompt"].to_list(), seed=int(rows["seed"][0]), **ctx["sampling"])
    return pl.DataFrame([(*s, sampler.last_latency_s) for s in samples], orient="row",
                        schema={"text": pl.String, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
                                "finish_reason": pl.String, "latency_s": pl.Float64})


class _Batches:
    """Runs a plan in fixed batches: skips stored batches, seeds each, appends one generations shard each.
    `backend`: a Ray backend whose actors sample the batches, or None (this process samples them)."""

    def __init__(self, wd: Workdir, sampler: ContextualSampler, cfg: ContextualTeacherConfig, stats: dict,
                 progress=None, backend=None):
        self.wd, self.sampler, self.cfg, self.stats, self.progress = wd, sampler, cfg, stats, progress
        self.backend = backend
        self.tokens: dict = {}  # progress task -> completion tokens shown on its bar

    def _sample_here(self, batches, sampling: dict) -> Iterator[tuple[pl.DataFrame, list, float]]:
        """(requests, samples, seconds) of each batch, sampled in this process, in plan order."""
        for _, seed, todo in batches:
            samples = self.sampler.sample_detailed(todo["prompt"].to_list(), seed=seed, **sampling)
            yield todo, samples, self.sampler.last_latency_s

    def _sample_on_ray(self, batches, sampling: dict) -> Iterator[tuple[pl.DataFrame, list, float]]:
        """(requests, samples, seconds) of each batch, sampled by the Ray backend's actors, as they finish."""
        batches = list(batches)
        todo = {i: reqs for i, _, reqs in batches}
        if not todo:
            return
        plan = pl.concat([reqs.select(batch=pl.lit(i, pl.Int64), seed=pl.lit(seed, pl.Int64), prompt="prompt")
                          for i, seed, reqs in batches])
        ctx = {"model": portable_ref(self.cfg.model), "dtype": self.sampler.dtype, "model_id": self.sampler.model_id,
               "sampling": sampling}
        for i, out in self.backend.map_groups(_sample_rows, ctx, plan, "batch", num_gpus=1 if self.backend.gpus else 0):
            samples = [Sample(*r) for r in out.select("text", "prompt_tokens", "completion_tokens",
                                                      "finish_reason").iter_rows()]
            yield todo[i], samples, float(out["latency_s"][0])

    def run(self, plan: pl.DataFrame, done: set[str], prompts: list[str], sampling: dict, make_row, task,
            after_batch=None) -> None:
        batches = pending_batches(plan.with_columns(prompt=pl.Series(prompts, dtype=pl.String)), done,
                                  self.cfg.batch_size, self.cfg.seed)
        results = (self._sample_here(batches, sampling) if self.backend is None
                   else self._sample_on_ray(batches, sampling))
        for todo, samples, latency in results:
            latency = round(latency, 4)
            rows = []
            for req, s in zip(todo.iter_rows(named=True), samples, strict=True):
                rows.append({**make_row(req, s), "request_id": req["request_id"],
                             "sample_index": req["sample_index"], "prompt_tokens": s.prompt_tokens,
                             "completion_tokens": s.completion_tokens, "finish_reason": s.finish_reason,
                             "latency_s": latency})
                self.stats["prompt_tokens"] += s.prompt_tokens
                self.stats["completion_tokens"] += s.completion_tokens
            self.wd.append("generations", pl.DataFrame(rows, schema_overrides={"items": pl.List(pl.String)}))
            done.update(r["request_id"] for r in rows)
            self.stats["generated"] += len(rows)
            if self.progress is not None:
                self.tokens[task] = self.tokens.get(task, 0) + sum(s.completion_tokens for s in samples)
                self.progress.update(task, advance=len(rows), tokens=self.tokens[task])
            if after_batch is not None:
                after_batch(rows)


def generate_contextual(wd: Workdir, cfg: ContextualTeacherConfig, run_id: str, progress=None,
                        backend=None) -> dict:
    """Sample contexts and continuations not yet stored, then write each finished context's sources and pairs.
    `backend`: a Ray backend whose actors sample the batches, or None (this process samples them)."""
    t0 = time.perf_counter()
    lo, hi = cfg.context_sentences
    if not 1 <= lo <= hi:
        raise RecipeError(f"teacher.context_sentences: need 1 <= min <= max, got [{lo}, {hi}]")
    sampler = ContextualSampler(cfg.model, cfg.dtype)
    model_id, dtype = sampler.model_id, sampler.dtype
    base = {"teacher_kind": TEACHER, "model": model_id, "prompt_name": PROMPT_NAME, "prompt_version": PROMPT_VERSION,
            "n_requested": cfg.k, "dtype": dtype, "seed": cfg.seed, "run_id": run_id, "cost_usd": None,
            "attempts": 1, "batch_id": None, "refusal": None}
    stats = {"contexts_planned": cfg.contexts, "generated": 0, "prompt_tokens": 0, "completion_tokens": 0}
    runner = _Batches(wd, sampler, cfg, stats, progress, backend)
    done = set(wd.scan("generations").select("request_id").collect().get_column("request_id"))

    # -- 1. contexts ---------------------------------------------------------------------------------------
    ctx_plan = plan_contexts(cfg, model_id, dtype)
    ctx_base = {**base, "strategy": "context", "temperature": cfg.context_temperature, "top_p": cfg.context_top_p,
                "max_new_tokens": cfg.context_max_new_tokens,
                "params_json": json.dumps(context_params(cfg, dtype), sort_keys=True)}

    def context_row(req: dict, s) -> dict:
        ctx = trim_context(_context_text(req["prefix"], s.text), lo, hi, _trim_rng(cfg.seed, req["request_id"]))
        return {**ctx_base, "source_id": req["request_id"], "raw_output": req["prefix"] + s.text,
                "items": [ctx] if ctx else [],
                "parse_error": None if ctx else f"fewer than {lo} complete sentences"}

    ctx_ids = ctx_plan["request_id"].to_list()
    task_ctx = task_cont = None
    if progress is not None:
        task_ctx = progress.add_task("contexts", total=ctx_plan.height, unit="ctx", tokens=0)
        progress.update(task_ctx, completed=sum(r in done for r in ctx_ids))
        task_cont = progress.add_task("continuations", total=None, unit="req", tokens=0)
    runner.run(ctx_plan, done, ctx_plan["prefix"].to_list(),
               {"temperature": cfg.context_temperature, "top_p": cfg.context_top_p,
                "max_new_tokens": cfg.context_max_new_tokens, "no_repeat_ngram_size": 0},
               context_row, task_ctx)

    # -- 2. continuations ----------------------------------------------------------------------------------
    kept = (_stored(wd, ctx_ids).filter(pl.col("items").list.len() > 0)
            .select(pl.col("request_id").alias("context_id"), pl.col("items").list.first().alias("context")))
    plan = plan_continuations(kept, cfg, model_id, dtype)
    cont_base = {**base, "strategy": "continuation", "temperature": cfg.temperature, "top_p": cfg.top_p,
                 "max_new_tokens": cfg.max_new_tokens,
                 "params_json": json.dumps(continuation_params(cfg, dtype), sort_keys=True)}

    def continuation_row(req: dict, s) -> dict:
        sentence = first_sentence(s.text)
        return {**cont_base, "source_id": req["context_id"], "raw_output": s.text,
                "items": [sentence] if sentence else [], "parse_error": None if sentence else NO_SENTENCE}

    sentence_of: dict[str, str | None] = {  # request id -> kept first sentence, for every stored continuation
        r: (items[0] if len(items) else None) for r, items in _stored(wd, plan["request_id"].to_list()).iter_rows()
    }
    if progress is not None:
        progress.update(task_cont, total=plan.height, completed=len(sentence_of))

    # -- 3. sources and pairs, per finished context, in context id order ------------------------------------
    by_context = {cid: part for (cid,), part in plan.group_by("context_id", maintain_order=True)}
    order = list(by_context)
    state: dict = {"next": 0, "sources": None, "pairs": None}

    def finish_ready() -> None:
        while state["next"] < len(order):
            cid = order[state["next"]]
            part = by_context[cid]
            if not all(r in sentence_of for r in part["request_id"]):
                return
            state["next"] += 1
            key = _set_key(cid)
            if _has_set(wd, "candidates", key):
                continue
            if state["sources"] is None:  # read once, only when some context needs writing
                src = wd.scan("sources").select("source_id", "ingest_id").collect()
                state["sources"] = dict(zip(src["source_id"], src["ingest_id"], strict=True))
                state["pairs"] = set(wd.scan("candidates").select("pair_id").collect().get_column("pair_id"))
            conts = [(j, r, sentence_of[r]) for r, j in zip(part["request_id"], part["sample_index"], strict=True)]
            sources, pairs = context_pairs(cid, conts, state["sources"], state["pairs"])
            if sources.height and not _has_set(wd, "sources", key):
                wd.append("sources", sources, key=key)
            wd.append("candidates", pairs, key=key)
            state["sources"].update(dict.fromkeys(sources["source_id"], context_ingest_id(cid)))
            state["pairs"].update(pairs["pair_id"])

    def after_batch(rows: list[dict]) -> None:
        sentence_of.update((r["request_id"], r["items"][0] if r["items"] else None) for r in rows)
        finish_ready()

    finish_ready()  # contexts finished by an interrupted run before it wrote their pairs
    runner.run(plan, done, plan["prompt"].to_list(),
               {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
                "no_repeat_ngram_size": cfg.no_repeat_ngram_size},
               continuation_row, task_cont, after_batch)

    # -- stats over the whole plan (this call's work and earlier calls') ------------------------------------
    sentences = (plan.select("request_id", "context_id")
                 .with_columns(sentence=pl.col("request_id").replace_strict(sentence_of, default=None,
                                                                           return_dtype=pl.String)))
    per_context = sentences.drop_nulls("sentence").group_by("context_id").agg(d=pl.col("sentence").n_unique())
    stats.update(
        contexts_kept=kept.height, continuations_planned=plan.height, continuations=len(sentence_of),
        sentences_kept=sentences["sentence"].drop_nulls().len(),
        distinct_sentences=sentences["sentence"].drop_nulls().n_unique(),
        pairs=int((per_context["d"] * (per_context["d"] - 1) // 2).sum()) if per_context.height else 0,
        model=model_id, dtype=dtype, seconds=round(time.perf_counter() - t0, 3),
    )
    return stats
