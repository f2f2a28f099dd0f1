"""LLM-judge step (`paradistill judge`): label a stratified sample of the corpus pairs with a chat model.

The sample is drawn from the current scores (curation/judge.py: equal-width bins over `judge.stratify_by`, the same
number of pairs per bin, a seeded order that a larger sample extends). Pairs already judged by the same model and
prompt version count toward the sample and are never sent again: a rerun with the same size sends nothing, a
larger one sends only the new pairs.

Requests go through the chat teacher's client (curation/teachers/openai_chat.py: concurrency, adaptive rate
limits, retries with backoff) and its budget (pipelines/steps/chat.py: `Budget`, `max_cost` over the judge spend
recorded in the workdir). Every answer is journalled (flushed) as a `labels` row when it arrives and the journal
is compacted into parquet shards every LABEL_SHARD_ROWS rows, so a kill loses at most the requests in flight and
a rerun folds the journal in first. Requests that fail after every retry become `request_failures` rows
(teacher_kind 'judge', source_id the pair's source) and are sent again by the next run.
"""

from __future__ import annotations

import time

import polars as pl

from curation.judge import (
    EXAMPLE_ANSWER,
    assign_bins,
    bin_edges,
    judge_label_id,
    judge_messages,
    parse_answer,
    stratified_sample,
)
from curation.prompt_templates import JUDGE_MODES, PromptTemplate, load_template
from curation.teachers.costs import Price, cost_usd, load_prices
from curation.teachers.openai_chat import ChatRequest, ChatResult, ChatTeacher
from curation.teachers.tokens import count_text, estimate_many
from curation.text import request_id
from pipelines.journal import Journal, recover
from pipelines.steps.chat import Budget, FailureTally, failure_row, run_async
from pipelines.steps.pairs import PairTexts, unique_pairs
from pipelines.store import Workdir
from schemas.errors import BudgetReached, RecipeError, StateError
from schemas.recipe import JudgeConfig

KIND = "judge"  # teacher_kind of the judge's request_failures rows, and the request ids' namespace
LABEL_SHARD_ROWS = 64  # labels per parquet shard while a run goes on (the journal holds them until then)
_NOT_SCORES = {"score_set", "pair_id", "source_id"}


def request_params(cfg: JudgeConfig) -> dict:
    """Every parameter that changes what the judge returns (and so the request id)."""
    return {"temperature": cfg.temperature, "top_p": 1.0, "max_completion_tokens": cfg.max_new_tokens}


def judge_spent_usd(wd: Workdir) -> float:
    """Judge spend recorded in this workdir (every run, every judge model): what `judge.max_cost` caps."""
    s = (wd.scan("labels").filter(pl.col("origin") == "judge").select(pl.col("cost_usd").sum()).collect().item())
    return float(s or 0.0)


def judged_pairs(wd: Workdir, model: str, template: PromptTemplate) -> set[str]:
    """Pairs with a stored answer of this judge model and prompt version (readable or not: never paid twice)."""
    done = (wd.scan("labels")
            .filter((pl.col("origin") == "judge") & (pl.col("judge_model") == model)
                    & (pl.col("prompt_version") == template.version_id))
            .select("pair_id").unique().collect())
    return set(done.get_column("pair_id"))


def score_values(wd: Workdir, column: str) -> pl.DataFrame:
    """(pair_id, source_id, candidate_id, value) of the corpus pairs in the current score set.

    No score set is a StateError (curate first); a column the scores do not have, or have only nulls in, is a
    RecipeError naming the columns that can be used."""
    set_id = wd.current_set("scores")
    if set_id is None:
        raise StateError(f"{wd.root}: no scores to draw the judge's sample from; run paradistill curate -w "
                         f"{wd.root} first")
    scores = wd.scan("scores").filter(pl.col("score_set") == set_id)
    schema = scores.collect_schema()
    numeric = [c for c, t in schema.items() if c not in _NOT_SCORES and (t.is_numeric() or t == pl.Boolean)]
    filled = scores.select(pl.col(c).cast(pl.Float64).is_not_nan().sum().alias(c) for c in numeric).collect()
    usable = [c for c in numeric if filled.height and (filled[c][0] or 0) > 0]
    if column not in usable:
        why = "has only empty values" if column in schema else "is not a score column"
        raise RecipeError(f"judge.stratify_by: {column!r} {why} in the current scores; use one of: "
                          f"{', '.join(usable) or '(none: rerun paradistill curate)'}")
    values = scores.select("pair_id", pl.col(column).cast(pl.Float64).alias("value")).collect()
    pairs = unique_pairs(wd, texts=False).select("pair_id", "source_id", "candidate_id")
    return pairs.join(values, on="pair_id", how="inner")


def bin_stats(values: pl.DataFrame, drawn: pl.DataFrame, done: set[str], bins: int) -> list[dict]:
    """Per bin of the value range: its edges, the pairs in it, the pairs drawn and those judged before."""
    ok = values.filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
    if ok.height == 0:
        return []
    low, high = float(ok["value"].min()), float(ok["value"].max())
    edges = bin_edges(low, high, bins)
    per_bin = dict(ok.select(assign_bins(pl.col("value"), low, high, bins).alias("bin")).group_by("bin").len()
                   .iter_rows())
    drawn_bins = drawn.with_columns(pl.col("pair_id").is_in(list(done)).alias("done"))
    return [{"bin": i, "low": round(edges[i], 6), "high": round(edges[i + 1], 6), "pairs": per_bin.get(i, 0),
             "sample": int((drawn_bins["bin"] == i).sum()),
             "already_judged": int(drawn_bins.filter((pl.col("bin") == i) & pl.col("done")).height)}
            for i in range(len(edges) - 1)]


def plan(pairs: pl.DataFrame, cfg: JudgeConfig, template: PromptTemplate) -> list[ChatRequest]:
    """One request per pair (pairs with source and paraphrase texts); its id depends on the judge, the prompt
    version, the parameters and the pair only."""
    params = request_params(cfg)
    return [ChatRequest(request_id=request_id(KIND, cfg.model, template.version_id, params, pid, 0),
                        source_id=sid, sample_index=0, messages=judge_messages(template, src, para))
            for pid, sid, src, para in pairs.select("pair_id", "source_id", "source", "paraphrase").iter_rows()]


def estimate(reqs: list[ChatRequest], cfg: JudgeConfig, price: Price | None) -> dict:
    """Prompt tokens by tiktoken; completion tokens those of a two-line answer (capped by max_new_tokens)."""
    prompt = estimate_many([r.messages for r in reqs], cfg.model)
    for r, p in zip(reqs, prompt, strict=True):
        r.est_prompt_tokens = p
    completion = len(reqs) * min(cfg.max_new_tokens, count_text(EXAMPLE_ANSWER, cfg.model) + 1)
    out = {"requests": len(reqs), "prompt_tokens": int(sum(prompt)), "completion_tokens_est": completion}
    out["cost_usd_est"] = round(cost_usd(price, out["prompt_tokens"], completion), 6) if price else None
    return out


def label_row(res: ChatResult, pair: dict, cfg: JudgeConfig, template: PromptTemplate, price: Price | None,
              run_id: str) -> dict:
    """The `labels` row of one answered request (label and rewrite null where the answer cannot be read)."""
    raw = res.contents[0] if res.contents else None
    if raw is None:  # a refusal: keep what the model said instead
        raw = next((r for r in res.refusals if r), None)
    meaning, rewrite = parse_answer(raw)
    return {"label_id": judge_label_id(pair["pair_id"], cfg.model, template.version_id),
            "pair_id": pair["pair_id"], "source_id": pair["source_id"], "candidate_id": pair["candidate_id"],
            "source": pair["source"], "paraphrase": pair["paraphrase"], "label": meaning, "rewrite": rewrite,
            "origin": "judge", "in_corpus": True, "file": None, "origin_row": None, "judge_model": cfg.model,
            "prompt_version": template.version_id, "raw": raw,
            "cost_usd": (round(cost_usd(price, res.prompt_tokens, res.completion_tokens, res.cached_tokens), 8)
                         if price else None),
            "request_id": res.request.request_id, "run_id": run_id, "at": time.time_ns()}


def _as_judge(e: RecipeError) -> RecipeError:
    """The client's one-line errors name the teacher's settings; here they are the judge's."""
    return type(e)(str(e).replace("teacher", "judge"))


def judge(wd: Workdir, cfg: JudgeConfig, run_id: str, progress=None, dry_run: bool = False,
          sample: int | None = None) -> dict:
    """Judge the pairs of the stratified sample (`sample` or judge.sample pairs in all) that have no stored
    answer; returns counts, dollars, the estimate and the sample per bin. Stopping at `max_cost` raises
    BudgetReached (its `.stats` hold these stats) once every answer received is stored."""
    t0 = time.perf_counter()
    recover(wd, "labels")
    recover(wd, "request_failures")
    template = load_template(cfg.prompt, JUDGE_MODES, "judge.prompt")
    n = sample if sample is not None else cfg.sample
    if n < 1:
        raise RecipeError(f"judge: --sample must be at least 1, not {n}")
    values = score_values(wd, cfg.stratify_by)
    done = judged_pairs(wd, cfg.model, template)
    drawn = stratified_sample(values, n, cfg.bins, cfg.seed, first=done)
    todo_ids = drawn.filter(~pl.col("pair_id").is_in(list(done)))
    pairs = values.join(todo_ids.select("pair_id"), on="pair_id", how="semi")
    pairs = PairTexts.open(wd).attach(pairs.select("pair_id", "source_id", "candidate_id")) if pairs.height else \
        pairs.with_columns(source=pl.lit(None, pl.String), paraphrase=pl.lit(None, pl.String))
    by_request = {}
    reqs = plan(pairs, cfg, template)
    for r, row in zip(reqs, pairs.iter_rows(named=True), strict=True):
        by_request[r.request_id] = row
    price = load_prices(cfg.price_file, cfg.prices).price_for(cfg.model)
    if cfg.max_cost is not None and price is None:
        raise RecipeError(f"judge.max_cost: no price known for model {cfg.model!r}; add it under judge.prices "
                          "({MODEL: {input: USD per 1M, output: USD per 1M}}) or judge.price_file")
    est = estimate(reqs, cfg, price)
    already = drawn.height - len(reqs)
    stats: dict = {"model": cfg.model, "prompt_version": template.version_id, "stratify_by": cfg.stratify_by,
                   "sample": n, "drawn": drawn.height, "pairs": values.height,
                   "unscored": int(values["value"].is_null().sum() + values["value"].is_nan().sum()),
                   "already_judged": already, "to_send": len(reqs), "estimate": est, "price_known": price is not None,
                   "bins": bin_stats(values, drawn, done, cfg.bins)}
    counts = {"judged": 0, "failed": 0, "unreadable": 0, "meaning_yes": 0, "meaning_no": 0, "rewrite_no": 0,
              "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "retries": 0}
    if dry_run or not reqs:
        return {**stats, **counts, "dry_run": dry_run, "stopped_at_budget": False,
                "seconds": round(time.perf_counter() - t0, 3)}
    try:
        client = ChatTeacher(
            model=cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, temperature=cfg.temperature,
            top_p=1.0, max_new_tokens=cfg.max_new_tokens, structured_output="off", list_mode=False,
            concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s, backoff_max_s=cfg.backoff_max_s, rpm=cfg.rpm, tpm=cfg.tpm, seed=cfg.seed,
            max_tokens_field=cfg.max_tokens_field)
    except RecipeError as e:
        raise _as_judge(e) from None
    spent0 = judge_spent_usd(wd)
    budget = Budget(cfg.max_cost, spent0, price, cfg.max_new_tokens)
    task = None
    if progress:
        task = progress.add_task("judge", total=drawn.height, completed=already, unit="pair", tokens=0, cost=0.0,
                                 projected=est["cost_usd_est"])
    labels, fails = Journal(wd, "labels", rotate_rows=LABEL_SHARD_ROWS), Journal(wd, "request_failures")
    tally = FailureTally()

    def on_result(res: ChatResult) -> None:
        counts["retries"] += max(0, res.attempts - 1)
        if res.ok:
            row = label_row(res, by_request[res.request.request_id], cfg, template, price, run_id)
            labels.write(row)
            counts["judged"] += 1
            counts["unreadable"] += row["label"] is None
            counts["meaning_yes"] += row["label"] is True
            counts["meaning_no"] += row["label"] is False
            counts["rewrite_no"] += row["rewrite"] is False
            counts["prompt_tokens"] += res.prompt_tokens
            counts["completion_tokens"] += res.completion_tokens
            counts["cost_usd"] += row["cost_usd"] or 0.0
            budget.settle(res.request, row["cost_usd"])
        else:
            fails.write(failure_row(res, KIND, cfg.model, run_id))
            counts["failed"] += 1
            tally.add(res.failure_kind, res.error)
            budget.settle(res.request, 0.0)
        if task is not None:
            progress.update(task, advance=1, tokens=counts["prompt_tokens"] + counts["completion_tokens"],
                            cost=counts["cost_usd"])

    try:
        run_async(client.run(reqs, on_result, budget.admit))
    except RecipeError as e:  # the server rejected the key
        raise _as_judge(e) from None
    finally:
        labels.close()
        fails.close()
    counts["cost_usd"] = round(counts["cost_usd"], 6)
    stats.update(counts, **tally.stats(), dry_run=False, throttled=client.gate.throttled if client.gate else 0,
                 base_url=client.base_url, stopped_at_budget=budget.stopped,
                 spent_total_usd=round(spent0 + counts["cost_usd"], 6), max_cost=cfg.max_cost,
                 seconds=round(time.perf_counter() - t0, 3))
    if budget.stopped:
        err = BudgetReached(
            f"judge stopped at the budget: ${stats['spent_total_usd']:.4f} spent of max_cost ${cfg.max_cost:.4f}; "
            f"the {counts['judged']} answer(s) of this run are stored, rerun with a larger --max-cost to go on")
        err.stats = stats  # type: ignore[attr-defined] - for a notebook that catches it
        raise err
    return stats
