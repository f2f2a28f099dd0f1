"""Chat teacher over the `openai` package's async client, for any OpenAI-compatible server.

Concurrency cap, adaptive rate limiting (reads `x-ratelimit-*` and `Retry-After`, halves the in-flight limit on a
429 and grows it back on success), retries with exponential backoff and full jitter on 429, 5xx, timeouts,
connection errors and malformed bodies, then a recorded failure. The operator knows nothing of the workdir: each
finished request is handed to `on_result` (the runner writes it) before the next one may count as done.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from schemas.errors import RecipeError

OPENAI_URL = "https://api.openai.com/v1"
JSON_LIST_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "paraphrases",
        "strict": True,
        "schema": {"type": "object", "properties": {"paraphrases": {"type": "array", "items": {"type": "string"}}},
                   "required": ["paraphrases"], "additionalProperties": False},
    },
}
RETRYABLE_STATUS = {408, 409, 429}


class AuthFailed(RecipeError):
    """The server rejected the key: every request would fail the same way, so the run stops (exit 4)."""


@dataclass
class ChatRequest:
    request_id: str
    source_id: str
    sample_index: int
    messages: list[dict]
    n: int = 1  # choices asked of the server (`n`)
    seed: int | None = None
    est_prompt_tokens: int = 0


@dataclass
class ChatResult:
    request: ChatRequest
    ok: bool
    contents: list[str | None] = field(default_factory=list)
    refusals: list[str | None] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    structured: bool = False
    attempts: int = 0
    latency_s: float = 0.0
    error: str | None = None
    status_code: int | None = None


def resolve_server(base_url: str | None, api_key_env: str) -> tuple[str, str]:
    """(base URL, API key) from the recipe and the environment; the key is never stored anywhere."""
    url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    key = os.environ.get(api_key_env, "")
    if not key:
        if url.rstrip("/") == OPENAI_URL:
            raise RecipeError(f"teacher: environment variable {api_key_env} is not set; export your OpenAI key "
                              "there (or set teacher.base_url to a local OpenAI-compatible server)")
        key = "EMPTY"  # vLLM / llama.cpp / Ollama accept any key
    return url, key


def make_client(base_url: str, api_key: str, timeout_s: float, concurrency: int):
    """An AsyncOpenAI client with our own retries (max_retries=0) and a connection pool sized to the cap.

    The aiohttp transport (openai's `aiohttp` extra) is used when installed: httpx's pool spends most of its time
    scanning connections once hundreds are open (measured ~10x slower at 256 in flight on bench/teacher.py).
    """
    import openai

    httpx = __import__("httpx2" if hasattr(openai, "DefaultAsyncHttpx2Client") else "httpx")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    try:
        http = openai.DefaultAioHttpClient(limits=limits, timeout=timeout_s)
    except (RuntimeError, AttributeError):  # openai without the aiohttp extra
        http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout_s)
    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s, http_client=http)


def make_sync_client(base_url: str, api_key: str, timeout_s: float):
    """A sync OpenAI client (Batch API, moderation), with the client's own retries."""
    import openai

    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=5, timeout=timeout_s)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(value: str | None) -> float | None:
    """Seconds in an `x-ratelimit-reset-*` value ("1s", "250ms", "6m0s", "0.5") or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def retry_after(headers) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms` first, then `Retry-After` in seconds)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_duration(headers.get("retry-after"))


class RateGate:
    """Admits requests: a hard concurrency cap, an adaptive in-flight limit, server pauses, optional rpm/tpm."""

    def __init__(self, concurrency: int, rpm: int | None = None, tpm: int | None = None):
        from aiolimiter import AsyncLimiter

        self.cap = concurrency
        self.limit = float(concurrency)
        self.in_flight = 0
        self.pause_until = 0.0
        self.throttled = 0
        self._cond = asyncio.Condition()
        self._rpm = AsyncLimiter(rpm, 60) if rpm else None
        self._tpm = AsyncLimiter(tpm, 60) if tpm else None
        self._tpm_max = tpm or 0

    async def acquire(self, est_tokens: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < max(1, int(self.limit)))
            self.in_flight += 1
        try:
            while (wait := self.pause_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if self._rpm:
                await self._rpm.acquire()
            if self._tpm and est_tokens:
                await self._tpm.acquire(min(est_tokens, self._tpm_max))
        except BaseException:
            await self.release()
            raise

    async def release(self) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        self.pause_until = max(self.pause_until, time.monotonic() + seconds)

    def on_success(self, headers) -> None:
        """Grow the limit back (additive increase) and pause when the server says a limit is spent.

        `x-ratelimit-reset-*` is the time until the whole limit is back; limits refill continuously, so the wait
        for one more request is that time over the limit (a 429's Retry-After corrects any guess that was short).
        """
        self.limit = min(self.cap, self.limit + 1.0 / max(1.0, self.limit))
        if headers is None:
            return
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is not None and remaining.strip().isdigit() and int(remaining) == 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                total = headers.get(f"x-ratelimit-limit-{kind}", "")
                if reset:
                    self.pause(reset / int(total) if total.strip().isdigit() and int(total) > 0 else reset)

    def on_throttle(self, wait: float | None) -> None:
        """A 429: halve the in-flight limit (multiplicative decrease) and honour the server's wait."""
        self.throttled += 1
        self.limit = max(1.0, self.limit / 2)
        if wait:
            self.pause(wait)


def _error_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:500]


def request_body(req: ChatRequest, model: str, temperature: float, top_p: float, max_new_tokens: int,
                 structured: bool) -> dict:
    """The chat completions body of one request (the same for the sync API and Batch API lines)."""
    body: dict = {"model": model, "messages": req.messages, "temperature": temperature, "top_p": top_p,
                  "max_completion_tokens": max_new_tokens}
    if req.n > 1:
        body["n"] = req.n
    if req.seed is not None:
        body["seed"] = req.seed
    if structured:
        body["response_format"] = JSON_LIST_FORMAT
    return body


def result_from_dict(req: ChatRequest, obj: dict, structured: bool, attempts: int, latency: float) -> ChatResult:
    """A ChatResult from a chat completion's JSON (sync response or a Batch API output line); ValueError when it is
    not one."""
    try:
        choices = sorted(obj["choices"], key=lambda c: c.get("index", 0))
        if not choices:
            raise ValueError("response has no choices")
        messages = [c.get("message") or {} for c in choices]
        usage = obj.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return ChatResult(
            request=req, ok=True,
            contents=[m.get("content") for m in messages],
            refusals=[m.get("refusal") for m in messages],
            finish_reasons=[c.get("finish_reason") or "stop" for c in choices],
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            structured=structured, attempts=attempts, latency_s=latency,
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a chat completion ({type(e).__name__}: {e})") from None


class ChatTeacher:
    """Sends ChatRequests concurrently and hands every ChatResult (success or final failure) to a callback."""

    kind = "openai"

    def __init__(self, *, model: str, base_url: str | None, api_key_env: str, temperature: float, top_p: float,
                 max_new_tokens: int, structured_output: str, list_mode: bool, concurrency: int, timeout_s: float,
                 max_retries: int, backoff_s: float, backoff_max_s: float, rpm: int | None = None,
                 tpm: int | None = None, seed: int = 0):
        self.model = model
        self.base_url, self._key = resolve_server(base_url, api_key_env)
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.structured = structured_output != "off" and list_mode
        self.structured_auto = structured_output == "auto"
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        self.rpm, self.tpm = rpm, tpm
        self._rng = random.Random(seed)
        self.gate: RateGate | None = None
        self.fallback_reason: str | None = None
        self._response_cls = None

    def _kwargs(self, req: ChatRequest) -> dict:
        return request_body(req, self.model, self.temperature, self.top_p, self.max_new_tokens, self.structured)

    def _backoff(self, attempt: int, server_wait: float | None) -> float:
        jitter = self._rng.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))
        return max(jitter, server_wait or 0.0)

    async def _one(self, client, req: ChatRequest) -> ChatResult:
        import openai

        attempt, t0 = 0, time.perf_counter()
        while True:
            attempt += 1
            structured = self.structured
            await self.gate.acquire(req.est_prompt_tokens + self.max_new_tokens * req.n)
            wait, error, status = None, None, None
            try:
                # the client's low-level post: same auth, errors and transport as chat.completions.create, but
                # the body goes out as built (the typed-params transform cost ~3 ms a request at 256 in flight)
                raw = await client.post("/chat/completions", body=self._kwargs(req), cast_to=self._response_cls,
                                        options={"headers": {"X-Client-Request-Id": req.request_id}})
                result = result_from_dict(req, json.loads(raw.content), structured, attempt,
                                          time.perf_counter() - t0)
                self.gate.on_success(raw.headers)
                return result
            except openai.AuthenticationError as e:
                raise AuthFailed(f"teacher: {self.base_url} rejected the API key (HTTP 401): check the key in "
                                 "the environment variable named by teacher.api_key_env") from e
            except openai.APIStatusError as e:
                status, error = e.status_code, _error_line(e)
                if status == 400 and structured and self.structured_auto and "response_format" in str(e):
                    self.structured, self.fallback_reason = False, error
                    attempt -= 1  # the server cannot do structured output: ask again for a plain list
                    continue
                if status == 429:
                    wait = retry_after(e.response.headers)
                    self.gate.on_throttle(wait)
                elif status not in RETRYABLE_STATUS and status < 500:
                    return self._failed(req, error, status, attempt, t0)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                error = _error_line(e)
            except (openai.APIResponseValidationError, ValueError, KeyError, TypeError) as e:
                error = f"malformed response: {_error_line(e)}"
            finally:
                await self.gate.release()
            if attempt > self.max_retries:
                return self._failed(req, error, status, attempt, t0)
            await asyncio.sleep(self._backoff(attempt, wait))

    @staticmethod
    def _failed(req: ChatRequest, error: str | None, status: int | None, attempts: int, t0: float) -> ChatResult:
        return ChatResult(request=req, ok=False, error=error or "unknown error", status_code=status,
                          attempts=attempts, latency_s=time.perf_counter() - t0)

    async def run(self, requests: Iterable[ChatRequest],
                  on_result: Callable[[ChatResult], Awaitable[None] | None],
                  admit: Callable[[ChatRequest], bool] | None = None) -> None:
        """Send every request (at most `concurrency` at once); `admit` may refuse one (budget), which stops sending."""
        self.gate = RateGate(self.concurrency, self.rpm, self.tpm)
        import openai

        self._response_cls = __import__("httpx2" if hasattr(openai, "DefaultAsyncHttpx2Client") else "httpx").Response
        client = make_client(self.base_url, self._key, self.timeout_s, self.concurrency)
        slots = asyncio.Semaphore(self.concurrency)
        pending: set[asyncio.Task] = set()
        failure: list[BaseException] = []

        async def worker(req: ChatRequest) -> None:
            try:
                result = await self._one(client, req)
                out = on_result(result)
                if asyncio.iscoroutine(out):
                    await out
            except Exception as e:  # noqa: BLE001 - the first fatal error stops the run after in-flight work
                failure.append(e)
            finally:
                slots.release()

        try:
            for req in requests:
                await slots.acquire()
                if failure or (admit is not None and not admit(req)):
                    slots.release()
                    break
                task = asyncio.create_task(worker(req))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for t in list(pending):
                t.cancel()
            await client.close()
        if failure:
            raise failure[0]
