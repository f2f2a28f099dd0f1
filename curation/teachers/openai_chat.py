"""Chat teacher over the `openai` package's async client, for any OpenAI-compatible server.

Concurrency cap, adaptive rate limiting (reads `x-ratelimit-*` and `Retry-After`, halves the in-flight limit on a
429 and grows it back on success), retries with exponential backoff and full jitter on 429, 5xx, timeouts,
connection errors and malformed bodies, then a recorded failure with its real cause and a `failure_kind`. The
operator knows nothing of the workdir: each finished request is handed to `on_result` (the runner writes it)
before the next one may count as done.

Servers that are OpenAI-compatible but not OpenAI (llama.cpp, llama-cpp-python, older vLLM/Ollama) are found out
once per run: a refused `response_format` switches `structured_output: auto` to the list parser, and replies with
fewer choices than `n` switch to n requests of one choice (through the caller's `expand`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlparse

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
#: Words in an error body that say the server cannot do `response_format` (json_schema, a grammar, a schema).
FORMAT_WORDS = ("response_format", "json_schema", "grammar", "schema")
#: Statuses that never mean "structured output unsupported".
NOT_FORMAT_STATUS = {401, 403, 404, 408, 409, 429}
#: Hosts that are OpenAI's own API: their reasoning models refuse `max_tokens`.
OPENAI_HOSTS = ("api.openai.com",)
OPENAI_HOST_SUFFIXES = (".openai.azure.com",)
MAX_ERROR_CHARS = 4000


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
    failure_kind: str | None = None


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


def status_kind(status: int | None) -> str:
    """The failure kind of an HTTP status: rate_limit, auth, client_error (4xx), server_error (5xx)."""
    if status == 429:
        return "rate_limit"
    if status in (401, 403):
        return "auth"
    if status is not None and 400 <= status < 500:
        return "client_error"
    if status is not None and status >= 500:
        return "server_error"
    return "invalid_response"


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not x for x in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


_WRAPPERS = ("openai", "httpx", "httpx2", "httpcore")


def server_message(exc) -> str:
    """The whole message an HTTP error's body carries (every line of it), else the body text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        msg = inner.get("message") if isinstance(inner, dict) else None
        if msg:
            return str(msg).strip()
        return json.dumps(body, ensure_ascii=False)
    if isinstance(body, str) and body.strip():
        return body.strip()
    try:
        text = exc.response.text
    except Exception:  # noqa: BLE001 - a streamed or closed response
        text = ""
    return text.strip() or str(exc).strip()


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(failure_kind, the real cause, whole) of a failed request.

    An HTTP error gives its status class and the server's whole message; a transport error is followed through
    `__cause__`/`__context__` past the openai/httpx wrappers (which call a refused connection "Request timed
    out") to the transport's own exception: connection_refused, connect_error, timeout or disconnected.
    """
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status_kind(status), f"HTTP {status}: {server_message(exc)}"[:MAX_ERROR_CHARS]
    chain = _chain(exc)
    cause = next((e for e in chain if type(e).__module__.split(".")[0] not in _WRAPPERS), chain[-1])
    names = {c.__name__ for e in chain for c in type(e).__mro__}
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        kind = "connection_refused"
    elif any(isinstance(e, TimeoutError) for e in chain) or "ReadTimeout" in names:
        kind = "timeout"
    elif any(isinstance(e, ConnectionResetError | BrokenPipeError) for e in chain) or names & {
            "ServerDisconnectedError", "RemoteProtocolError", "ClientPayloadError"}:
        kind = "disconnected"
    elif "APITimeoutError" in names and not any(isinstance(e, OSError) for e in chain):
        kind = "timeout"
    elif any(isinstance(e, OSError) for e in chain) or "APIConnectionError" in names:
        kind = "connect_error"
    else:
        kind = "invalid_response"
    text = str(cause).strip() or type(cause).__name__
    return kind, f"{type(cause).__name__}: {text}"[:MAX_ERROR_CHARS]


def names_format(message: str) -> bool:
    """Whether an error message names structured output (so the server refused `response_format`)."""
    low = message.lower()
    return any(w in low for w in FORMAT_WORDS)


def max_tokens_fields(choice: str, base_url: str) -> tuple[str, ...]:
    """The request field(s) carrying the completion cap. `auto`: max_completion_tokens on OpenAI's own hosts (its
    reasoning models reject max_tokens), both fields elsewhere (llama.cpp and older servers know only max_tokens;
    servers that know both read the same value)."""
    if choice == "auto":
        host = (urlparse(base_url).hostname or "").lower()
        official = host in OPENAI_HOSTS or host.endswith(OPENAI_HOST_SUFFIXES)
        return ("max_completion_tokens",) if official else ("max_tokens", "max_completion_tokens")
    if choice == "both":
        return ("max_tokens", "max_completion_tokens")
    return (choice,)


def request_body(req: ChatRequest, model: str, temperature: float, top_p: float, max_new_tokens: int,
                 structured: bool, token_fields: Iterable[str] = ("max_completion_tokens",)) -> dict:
    """The chat completions body of one request (the same for the sync API and Batch API lines)."""
    body: dict = {"model": model, "messages": req.messages, "temperature": temperature, "top_p": top_p}
    for name in token_fields:
        body[name] = max_new_tokens
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
    """Sends ChatRequests concurrently and hands every ChatResult (success or final failure) to a callback.

    What the server cannot do is found out once per run (the teacher is per run, so per server and model):
    `structured_fallback` / `n_fallback` hold the reason when it switched, None otherwise.
    """

    kind = "openai"

    def __init__(self, *, model: str, base_url: str | None, api_key_env: str, temperature: float, top_p: float,
                 max_new_tokens: int, structured_output: str, list_mode: bool, concurrency: int, timeout_s: float,
                 max_retries: int, backoff_s: float, backoff_max_s: float, rpm: int | None = None,
                 tpm: int | None = None, seed: int = 0, max_tokens_field: str = "auto"):
        self.model = model
        self.base_url, self._key = resolve_server(base_url, api_key_env)
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.token_fields = max_tokens_fields(max_tokens_field, self.base_url)
        self.token_fallback: str | None = None  # why max_tokens stopped being sent, if it did
        self.structured = structured_output != "off" and list_mode
        self.structured_auto = structured_output == "auto"
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        self.rpm, self.tpm = rpm, tpm
        self._rng = random.Random(seed)
        self.gate: RateGate | None = None
        self.fallback_reason: str | None = None  # structured output refused: why
        self.n_fallback: str | None = None  # fewer choices than `n`: what was seen
        self.posts = 0
        self._structured_ok = False  # a structured request succeeded: no more probing
        self._response_cls = None

    def _kwargs(self, req: ChatRequest, structured: bool) -> dict:
        return request_body(req, self.model, self.temperature, self.top_p, self.max_new_tokens, structured,
                            self.token_fields)

    def _backoff(self, attempt: int, server_wait: float | None) -> float:
        jitter = self._rng.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))
        return max(jitter, server_wait or 0.0)

    def _redact(self, described: tuple[str, str]) -> tuple[str, str]:
        """The key never reaches a stored error, even when a proxy echoes it back."""
        kind, error = described
        return kind, error.replace(self._key, "***") if self._key else error

    def _drop_max_tokens(self, error: str) -> bool:
        """A 400 naming max_tokens while it is sent (OpenAI behind another host name refuses it, alone or beside
        max_completion_tokens): send only max_completion_tokens for the rest of the run."""
        if ("max_tokens" not in error or "supported" not in error.lower()
                or "max_tokens" not in self.token_fields):
            return False
        self.token_fields = ("max_completion_tokens",)
        self.token_fallback = " ".join(error.split())[:MAX_ERROR_CHARS]
        return True

    def _fall_back(self, reason: str) -> None:
        if self.structured:
            self.structured = False
            self.fallback_reason = " ".join(reason.split())[:MAX_ERROR_CHARS]

    async def _one(self, client, req: ChatRequest) -> ChatResult:
        import openai

        attempt, t0 = 0, time.perf_counter()
        probe, probed, probe_reason, last_status = False, False, "", None
        while True:
            attempt += 1
            structured = self.structured and not probe
            await self.gate.acquire(req.est_prompt_tokens + self.max_new_tokens * req.n)
            wait, error, status, kind = None, None, None, None
            try:
                # the client's low-level post: same auth, errors and transport as chat.completions.create, but
                # the body goes out as built (the typed-params transform cost ~3 ms a request at 256 in flight)
                self.posts += 1
                raw = await client.post("/chat/completions", body=self._kwargs(req, structured),
                                        cast_to=self._response_cls,
                                        options={"headers": {"X-Client-Request-Id": req.request_id}})
                result = result_from_dict(req, json.loads(raw.content), structured, attempt,
                                          time.perf_counter() - t0)
                self.gate.on_success(raw.headers)
                if structured:
                    self._structured_ok = True
                elif probe and not self._structured_ok:  # failed with response_format, succeeds without it
                    # (unless another request meanwhile showed that response_format works: then it was a hiccup)
                    self._fall_back(f"{probe_reason} (the same request without response_format succeeded)")
                return result
            except openai.AuthenticationError as e:
                raise AuthFailed(f"teacher: {self.base_url} rejected the API key (HTTP 401): check the key in "
                                 "the environment variable named by teacher.api_key_env") from e
            except openai.APIStatusError as e:
                status = e.status_code
                kind, error = self._redact(describe_failure(e))
                if status == 400 and self._drop_max_tokens(error):  # an OpenAI-like server refusing max_tokens
                    attempt -= 1
                    continue
                if (structured and self.structured_auto and status >= 400 and status not in NOT_FORMAT_STATUS
                        and not self._structured_ok):
                    # the server says it cannot do response_format; or, before any structured request succeeded, a
                    # 4xx (or the same 5xx twice) that a request without response_format does not get
                    if names_format(error):
                        self._fall_back(error)
                        attempt -= 1
                        continue
                    # a 500 only when it repeats (llama.cpp's answer to json_schema); 502/503/504 are a server
                    # starting up or overloaded, never a refusal of the format
                    refused = status < 500 or (status == 500 == last_status)
                    if refused and not self._structured_ok and not probed:  # ask once without it: is that it?
                        probe, probed, probe_reason = True, True, error
                        attempt -= 1
                        continue
                    last_status = status
                if structured and not self.structured:  # another request found the server cannot do it
                    attempt -= 1
                    continue
                if status == 429:
                    wait = retry_after(e.response.headers)
                    self.gate.on_throttle(wait)
                elif status not in RETRYABLE_STATUS and status < 500:
                    return self._failed(req, error, status, kind, attempt, t0)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                kind, error = self._redact(describe_failure(e))
            except (openai.APIResponseValidationError, ValueError, KeyError, TypeError) as e:
                kind, error = "invalid_response", f"malformed response: {type(e).__name__}: {e}"[:MAX_ERROR_CHARS]
            finally:
                await self.gate.release()
            probe = False
            if attempt > self.max_retries:
                return self._failed(req, error, status, kind, attempt, t0)
            await asyncio.sleep(self._backoff(attempt, wait))

    @staticmethod
    def _failed(req: ChatRequest, error: str | None, status: int | None, kind: str | None, attempts: int,
                t0: float) -> ChatResult:
        return ChatResult(request=req, ok=False, error=error or "unknown error", status_code=status,
                          failure_kind=kind or "unknown", attempts=attempts, latency_s=time.perf_counter() - t0)

    def _short_n(self, res: ChatResult, expand) -> list[ChatRequest]:
        """A reply with fewer choices than `n` asked: from now on n requests of one choice (`expand` makes the
        missing samples of a request, with their own stable ids)."""
        req = res.request
        if expand is None or not res.ok or req.n <= 1 or len(res.contents) >= req.n:
            return []
        if self.n_fallback is None:
            self.n_fallback = (f"the server returned {len(res.contents)} choice(s) for n={req.n}: sending n "
                               "requests of one choice instead")
        return expand(req)

    async def run(self, requests: Iterable[ChatRequest],
                  on_result: Callable[[ChatResult], Awaitable[None] | None],
                  admit: Callable[[ChatRequest], bool] | None = None,
                  expand: Callable[[ChatRequest], list[ChatRequest]] | None = None) -> None:
        """Send every request (at most `concurrency` at once); `admit` may refuse one (budget), which stops sending.

        `expand(req)` gives the requests for samples 1..n-1 of a request that asked for `n` choices; it is called
        when the server turns out to ignore `n` (for that request and for every later one, then sent with n=1)."""
        self.gate = RateGate(self.concurrency, self.rpm, self.tpm)
        import openai

        self._response_cls = __import__("httpx2" if hasattr(openai, "DefaultAsyncHttpx2Client") else "httpx").Response
        client = make_client(self.base_url, self._key, self.timeout_s, self.concurrency)
        slots = asyncio.Semaphore(self.concurrency)
        pending: set[asyncio.Task] = set()
        failure: list[BaseException] = []
        extra: deque[ChatRequest] = deque()  # samples added when the server ignores `n`

        async def worker(req: ChatRequest) -> None:
            try:
                result = await self._one(client, req)
                extra.extend(self._short_n(result, expand))
                out = on_result(result)
                if asyncio.iscoroutine(out):
                    await out
            except Exception as e:  # noqa: BLE001 - the first fatal error stops the run after in-flight work
                failure.append(e)
            finally:
                slots.release()

        source = iter(requests)
        try:
            while True:
                await slots.acquire()
                req = extra.popleft() if extra else next(source, None)
                if req is None or failure:
                    slots.release()
                    if failure or not pending:
                        break
                    await asyncio.wait(set(pending), return_when=asyncio.FIRST_COMPLETED)  # may add samples
                    continue
                if self.n_fallback and expand is not None and req.n > 1:
                    req.n = 1
                    extra.extend(expand(req))
                if admit is not None and not admit(req):
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
