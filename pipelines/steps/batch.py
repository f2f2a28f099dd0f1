"""Batch API step: submit request shards once, record their batch ids, collect results into `generations`.

The shard files live in `batches/<shard_key>.jsonl` and their batch ids in the `batches` table, so a rerun after a
crash polls and collects instead of resubmitting; a shard created on the server but not yet recorded is found
again by its metadata. Results are written with the batch id as shard key: collecting twice writes nothing new.
"""

from __future__ import annotations

import json
import time

import polars as pl

from curation.teachers.openai_batch import TERMINAL, BatchClient, read_results, shards
from curation.teachers.openai_chat import ChatRequest, ChatResult, max_tokens_fields, request_body, resolve_server
from pipelines.steps.chat import (
    FailureTally,
    base_columns,
    estimate,
    failure_row,
    generation_row,
    prepare,
    spent_usd,
)
from pipelines.store import Workdir, atomic_write_bytes
from schemas.recipe import BatchTeacherConfig

ENDED = ["collected", "failed", "expired", "cancelled"]  # our batches table: nothing more will come of these


def batch_states(wd: Workdir) -> pl.DataFrame:
    """The newest row per batch id."""
    return (wd.scan("batches").sort("at").group_by("batch_id").agg(pl.all().last()).collect().sort("at"))


def _record(wd: Workdir, b: dict, shard_key: str, n: int, size: int, run_id: str, status: str | None = None) -> None:
    wd.append("batches", pl.DataFrame([{
        "batch_id": b["id"], "shard_key": shard_key, "input_file_id": b.get("input_file_id"), "n_requests": n,
        "bytes": size, "status": status or b.get("status"), "output_file_id": b.get("output_file_id"),
        "error_file_id": b.get("error_file_id"), "run_id": run_id, "at": time.time_ns()}]))


def _shard_requests(wd: Workdir, key: str, by_id: dict[str, ChatRequest]) -> dict[str, ChatRequest]:
    """The planned requests of a submitted shard, read back from its local JSONL file."""
    path = wd.root / "batches" / f"{key}.jsonl"
    ids = [json.loads(line)["custom_id"] for line in path.read_text().splitlines() if line.strip()]
    return {i: by_id[i] for i in ids if i in by_id}


def generate_batch(wd: Workdir, cfg: BatchTeacherConfig, run_id: str, progress=None, dry_run: bool = False,
                   moderated: set[str] | None = None) -> dict:
    """Submit what is neither stored nor in a live batch, then (cfg.wait) poll and collect every live batch."""
    t0 = time.perf_counter()
    template, sources, reqs, done, _failed, price = prepare(wd, cfg, "openai-batch", moderated)
    by_id = {r.request_id: r for r in reqs}
    states = batch_states(wd)
    live = states.filter(~pl.col("status").is_in(ENDED))
    in_flight: set[str] = set()
    for key in live.get_column("shard_key"):
        in_flight |= set(_shard_requests(wd, key, by_id))
    todo = [r for r in reqs if r.request_id not in done and r.request_id not in in_flight]
    est = estimate(todo, sources, cfg, template, price, batch=True)
    stats: dict = {"planned": len(reqs), "already_done": len(done & set(by_id)), "in_live_batches": len(in_flight),
                   "to_submit": len(todo), "estimate": est, "price_known": price is not None, "submitted": 0,
                   "batches_submitted": 0, "batches_found_on_server": 0, "generated": 0, "failed": 0,
                   "cost_usd": 0.0, "dry_run": dry_run}
    if dry_run:
        return {**stats, "seconds": round(time.perf_counter() - t0, 3)}
    base_url, key = resolve_server(cfg.base_url, cfg.api_key_env)
    client = BatchClient(base_url, key)
    structured = cfg.structured_output != "off" and template.mode == "list"
    if todo:
        spent = spent_usd(wd)
        fields = max_tokens_fields(cfg.max_tokens_field, base_url)
        bodies = [request_body(r, cfg.model, cfg.temperature, cfg.top_p, cfg.max_new_tokens, structured, fields)
                  for r in todo]
        on_server = client.submitted()
        for shard in shards(todo, bodies, cfg.max_requests_per_file, int(cfg.max_file_mb * 1024 * 1024)):
            if cfg.max_cost is not None and price is not None:
                cost = estimate(shard.requests, sources, cfg, template, price, batch=True)["cost_usd_est"]
                if spent + cost > cfg.max_cost:
                    stats["stopped_at_budget"] = True
                    break
                spent += cost
            atomic_write_bytes(wd.root / "batches" / f"{shard.key}.jsonl", shard.data)
            if shard.key in on_server and on_server[shard.key]["status"] not in ("failed", "expired", "cancelled"):
                b = on_server[shard.key]
                stats["batches_found_on_server"] += 1
            else:
                b = client.submit(shard, cfg.completion_window)
                stats["batches_submitted"] += 1
                stats["submitted"] += shard.n
            _record(wd, b, shard.key, shard.n, len(shard.data), run_id)
    stats.update(_collect(wd, cfg, client, by_id, template, price, run_id, progress, structured))
    stats.update(spent_total_usd=round(spent_usd(wd), 6), seconds=round(time.perf_counter() - t0, 3),
                 model=cfg.model, prompt_version=template.version_id, on_failures=cfg.on_failures)
    return stats


def _collect(wd: Workdir, cfg: BatchTeacherConfig, client: BatchClient, by_id: dict, template, price, run_id: str,
             progress, structured: bool) -> dict:
    """Poll live batches (until all end when cfg.wait) and load every ended one exactly once."""
    base = base_columns(cfg, template, "openai-batch", run_id)
    out = {"generated": 0, "failed": 0, "cost_usd": 0.0, "batches_collected": 0, "pending_batches": 0}
    tally = FailureTally()
    task = None
    while True:
        live = batch_states(wd).filter(~pl.col("status").is_in(ENDED))
        if task is None and progress and live.height:
            task = progress.add_task("batches", total=live.height, unit="batch")
        still = 0
        for row in live.iter_rows(named=True):
            b = client.retrieve(row["batch_id"])
            if b["status"] not in TERMINAL:
                still += 1
                if b["status"] != row["status"]:
                    _record(wd, b, row["shard_key"], row["n_requests"], row["bytes"], run_id)
                continue
            got = _load(wd, client, b, row["shard_key"], by_id, template, base, price, run_id, structured)
            for k in ("generated", "failed", "cost_usd"):
                out[k] += got[k]
            for f in got["failures"]:
                tally.add(f["failure_kind"], f["error"])
            _record(wd, b, row["shard_key"], row["n_requests"], row["bytes"], run_id, status="collected")
            out["batches_collected"] += 1
            if task is not None:
                progress.advance(task)
        out["pending_batches"] = still
        if not still or not cfg.wait:
            return {**out, **tally.stats()}
        time.sleep(cfg.poll_s)


def _load(wd: Workdir, client: BatchClient, b: dict, shard_key: str, by_id: dict, template, base: dict, price,
          run_id: str, structured: bool) -> dict:
    """Output and error files of one ended batch into generations / request_failures (keyed by batch id)."""
    mine = _shard_requests(wd, shard_key, by_id)
    gens, fails, seen = [], [], set()
    for fid in (b.get("output_file_id"), b.get("error_file_id")):
        if not fid:
            continue
        for res in read_results(client.download(fid), mine, structured):
            if res.request.request_id in seen:
                continue
            seen.add(res.request.request_id)
            if res.ok:
                gens.append(generation_row(res, template, base, price, batch=True, batch_id=b["id"]))
            else:
                fails.append(failure_row(res, "openai-batch", base["model"], run_id, batch_id=b["id"]))
    for rid, req in mine.items():
        if rid not in seen:
            res = ChatResult(request=req, ok=False, error=f"batch {b['status']}: no result for this request",
                             attempts=1, failure_kind="batch_item_error")
            fails.append(failure_row(res, "openai-batch", base["model"], run_id, batch_id=b["id"]))
    if gens:
        wd.append("generations", pl.DataFrame(gens, schema_overrides={"items": pl.List(pl.String)}),
                  key=f"batch-{b['id']}")
    if fails:
        wd.append("request_failures", pl.DataFrame(fails), key=f"batch-{b['id']}")
    return {"generated": len(gens), "failed": len(fails), "cost_usd": sum(g["cost_usd"] or 0.0 for g in gens),
            "failures": fails}
