"""Chat-teacher step: plan requests, skip every one whose response is stored, send the rest, journal each response.

Never pay twice: a request id hashes (model, messages' template version, parameters, source, sample index); a
response is journalled (flushed) before the request counts as done, and every run first folds leftover journal
files into `generations`. A server that ignores `n` gets n requests of one choice: sample 0 keeps the id of the
n-choice request, samples 1..n-1 get the ids of their own (source, sample index), so a rerun plans them again
(it sees the stored samples) and sends only those with no stored response.

Budget: `max_cost` caps the teacher spend recorded in the workdir; sending stops before a request whose estimated
cost would cross it, in-flight requests finish, and a rerun with a larger cap goes on.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter

import polars as pl

from curation.parsing import parse_choice
from curation.prompt_templates import PromptTemplate, load_template
from curation.teachers.costs import Price, cost_usd, load_prices
from curation.teachers.openai_chat import ChatRequest, ChatResult, ChatTeacher
from curation.teachers.tokens import count_text, estimate_many
from curation.text import request_id
from pipelines.journal import Journal, recover
from pipelines.store import Workdir
from schemas.errors import RecipeError
from schemas.recipe import BatchTeacherConfig, ChatTeacherConfig


def request_params(cfg: ChatTeacherConfig | BatchTeacherConfig, template: PromptTemplate) -> dict:
    """Every parameter that changes what the server returns (and so the request id); the same for both kinds."""
    choices = cfg.n if template.mode == "single" and getattr(cfg, "sampling", "n") == "n" else 1
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_completion_tokens": cfg.max_new_tokens,
            "n_items": cfg.n if template.mode == "list" else 1, "choices": choices, "seed": cfg.seed,
            "structured_output": cfg.structured_output if template.mode == "list" else "off"}


def plan(sources: pl.DataFrame, cfg: ChatTeacherConfig | BatchTeacherConfig, template: PromptTemplate,
         kind: str, split_n: bool = False) -> list[ChatRequest]:
    """One request per source (list prompt, or `n` choices), or n requests per source (sampling: requests).

    `split_n`: the server ignores `n`, so a request for n choices becomes n requests of one (sample k keeps the id
    of (source, k) under the same parameters: sample 0 is the n-choice request's own id)."""
    params = request_params(cfg, template)
    choices = params["choices"]
    per_source = cfg.n if template.mode == "single" and (choices == 1 or split_n) else 1
    n_ask = cfg.n if template.mode == "list" else 1
    reqs = []
    for sid, text in zip(sources["source_id"], sources["text"], strict=True):
        messages = template.messages(text, n_ask)
        for k in range(per_source):
            reqs.append(sample_request(kind, cfg, template, params, sid, k, messages, 1 if split_n else choices))
    return reqs


def sample_request(kind: str, cfg, template: PromptTemplate, params: dict, source_id: str, k: int,
                   messages: list[dict], n: int) -> ChatRequest:
    """Request for sample `k` of a source (its id depends only on the parameters, the source and k)."""
    return ChatRequest(request_id=request_id(kind, cfg.model, template.version_id, params, source_id, k),
                       source_id=source_id, sample_index=k, messages=messages, n=n,
                       seed=None if cfg.seed is None else cfg.seed + k)


def server_ignored_n(wd: Workdir, cfg, template: PromptTemplate, kind: str) -> bool:
    """Whether an earlier run found that the server ignores `n` for these parameters: it stored samples past 0,
    or a sample-0 reply holding one choice where n were asked (a reply of several choices is stored as a JSON
    list)."""
    params = request_params(cfg, template)
    if params["choices"] <= 1:
        return False
    mine = (wd.scan("generations")
            .filter((pl.col("teacher_kind") == kind) & (pl.col("model") == cfg.model)
                    & (pl.col("prompt_version") == template.version_id)
                    & (pl.col("params_json") == json.dumps(params, sort_keys=True))))
    hits = mine.filter((pl.col("sample_index") > 0)
                       | (pl.col("raw_output").is_not_null() & ~pl.col("raw_output").str.starts_with("[")))
    return hits.select(pl.len()).collect().item() > 0


def estimate(reqs: list[ChatRequest], sources: pl.DataFrame, cfg, template: PromptTemplate,
             price: Price | None, batch: bool) -> dict:
    """Prompt tokens by tiktoken; completion tokens assumed ~ (source tokens + 4) per paraphrase asked."""
    prompt = estimate_many([r.messages for r in reqs], cfg.model)
    for r, p in zip(reqs, prompt, strict=True):
        r.est_prompt_tokens = p
    src_tokens = dict(zip(sources["source_id"], (count_text(t, cfg.model) for t in sources["text"]), strict=True))
    items = cfg.n if template.mode == "list" else 1
    completion = [r.n * min(cfg.max_new_tokens, items * (src_tokens[r.source_id] + 4) + 2) for r in reqs]
    out = {"requests": len(reqs), "prompt_tokens": int(sum(prompt)), "completion_tokens_est": int(sum(completion))}
    out["cost_usd_est"] = (round(cost_usd(price, out["prompt_tokens"], out["completion_tokens_est"], batch=batch), 4)
                           if price else None)
    return out


def generation_row(res: ChatResult, template: PromptTemplate, base: dict, price: Price | None, batch: bool,
                   batch_id: str | None = None) -> dict:
    """One `generations` row from a finished request (items parsed from every choice)."""
    items: list[str] = []
    errors = []
    for content, refusal, finish in zip(res.contents, res.refusals, res.finish_reasons, strict=True):
        got, err = parse_choice(content, template.mode, finish, refusal)
        items.extend(x for x in got if x not in items)
        if err:
            errors.append(err)
    req = res.request
    return {**base, "request_id": req.request_id, "source_id": req.source_id, "sample_index": req.sample_index,
            "raw_output": res.contents[0] if len(res.contents) == 1 else json.dumps(res.contents, ensure_ascii=False),
            "items": items, "parse_error": None if items else (errors[0] if errors else "no paraphrase found"),
            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "finish_reason": "length" if "length" in res.finish_reasons else (res.finish_reasons or ["stop"])[0],
            "latency_s": round(res.latency_s, 4), "attempts": res.attempts, "batch_id": batch_id,
            "refusal": next((r for r in res.refusals if r), None),
            "cost_usd": round(cost_usd(price, res.prompt_tokens, res.completion_tokens, res.cached_tokens,
                                       batch=batch), 8) if price else None}


def failure_row(res: ChatResult, kind: str, model: str, run_id: str, batch_id: str | None = None) -> dict:
    return {"request_id": res.request.request_id, "source_id": res.request.source_id, "teacher_kind": kind,
            "model": model, "error": res.error, "status_code": res.status_code, "attempts": res.attempts,
            "batch_id": batch_id, "run_id": run_id, "at": time.time_ns(),
            "failure_kind": res.failure_kind or "unknown"}


class FailureTally:
    """Failures of one run by kind and by cause: the stats' `failures_by_kind` and `top_failure`."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.causes: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], str] = {}

    def add(self, kind: str | None, error: str | None) -> None:
        kind, error = kind or "unknown", error or "unknown error"
        self.kinds[kind] += 1
        key = (kind, _VARYING.sub("#", error))  # one cause, whatever request id, port or count it names
        self.causes[key] += 1
        self.examples.setdefault(key, error)

    def stats(self) -> dict:
        top = self.causes.most_common(1)
        return {"failures_by_kind": dict(self.kinds.most_common()),
                "top_failure": ({"kind": top[0][0][0], "error": self.examples[top[0][0]], "count": top[0][1]}
                                if top else None)}


# what differs between failures of one cause: request ids (req_...), hex ids, numbers
_VARYING = re.compile(r"\b(?:req_[0-9A-Za-z]+|[0-9a-f]{8,}|\d+)\b")


def open_failures(wd: Workdir) -> dict:
    """Failed requests of the workdir with no stored response (a generation, or a judge's label):
    {count, failures_by_kind, top_failure}."""
    done = pl.concat([wd.scan("generations").select("request_id"),
                      wd.scan("labels").select("request_id").drop_nulls()])
    fails = (wd.scan("request_failures").join(done, on="request_id", how="anti")
             .sort("at").group_by("request_id").agg(pl.all().last())
             .select("failure_kind", "error").collect())
    tally = FailureTally()
    for kind, error in fails.iter_rows():
        tally.add(kind, error)
    return {"count": fails.height, **tally.stats()}


def base_columns(cfg, template: PromptTemplate, kind: str, run_id: str) -> dict:
    return {"teacher_kind": kind, "model": cfg.model, "prompt_name": template.name,
            "prompt_version": template.version_id, "strategy": template.mode, "n_requested": cfg.n,
            "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "dtype": None,
            "seed": cfg.seed, "params_json": json.dumps(request_params(cfg, template), sort_keys=True),
            "run_id": run_id}


def prepare(wd: Workdir, cfg, kind: str, moderated: set[str] | None = None, split_n: bool = False) -> tuple:
    """(template, sources, plan, done ids, failed ids, price) after folding leftover journals into the tables.
    `split_n`: plan n requests of one choice where an earlier run found the server ignores `n`."""
    recover(wd, "generations")
    recover(wd, "request_failures")
    template = load_template(cfg.prompt)
    sources = wd.read("sources").select("source_id", "text").sort("source_id")
    if moderated:
        sources = sources.filter(~pl.col("source_id").is_in(list(moderated)))
    if cfg.limit:
        sources = sources.head(cfg.limit)
    reqs = plan(sources, cfg, template, kind, split_n and server_ignored_n(wd, cfg, template, kind))
    done = set(wd.scan("generations").select("request_id").collect().get_column("request_id"))
    failed = set(wd.scan("request_failures").select("request_id").collect().get_column("request_id")) - done
    prices = load_prices(cfg.price_file, cfg.prices)
    price = prices.price_for(cfg.model)
    if cfg.max_cost is not None and price is None:
        raise RecipeError(f"teacher.max_cost: no price known for model {cfg.model!r}; add it under teacher.prices "
                          "({MODEL: {input: USD per 1M, output: USD per 1M}}) or teacher.price_file")
    return template, sources, reqs, done, failed, price


def spent_usd(wd: Workdir) -> float:
    """Teacher spend recorded in this workdir (every run, every model)."""
    s = wd.scan("generations").select(pl.col("cost_usd").sum()).collect().item()
    return float(s or 0.0)


def run_async(coro) -> None:
    """asyncio.run, or in a helper thread when a loop is already running (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    err: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(coro, err))
    t.start()
    t.join()
    if err:
        raise err[0]


def _catch(coro, err: list) -> None:
    try:
        asyncio.run(coro)
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
        err.append(e)


class Budget:
    """Admits a request only while spent + the worst case of everything in flight stays within the cap.

    The worst case of a request is its estimated prompt plus `max_new_tokens` for every choice, so the recorded
    spend never crosses the cap (it stops short by at most the in-flight requests' unused headroom).
    """

    def __init__(self, cap: float | None, spent: float, price: Price | None, max_new_tokens: int):
        self.cap, self.spent, self.reserved, self.price = cap, spent, 0.0, price
        self.max_new_tokens = max_new_tokens
        self.stopped = False
        self._held: dict[str, float] = {}

    def admit(self, req: ChatRequest) -> bool:
        if self.cap is None or self.price is None:
            return True
        worst = cost_usd(self.price, req.est_prompt_tokens, self.max_new_tokens * req.n)
        if self.spent + self.reserved + worst > self.cap:
            self.stopped = True
            return False
        self.reserved += worst
        self._held[req.request_id] = worst
        return True

    def settle(self, req: ChatRequest, cost: float | None) -> None:
        self.reserved -= self._held.pop(req.request_id, 0.0)
        self.spent += cost or 0.0


def generate_chat(wd: Workdir, cfg: ChatTeacherConfig, run_id: str, progress=None, dry_run: bool = False,
                  moderated: set[str] | None = None) -> dict:
    """Send every planned request whose response is not stored; returns counts, tokens, dollars, timings."""
    t0 = time.perf_counter()
    template, sources, reqs, done, failed, price = prepare(wd, cfg, "openai", moderated, split_n=True)
    skip = done | (set() if cfg.retry_failed else failed)
    todo = [r for r in reqs if r.request_id not in skip]
    est = estimate(todo, sources, cfg, template, price, batch=False)
    stats: dict = {"planned": len(reqs), "already_done": len(reqs) - len(todo), "to_send": len(todo),
                   "estimate": est, "price_known": price is not None}
    if dry_run or not todo:
        return {**stats, "generated": 0, "failed": 0, "cost_usd": 0.0, "dry_run": dry_run,
                "seconds": round(time.perf_counter() - t0, 3)}
    teacher = ChatTeacher(
        model=cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, temperature=cfg.temperature,
        top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, structured_output=cfg.structured_output,
        list_mode=template.mode == "list", concurrency=cfg.concurrency, timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries, backoff_s=cfg.backoff_s, backoff_max_s=cfg.backoff_max_s, rpm=cfg.rpm,
        tpm=cfg.tpm, seed=cfg.seed or 0, max_tokens_field=cfg.max_tokens_field)
    params = request_params(cfg, template)
    issued = {r.request_id for r in reqs}
    expanded: list[int] = [0]

    def expand(req: ChatRequest) -> list[ChatRequest]:
        """Samples 1..n-1 of a request the server answered with fewer than n choices (none already stored)."""
        out = []
        for k in range(1, cfg.n):
            r = sample_request("openai", cfg, template, params, req.source_id, k, req.messages, 1)
            if r.request_id not in issued and r.request_id not in skip:
                issued.add(r.request_id)
                r.est_prompt_tokens = req.est_prompt_tokens
                out.append(r)
        expanded[0] += len(out)
        if out and task is not None:
            progress.update(task, total=len(reqs) + expanded[0])
        return out
    base = base_columns(cfg, template, "openai", run_id)
    spent0 = spent_usd(wd)
    budget = Budget(cfg.max_cost, spent0, price, cfg.max_new_tokens)
    counts = {"generated": 0, "failed": 0, "parse_errors": 0, "refusals": 0, "truncated": 0, "prompt_tokens": 0,
              "completion_tokens": 0, "cost_usd": 0.0, "retries": 0}
    task = None
    if progress:
        task = progress.add_task("generate", total=len(reqs), completed=stats["already_done"], unit="req",
                                 tokens=0, cost=0.0, projected=est["cost_usd_est"])
    gen_journal, fail_journal = Journal(wd, "generations"), Journal(wd, "request_failures")
    tally = FailureTally()

    def on_result(res: ChatResult) -> None:
        counts["retries"] += max(0, res.attempts - 1)
        if res.ok:
            row = generation_row(res, template, base, price, batch=False)
            gen_journal.write(row)
            counts["generated"] += 1
            counts["parse_errors"] += row["parse_error"] is not None
            counts["refusals"] += row["refusal"] is not None
            counts["truncated"] += row["finish_reason"] == "length"
            counts["prompt_tokens"] += res.prompt_tokens
            counts["completion_tokens"] += res.completion_tokens
            counts["cost_usd"] += row["cost_usd"] or 0.0
            budget.settle(res.request, row["cost_usd"])
        else:
            fail_journal.write(failure_row(res, "openai", cfg.model, run_id))
            counts["failed"] += 1
            tally.add(res.failure_kind, res.error)
            budget.settle(res.request, 0.0)
        if task is not None:
            finished = counts["generated"] + counts["failed"]
            projected = (counts["cost_usd"] / counts["generated"] * len(todo)) if counts["generated"] else None
            progress.update(task, advance=1, tokens=counts["prompt_tokens"] + counts["completion_tokens"],
                            cost=counts["cost_usd"], projected=projected if finished else est["cost_usd_est"])

    split = template.mode == "single" and params["choices"] > 1
    try:
        run_async(teacher.run(todo, on_result, budget.admit, expand if split else None))
    finally:
        gen_journal.close()
        fail_journal.close()
    counts["cost_usd"] = round(counts["cost_usd"], 6)
    stats["planned"] += expanded[0]
    stats["to_send"] += expanded[0]
    stats.update(counts, **tally.stats(), throttled=teacher.gate.throttled if teacher.gate else 0, model=cfg.model,
                 base_url=teacher.base_url, prompt_version=template.version_id, posts=teacher.posts,
                 structured_output=teacher.structured, structured_output_fallback=teacher.fallback_reason,
                 sampling_fallback=teacher.n_fallback, samples_added=expanded[0],
                 max_tokens_fields=list(teacher.token_fields), max_tokens_fallback=teacher.token_fallback,
                 stopped_at_budget=budget.stopped, spent_total_usd=round(spent0 + counts["cost_usd"], 6),
                 max_cost=cfg.max_cost, on_failures=cfg.on_failures, seconds=round(time.perf_counter() - t0, 3))
    stats["requests_per_s"] = round((counts["generated"] + counts["failed"]) / max(stats["seconds"], 1e-9), 2)
    return stats
