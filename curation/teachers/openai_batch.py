"""OpenAI Batch API operator: request JSONL shards within the per-file limits, submit, poll, read results.

A shard is named by a hash of its request ids and carried as batch metadata, so a caller that crashed between
creating a batch and recording it finds it again on the server instead of paying for it twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from curation.teachers.openai_chat import (
    MAX_ERROR_CHARS,
    ChatRequest,
    ChatResult,
    make_sync_client,
    request_body,
    result_from_dict,
    status_kind,
)
from schemas.errors import RecipeError

SHARD_META = "paradistill_shard"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Shard:
    key: str
    requests: list[ChatRequest]
    data: bytes  # the JSONL file

    @property
    def n(self) -> int:
        return len(self.requests)


def request_line(req: ChatRequest, body: dict) -> bytes:
    return (json.dumps({"custom_id": req.request_id, "method": "POST", "url": "/v1/chat/completions",
                        "body": body}, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def shards(reqs: list[ChatRequest], bodies: list[dict], max_requests: int, max_bytes: int) -> Iterator[Shard]:
    """Consecutive runs of requests cut at `max_requests` lines or `max_bytes` bytes, whichever comes first."""
    cur: list[ChatRequest] = []
    buf: list[bytes] = []
    size = 0

    def flush() -> Shard:
        h = hashlib.sha256("\n".join(r.request_id for r in cur).encode()).hexdigest()[:16]
        return Shard(h, list(cur), b"".join(buf))

    for req, body in zip(reqs, bodies, strict=True):
        line = request_line(req, body)
        if len(line) > max_bytes:
            raise RecipeError(f"teacher.max_file_mb: request {req.request_id} alone is {len(line)} bytes, over "
                              "the file limit")
        if cur and (len(cur) >= max_requests or size + len(line) > max_bytes):
            yield flush()
            cur, buf, size = [], [], 0
        cur.append(req)
        buf.append(line)
        size += len(line)
    if cur:
        yield flush()


class BatchClient:
    """The few Batch API calls we need, over the sync `openai` client (retries left to the client)."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 120.0):
        self.client = make_sync_client(base_url, api_key, timeout_s)

    def submitted(self) -> dict[str, dict]:
        """Every batch on the server that carries our shard metadata: {shard_key: batch as dict}."""
        found: dict[str, dict] = {}
        for b in self.client.batches.list(limit=100):
            key = (b.metadata or {}).get(SHARD_META)
            if key and key not in found:  # newest first: the latest batch of a shard wins
                found[key] = b.model_dump()
        return found

    def submit(self, shard: Shard, completion_window: str) -> dict:
        f = self.client.files.create(file=(f"{shard.key}.jsonl", shard.data, "application/jsonl"), purpose="batch")
        b = self.client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                       completion_window=completion_window, metadata={SHARD_META: shard.key})
        return b.model_dump()

    def retrieve(self, batch_id: str) -> dict:
        return self.client.batches.retrieve(batch_id).model_dump()

    def download(self, file_id: str) -> str:
        return self.client.files.content(file_id).text


def read_results(text: str, by_id: dict[str, ChatRequest], structured: bool) -> Iterator[ChatResult]:
    """ChatResults from a batch output or error file (lines for unknown custom ids are skipped)."""
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        req = by_id.get(obj.get("custom_id"))
        if req is None:
            continue
        resp, err = obj.get("response") or {}, obj.get("error")
        status = resp.get("status_code")
        if err or status != 200:
            body_err = (resp.get("body") or {}).get("error") if isinstance(resp.get("body"), dict) else None
            e = err or body_err or {}
            msg = f"{e.get('code') or status}: {e.get('message') or 'batch request failed'}"
            kind = status_kind(status) if isinstance(status, int) and status != 200 else "batch_item_error"
            yield ChatResult(request=req, ok=False, error=msg[:MAX_ERROR_CHARS], status_code=status, attempts=1,
                             failure_kind=kind)
            continue
        try:
            yield result_from_dict(req, resp["body"], structured, 1, 0.0)
        except (KeyError, ValueError) as e:
            yield ChatResult(request=req, ok=False, error=f"malformed batch output line: {e}"[:MAX_ERROR_CHARS],
                             status_code=status, attempts=1, failure_kind="invalid_response")


__all__ = ["Shard", "shards", "request_line", "BatchClient", "read_results", "request_body", "TERMINAL"]
