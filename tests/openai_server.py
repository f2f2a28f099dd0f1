"""A small but real OpenAI-compatible HTTP server on 127.0.0.1 (aiohttp), with fault injection.

Tests and benchmarks point the real `openai` client at it (`base_url=srv.url`). Replies are deterministic
functions of the request body, so caches, resume and dedup can be checked exactly; faults (429, 500, 503,
timeouts, malformed JSON, truncated output, refusals, unreadable answers, dropped connections, failing batch items)
are drawn per request from a seeded `random.Random`, so a run with faults is reproducible too.

Judge mode: a request whose last user message holds `<source>...</source>` and `<paraphrase>...</paraphrase>`
(the judge prompts, curation/prompts/judge-*.yaml) is answered as a judge: meaning yes when the two texts share at
least JUDGE_OVERLAP of their words (Jaccard), rewrite no when they are equal after lower-casing and dropping
punctuation, written in `judge_style` (lines, json, markdown, bare, or mixed: one of those per pair).

    with FakeOpenAI(latency_s=0.01, faults={"429": 0.1}, rate_limit={"rpm": 600}) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="sk-test")
        ...
        srv.log  # one dict per chat-completions HTTP request: fault drawn, status, prompt tokens, ...

As a script (for a benchmark in another process); prints `URL http://127.0.0.1:PORT/v1`, then serves forever:

    python tests/openai_server.py --port 0 --latency-ms 50 --faults 429=0.05,500=0.05

Endpoints under /v1: POST chat/completions, POST/GET files, GET/DELETE files/{id}, GET files/{id}/content,
POST/GET batches, GET batches/{id}, POST batches/{id}/cancel, POST moderations, GET models, GET models/{id}.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import secrets
import sys
import time
from collections.abc import Iterable
from typing import Any

import quicktok
from aiohttp import web

try:
    from tests.loopback import LoopbackServer
except ImportError:  # run as a script: python tests/X.py
    from loopback import LoopbackServer

# ---------------------------------------------------------------------------------------------------------------
# constants

#: Sync-endpoint faults, in the fixed order they are checked (at most one fires per request).
FAULT_ORDER: tuple[str, ...] = ("429", "500", "503", "timeout", "malformed", "length", "refusal", "disconnect",
                                "unreadable")
#: Faults that only apply to the lines of a batch.
BATCH_FAULTS: tuple[str, ...] = ("batch_item_error",)
KNOWN_FAULTS = frozenset(FAULT_ORDER + BATCH_FAULTS)

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_RPM = 1_000_000  # "unlimited" unless rate_limit says otherwise: headers stay truthful, never hit
DEFAULT_TPM = 1_000_000_000
TIMEOUT_FAULT_S = 30.0
FAULT_429_RETRY_S = 0.05
REFUSAL_TEXT = "I can't help with that."
UNREADABLE_TEXT = "I am not sure what to make of this."  # the `unreadable` fault's answer: no yes/no in it
JUDGE_OVERLAP = 0.5
JUDGE_STYLES: tuple[str, ...] = ("lines", "json", "markdown", "bare")
MAX_BATCH_LINES = 50_000
MAX_BATCH_BYTES = 200 * 1024 * 1024
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
_WORD_CATEGORY = {"kill": "violence", "murder": "violence", "hate": "hate", "harass": "harassment"}

# ---------------------------------------------------------------------------------------------------------------
# token counting (quicktok, independent of tiktoken)

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")
_ENCODERS: dict[str, Any] = {}


def encoding_name(model: str) -> str:
    """The encoding a model uses: o200k_base for the gpt-4o/4.1/5 and o-series families, else cl100k_base."""
    return "o200k_base" if model.startswith(_O200K_PREFIXES) else "cl100k_base"


def _encoder(model: str) -> Any:
    name = encoding_name(model)
    enc = _ENCODERS.get(name)
    if enc is None:
        enc = _ENCODERS[name] = quicktok.get_encoding(name)
    return enc


def _content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def count_prompt_tokens(messages: list[dict], model: str) -> int:
    """Tokens of the ChatML rendering of `messages`.

    Per message: `<|im_start|>` (1) + role + separator (1) + content + `<|im_end|>` (1); a `name` adds its
    tokens + 1; 3 more for the assistant priming. Special markers count as one token each; text is encoded
    with quicktok as ordinary text (special-token strings inside user text are just text).
    """
    enc = _encoder(model)
    total = 3
    for msg in messages:
        total += 3 + len(enc.encode_ordinary(str(msg.get("role", "")))) + len(
            enc.encode_ordinary(_content_text(msg.get("content"))))
        name = msg.get("name")
        if name:
            total += 1 + len(enc.encode_ordinary(str(name)))
        if msg.get("tool_calls"):
            total += len(enc.encode_ordinary(json.dumps(msg["tool_calls"], sort_keys=True)))
    return total


def count_tokens(text: str, model: str) -> int:
    return len(_encoder(model).encode_ordinary(text))


def _truncate_tokens(text: str, max_tokens: int, model: str) -> tuple[str, bool]:
    enc = _encoder(model)
    ids = enc.encode_ordinary(text)
    if len(ids) <= max_tokens:
        return text, False
    return enc.decode(ids[:max(0, max_tokens)]), True


# ---------------------------------------------------------------------------------------------------------------
# deterministic "paraphrases"

_SYNONYMS = {
    "big": "large", "large": "big", "small": "little", "little": "small", "quick": "fast", "fast": "quick",
    "quickly": "rapidly", "rapidly": "quickly", "begin": "start", "start": "begin", "started": "began",
    "began": "started", "help": "assist", "assist": "help", "buy": "purchase", "purchase": "buy",
    "show": "display", "ill": "sick", "sick": "unwell", "unwell": "ill", "postponed": "delayed",
    "delayed": "postponed", "happy": "glad", "glad": "happy", "sad": "unhappy", "improve": "enhance",
    "get": "obtain", "use": "utilize", "need": "require", "want": "wish", "think": "believe",
    "believe": "think", "important": "crucial", "crucial": "important", "hard": "difficult",
    "difficult": "hard", "easy": "simple", "simple": "easy", "often": "frequently", "frequently": "often",
    "maybe": "perhaps", "perhaps": "maybe", "because": "since", "since": "because", "many": "numerous",
    "very": "really", "really": "truly", "good": "fine", "bad": "poor", "house": "home", "home": "house",
    "car": "vehicle", "job": "position", "answer": "reply", "reply": "answer", "ask": "inquire",
    "finish": "complete", "complete": "finish", "meeting": "gathering", "said": "stated", "told": "informed",
    "see": "notice", "find": "discover", "keep": "retain", "people": "folks", "children": "kids",
    "kids": "children", "shut": "close", "close": "shut", "way": "method", "problem": "issue",
    "issue": "problem", "try": "attempt", "enough": "sufficient", "whole": "entire", "entire": "whole",
}
_PREFIXES = ("", "", "Actually, ", "In other words, ", "Put simply, ", "Basically, ", "To put it another way, ",
             "Honestly, ", "Simply put, ", "That is, ")
_SUBORDINATORS = "because|since|when|although|though|while|if|after|before|unless|once"
_LEADING_SUB = re.compile(rf"^(?P<c>{_SUBORDINATORS})\s+(?P<b>.+?),\s+(?P<a>.+)$", re.IGNORECASE)
_TRAILING_SUB = re.compile(rf"^(?P<a>.+?),?\s+(?P<c>{_SUBORDINATORS})\s+(?P<b>.+)$", re.IGNORECASE)
_COORDINATED = re.compile(r"^(?P<a>.+?),\s+(?P<c>and|but|so|yet)\s+(?P<b>.+)$", re.IGNORECASE)
_WORD_SPLIT = re.compile(r"(\W+)")
_QUOTED = re.compile(r"\"([^\"]{2,})\"|“([^”]{2,})”")
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20}
_NUM = r"(\d{1,2}|" + "|".join(_NUMBER_WORDS) + r")"
_K_VERB = re.compile(r"\b(?:give|write|generate|produce|provide|list|create|return|make|suggest|offer)\s+"
                     r"(?:me\s+|us\s+)?" + _NUM + r"\b", re.IGNORECASE)
_K_NOUN = re.compile(r"\b" + _NUM + r"\s+(?:\w+\s+){0,2}?(?:paraphrases|variants|versions|rewrites|rephrasings|"
                     r"alternatives|sentences|ways|options|rewordings)\b", re.IGNORECASE)
_K_ANY = re.compile(r"\b(\d{1,2})\b")


def _lower_first(s: str) -> str:
    if not s:
        return s
    first = s.split(" ", 1)[0]
    if first == "I" or first.startswith("I'") or (len(first) > 1 and first.isupper()):
        return s
    return s[0].lower() + s[1:]


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def extract_sentence(text: str) -> tuple[str, str]:
    """Split a user message into (sentence to paraphrase, instruction around it).

    The sentence is the last quoted segment if any; else, for a multi-line message, the lines after the last
    line ending with ':' (or after the first line); else the text after the last ':'; else the whole message.
    """
    quoted = [a or b for a, b in _QUOTED.findall(text)]
    if quoted:
        sentence = quoted[-1].strip()
        return sentence, text.replace(sentence, " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        cut = max((i for i, ln in enumerate(lines[:-1]) if ln.endswith(":")), default=0)
        return " ".join(lines[cut + 1:]), "\n".join(lines[:cut + 1])
    if ":" in text:
        before, after = text.rsplit(":", 1)
        if after.strip():
            return after.strip(), before
    return text.strip(), ""


def requested_count(instruction: str, sentence: str = "") -> int:
    """How many paraphrases a prompt asks for: "Give 3", "3 paraphrases", else any integer 1..20, else 1."""
    text = instruction if instruction.strip() else sentence
    for pattern in (_K_VERB, _K_NOUN):
        m = pattern.search(text)
        if m:
            word = m.group(1).lower()
            k = int(word) if word.isdigit() else _NUMBER_WORDS[word]
            if 1 <= k <= 20:
                return k
    for m in _K_ANY.finditer(text):
        if 1 <= int(m.group(1)) <= 20:
            return int(m.group(1))
    return 1


def _reorder(core: str) -> str:
    m = _LEADING_SUB.match(core)
    if m:
        return f"{_upper_first(m['a'])} {m['c'].lower()} {_lower_first(m['b'])}"
    m = _TRAILING_SUB.match(core)
    if m:
        return f"{_upper_first(m['c'].lower())} {m['b']}, {_lower_first(m['a'])}"
    m = _COORDINATED.match(core)
    if m and m["c"].lower() == "and":
        return f"{_upper_first(m['b'])}, and {_lower_first(m['a'])}"
    return core


def _swap_words(core: str, rng: random.Random, p: float) -> str:
    out = []
    for tok in _WORD_SPLIT.split(core):
        syn = _SYNONYMS.get(tok.lower())
        if syn and rng.random() < p:
            if tok.isupper() and len(tok) > 1:
                syn = syn.upper()
            elif tok[:1].isupper():
                syn = _upper_first(syn)
            tok = syn
        out.append(tok)
    return "".join(out)


def _variant(sentence: str, rng: random.Random, extra_prefix: str = "") -> str:
    s = sentence.strip() or "Nothing was given to rephrase."
    punct = s[-1] if s[-1] in ".!?" else "."
    core = s[:-1].rstrip() if s[-1] in ".!?" else s
    dropped_actually = core.lower().startswith("actually, ") and rng.random() < 0.7
    if dropped_actually:
        core = _upper_first(core[len("actually, "):])
    if rng.random() < 0.6:
        core = _reorder(core)
    core = _swap_words(core, rng, 0.6)
    prefix = "" if dropped_actually else rng.choice(_PREFIXES)
    prefix = extra_prefix + (_lower_first(prefix) if extra_prefix else prefix)
    core = prefix + _lower_first(core) if prefix else _upper_first(core)
    return core + punct


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def paraphrases(sentence: str, k: int, rng: random.Random, used: set[str]) -> list[str]:
    """`k` deterministic variants of `sentence`, all different from each other and from everything in `used`."""
    out = []
    for _ in range(k):
        cand = ""
        for attempt in range(40):
            extra = "" if attempt < 8 else _PREFIXES[2 + attempt % (len(_PREFIXES) - 2)]
            cand = _variant(sentence, rng, extra)
            if attempt >= 30:
                cand = f"{cand[:-1]} (version {attempt - 29}){cand[-1]}"
            if _norm(cand) not in used:
                break
        used.add(_norm(cand))
        out.append(cand)
    return out


# ---------------------------------------------------------------------------------------------------------------
# judge mode

_JUDGE_PAIR = re.compile(r"<source>(.*?)</source>\s*<paraphrase>(.*?)</paraphrase>", re.DOTALL)
_WORD = re.compile(r"\w+")


def judge_pair(text: str) -> tuple[str, str] | None:
    """(source, paraphrase) of a judge prompt's user message, else None."""
    m = _JUDGE_PAIR.search(text)
    return (m.group(1).strip(), m.group(2).strip()) if m else None


def judge_verdict(source: str, paraphrase: str) -> tuple[bool, bool]:
    """(meaning kept, real rewrite): shared words (Jaccard >= JUDGE_OVERLAP); a rewrite unless the texts are equal
    once lower-cased with punctuation dropped."""
    a, b = _WORD.findall(source.lower()), _WORD.findall(paraphrase.lower())
    union = set(a) | set(b)
    return len(set(a) & set(b)) / max(1, len(union)) >= JUDGE_OVERLAP, a != b


def judge_answer(meaning: bool, rewrite: bool, style: str) -> str:
    yn = {True: "yes", False: "no"}
    if style == "json":
        return json.dumps({"meaning": yn[meaning], "rewrite": yn[rewrite]})
    if style == "markdown":
        return f"**Meaning:** {yn[meaning].capitalize()}.\n**Rewrite:** {yn[rewrite].capitalize()}."
    if style == "bare":
        return f"{yn[meaning].capitalize()}\n{yn[rewrite].capitalize()}"
    return f"meaning: {yn[meaning]}\nrewrite: {yn[rewrite]}"


def judge_style_for(style: str, source: str, paraphrase: str) -> str:
    """`mixed`: one of JUDGE_STYLES per pair (a hash of the texts); else `style` itself."""
    if style != "mixed":
        return style
    h = int(hashlib.sha256(f"{source}\x1f{paraphrase}".encode()).hexdigest()[:8], 16)
    return JUDGE_STYLES[h % len(JUDGE_STYLES)]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def body_hash(body: Any) -> str:
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# errors and completions (pure functions, shared by the sync endpoint and batches)


class ApiError(Exception):
    """An OpenAI-style error: HTTP status + {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _new_id(prefix: str, nbytes: int = 12) -> str:
    return prefix + secrets.token_hex(nbytes)


def validate_chat(body: Any) -> tuple[str, list[dict]]:
    """Check a chat-completions body the way the API does; returns (model, messages) or raises ApiError."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "[] is too short - 'messages'" if messages == [] else "Missing required parameter: "
                       "'messages'.", param="messages", code="missing_required_parameter")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "developer", "user", "assistant",
                                                                 "tool", "function"):
            raise ApiError(400, f"Invalid value for 'messages[{i}].role'.", param=f"messages[{i}].role",
                           code="invalid_value")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise ApiError(400, f"Invalid 'n': {n!r}. Expected an integer between 1 and 128.", param="n",
                       code="invalid_value")
    if body.get("stream"):
        raise ApiError(400, "stream=true is not supported by this fake server.", param="stream")
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ApiError(400, f"Invalid '{key}': integer below minimum value. Expected a value >= 1, but got "
                           f"{v!r} instead.", param=key, code="integer_below_min_value")
    return model, messages


#: What llama-cpp-python's server answers (HTTP 500) to `response_format: {type: json_schema}`.
LLAMA_CPP_FORMAT_ERROR = ("1 validation error:\n"
                          "{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input "
                          "should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' "
                          "or 'json_object'\"}}")


def build_completion(body: Any, *, structured_output: bool = True, prompt_tokens: int | None = None,
                     llama_cpp: bool = False, judge_style: str = "lines") -> dict:
    """The deterministic chat completion for `body` (OpenAI-shaped JSON), or raises ApiError (400).

    A judge prompt (see `judge_pair`) gets a judge's answer in `judge_style` instead of paraphrases.

    `llama_cpp`: answer as llama-cpp-python's server does: json_schema gets a 500 whose (multi-line) message names
    response_format, `n` is ignored (one choice), and only `max_tokens` caps the reply (max_completion_tokens is
    ignored)."""
    model, messages = validate_chat(body)
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    structured = fmt_type in ("json_schema", "json_object")
    if llama_cpp and fmt_type == "json_schema":
        raise ApiError(500, LLAMA_CPP_FORMAT_ERROR, "internal_server_error")
    if structured and not structured_output:
        raise ApiError(400, f"response_format {fmt_type} is not supported", param="response_format")
    if prompt_tokens is None:
        prompt_tokens = count_prompt_tokens(messages, model)

    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = _content_text(last_user.get("content")) if last_user else ""
    pair = judge_pair(text)
    sentence, instruction = extract_sentence(text)
    k = requested_count(instruction, sentence)
    key = canonical_json({"model": model, "messages": messages, "temperature": body.get("temperature"),
                          "seed": body.get("seed")})
    base = hashlib.sha256(key.encode()).hexdigest()
    used = {_norm(sentence)}
    max_tokens = body.get("max_tokens") if llama_cpp else body.get("max_completion_tokens") or body.get("max_tokens")
    choices, completion_tokens = [], 0
    for index in range(1 if llama_cpp else body.get("n") or 1):
        rng = random.Random(int(hashlib.sha256(f"{base}:{index}".encode()).hexdigest()[:16], 16))
        items = [] if pair else paraphrases(sentence, k, rng, used)
        if pair:
            content = judge_answer(*judge_verdict(*pair), judge_style_for(judge_style, *pair))
        elif structured:
            content = json.dumps({"paraphrases": items}, ensure_ascii=False)
        elif k == 1:
            content = items[0]
        else:
            content = "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))
        finish = "stop"
        if max_tokens is not None:
            content, cut = _truncate_tokens(content, max_tokens, model)
            finish = "length" if cut else "stop"
        completion_tokens += count_tokens(content, model)
        choices.append({"index": index, "message": {"role": "assistant", "content": content, "refusal": None,
                                                     "annotations": []},
                        "finish_reason": finish, "logprobs": None})
    return {
        "id": _new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": choices, "service_tier": "default", "system_fingerprint": "fp_fake0001",
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
    }


def _apply_length_fault(payload: dict) -> None:
    """Cut every choice's content in the middle and mark it finish_reason "length"."""
    model = payload["model"]
    total = 0
    for ch in payload["choices"]:
        content = ch["message"]["content"] or ""
        enc = _encoder(model)
        ids = enc.encode_ordinary(content)
        cut = enc.decode(ids[:max(1, len(ids) // 2)]) if len(ids) > 1 else content[: max(1, len(content) // 2)]
        ch["message"]["content"] = cut
        ch["finish_reason"] = "length"
        total += count_tokens(cut, model)
    _set_completion_tokens(payload, total)


def _apply_refusal_fault(payload: dict) -> None:
    for ch in payload["choices"]:
        ch["message"]["content"] = None
        ch["message"]["refusal"] = REFUSAL_TEXT
        ch["finish_reason"] = "stop"
    _set_completion_tokens(payload, len(payload["choices"]) * count_tokens(REFUSAL_TEXT, payload["model"]))


def _apply_unreadable_fault(payload: dict) -> None:
    for ch in payload["choices"]:
        ch["message"]["content"] = UNREADABLE_TEXT
        ch["finish_reason"] = "stop"
    _set_completion_tokens(payload, len(payload["choices"]) * count_tokens(UNREADABLE_TEXT, payload["model"]))


def _set_completion_tokens(payload: dict, n: int) -> None:
    usage = payload["usage"]
    usage["completion_tokens"] = n
    usage["total_tokens"] = usage["prompt_tokens"] + n


# ---------------------------------------------------------------------------------------------------------------
# rate limits (token buckets that refill over 60 s, like the API's headers describe)


def go_duration(seconds: float) -> str:
    """Format like OpenAI's reset headers (Go durations): "0s", "17ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    seconds = round(max(0.0, seconds), 3)
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    s_txt = f"{s:.3f}".rstrip("0").rstrip(".")
    out = f"{int(h)}h" if h else ""
    if h or m:
        out += f"{int(m)}m"
    return f"{out}{s_txt}s"


class _Bucket:
    def __init__(self, capacity: float) -> None:
        self.capacity = float(capacity)
        self.rate = self.capacity / 60.0
        self.level = self.capacity
        self.t = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 if it is now; inf if it never fits)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def remaining(self) -> int:
        return max(0, int(self.level))

    def reset_s(self) -> float:
        return (self.capacity - self.level) / self.rate


class RateLimiter:
    def __init__(self, rpm: int = DEFAULT_RPM, tpm: int = DEFAULT_TPM) -> None:
        self.requests = _Bucket(rpm)
        self.tokens = _Bucket(tpm)

    def acquire(self, tokens: int) -> tuple[str | None, float]:
        """Take one request and `tokens`; returns (None, 0) or (which limit, seconds to wait) without taking."""
        now = time.monotonic()
        self.requests.refill(now)
        self.tokens.refill(now)
        wait_r, wait_t = self.requests.wait_for(1), self.tokens.wait_for(tokens)
        if wait_r > 0:
            return "requests", wait_r
        if wait_t > 0:
            return "tokens", wait_t
        self.requests.level -= 1
        self.tokens.level -= tokens
        return None, 0.0

    def headers(self, *, exhausted: bool = False) -> dict[str, str]:
        r, t = self.requests, self.tokens
        return {
            "x-ratelimit-limit-requests": str(int(r.capacity)),
            "x-ratelimit-limit-tokens": str(int(t.capacity)),
            "x-ratelimit-remaining-requests": "0" if exhausted else str(r.remaining()),
            "x-ratelimit-remaining-tokens": str(t.remaining()),
            "x-ratelimit-reset-requests": go_duration(r.reset_s() if not exhausted else FAULT_429_RETRY_S),
            "x-ratelimit-reset-tokens": go_duration(t.reset_s()),
        }


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"Retry-After": f"{seconds:.3f}".rstrip("0").rstrip("."), "retry-after-ms": str(math.ceil(seconds * 1000))}


# ---------------------------------------------------------------------------------------------------------------
# moderation


def moderate(text: str, flagged_words: Iterable[str]) -> dict:
    hits = {w for w in flagged_words if re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE)}
    cats = {c: False for c in MODERATION_CATEGORIES}
    for w in hits:
        cats[_WORD_CATEGORY.get(w.lower(), "harassment")] = True
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    scores = {c: (0.9 + (h % 97) / 1000 if cats[c] else ((h >> (i % 24)) % 50 + 1) / 1e5)
              for i, c in enumerate(MODERATION_CATEGORIES)}
    return {"flagged": bool(hits), "categories": cats, "category_scores": scores,
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES}}


# ---------------------------------------------------------------------------------------------------------------
# the server


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(obj, ensure_ascii=False).encode(), status=status, headers=headers,
                        content_type="application/json")


def _error_response(err: ApiError) -> web.Response:
    return _json_response(err.body(), err.status, err.headers)


class FakeOpenAI(LoopbackServer):
    """An OpenAI-compatible server on 127.0.0.1 in a background thread (see the module docstring).

    Args:
        latency_s: delay before every chat-completions answer (asyncio.sleep, so it scales to many requests).
        faults: fault name -> probability per request; names in FAULT_ORDER plus "batch_item_error".
        seed: seed of the fault draws.
        rate_limit: {"rpm": R, "tpm": T}; enforced with token buckets that refill over 60 s. Tokens charged
            per request: prompt tokens + max_tokens when given, else + the completion's tokens.
        batch_delay_s: a batch is "validating" for this long, then "in_progress" for this long, then processed.
        flagged_words: words the moderation endpoint flags ("kill" -> violence, "hate" -> hate, other ->
            harassment).
        structured_output: if False, a json_schema/json_object response_format gets a 400.
        llama_cpp: answer like llama-cpp-python's server: json_schema -> HTTP 500 naming response_format, `n`
            ignored (one choice), only `max_tokens` caps a reply (max_completion_tokens ignored).
        one_token_field: answer like OpenAI does when both max_tokens and max_completion_tokens are sent (400).
        judge_style: how judge prompts are answered: lines, json, markdown, bare, or mixed (one per pair).
        api_key: if set, every request needs `Authorization: Bearer <api_key>` (else 401).
        host, port: where to listen (port 0: a free port).
    """

    backlog = 2048  # the benchmark opens up to 512 connections at once

    def __init__(self, *, latency_s: float = 0.0, faults: dict[str, float] | None = None, seed: int = 0,
                 rate_limit: dict | None = None, batch_delay_s: float = 0.0,
                 flagged_words: Iterable[str] = ("kill", "hate"), structured_output: bool = True,
                 api_key: str | None = None, host: str = "127.0.0.1", port: int = 0, llama_cpp: bool = False,
                 one_token_field: bool = False, judge_style: str = "lines") -> None:
        super().__init__()
        if judge_style not in (*JUDGE_STYLES, "mixed"):
            raise ValueError(f"judge_style must be one of {JUDGE_STYLES + ('mixed',)}, not {judge_style!r}")
        self.judge_style = judge_style
        self.latency_s = float(latency_s)
        self.seed = seed
        self._rng = random.Random(seed)
        self._batch_rng = random.Random(f"{seed}:batch")
        self._faults: dict[str, float] = {}
        self.set_faults(faults or {})
        rate_limit = rate_limit or {}
        unknown = set(rate_limit) - {"rpm", "tpm"}
        if unknown:
            raise ValueError(f"rate_limit keys must be 'rpm'/'tpm', got {sorted(unknown)}")
        self.limiter = RateLimiter(int(rate_limit.get("rpm") or DEFAULT_RPM), int(rate_limit.get("tpm") or DEFAULT_TPM))
        self.batch_delay_s = float(batch_delay_s)
        self.flagged_words = tuple(flagged_words)
        self.structured_output = structured_output
        self.llama_cpp = llama_cpp
        self.one_token_field = one_token_field
        self.api_key = api_key
        self.host, self.port = host, port
        self.log: list[dict] = []
        self.files: dict[str, dict] = {}  # id -> File object + "_content" (bytes)
        self.batches: dict[str, dict] = {}  # id -> Batch object
        self._batch_order: list[str] = []
        self._batch_tasks: dict[str, asyncio.Task] = {}

    # -- lifecycle --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://{self.host}:{self.port}/v1"

    def set_faults(self, faults: dict[str, float]) -> None:
        """Replace the fault probabilities (takes effect from the next request)."""
        bad = set(faults) - KNOWN_FAULTS
        if bad:
            raise ValueError(f"unknown fault(s) {sorted(bad)}; known: {sorted(KNOWN_FAULTS)}")
        for name, p in faults.items():
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"fault {name!r}: probability {p} is not in [0, 1]")
        self._faults = {k: float(v) for k, v in faults.items()}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_UPLOAD_BYTES)
        r = app.router
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/files", self._file_create)
        r.add_get("/v1/files", self._file_list)
        r.add_get("/v1/files/{id}", self._file_get)
        r.add_delete("/v1/files/{id}", self._file_delete)
        r.add_get("/v1/files/{id}/content", self._file_content)
        r.add_post("/v1/batches", self._batch_create)
        r.add_get("/v1/batches", self._batch_list)
        r.add_get("/v1/batches/{id}", self._batch_get)
        r.add_post("/v1/batches/{id}/cancel", self._batch_cancel)
        r.add_post("/v1/moderations", self._moderations)
        r.add_get("/v1/models", self._models)
        r.add_get("/v1/models/{id}", self._model_get)
        return app

    async def _shutdown(self) -> None:
        for task in list(self._batch_tasks.values()):
            task.cancel()
        await super()._shutdown()

    # -- middleware: auth, OpenAI-style 404/405, request ids ---------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        request_id = _new_id("req_", 16)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            shown = f"{given[:3]}****{given[-4:]}" if len(given) > 8 else "****"
            msg = (f"Incorrect API key provided: {shown}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys." if given else
                   "You didn't provide an API key. You need to provide your API key in an Authorization header "
                   "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            resp: web.StreamResponse = _error_response(ApiError(401, msg, code="invalid_api_key"))
        else:
            try:
                resp = await handler(request)
            except web.HTTPNotFound:
                resp = _error_response(ApiError(404, f"Invalid URL ({request.method} {request.path})"))
            except web.HTTPMethodNotAllowed:
                resp = _error_response(ApiError(405, f"Method {request.method} not allowed for {request.path}"))
            except ApiError as e:
                resp = _error_response(e)
        if not resp.prepared:
            resp.headers.setdefault("x-request-id", request_id)
        return resp

    # -- chat completions ---------------------------------------------------------------------------------------
    def _draw_fault(self) -> str | None:
        faults = self._faults
        if not faults:
            return None
        u = self._rng.random()
        acc = 0.0
        for name in FAULT_ORDER:
            acc += faults.get(name, 0.0)
            if u < acc:
                return name
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        entry: dict[str, Any] = {"client_request_id": request.headers.get("X-Client-Request-Id"),
                                 "body_hash": None, "fault": None, "status": None, "prompt_tokens": None,
                                 "t": time.monotonic()}
        self.log.append(entry)
        try:
            resp = await self._chat_inner(request, entry)
        except asyncio.CancelledError:
            if entry["status"] is None:
                entry["status"] = 499  # the client went away before we answered
            raise
        except ConnectionResetError:
            if entry["status"] is None:
                entry["status"] = 499
            raise
        except ApiError as e:
            resp = _error_response(e)
        entry["status"] = resp.status
        return resp

    async def _chat_inner(self, request: web.Request, entry: dict) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            entry["body_hash"] = hashlib.sha256(raw).hexdigest()
            raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                           "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
                           ) from None
        entry["body_hash"] = body_hash(body)
        model, messages = validate_chat(body)
        prompt_tokens = count_prompt_tokens(messages, model)
        entry["prompt_tokens"] = prompt_tokens
        fault = self._draw_fault()
        entry["fault"] = fault
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if fault == "disconnect":
            entry["status"] = 0  # no answer at all
            if request.transport is not None:
                request.transport.close()
            await asyncio.sleep(5)  # cancelled when aiohttp sees the connection gone
            raise ConnectionResetError("fault: disconnect")
        if fault == "timeout":
            await asyncio.sleep(TIMEOUT_FAULT_S)
        if fault == "429":
            raise ApiError(429, "Rate limit reached for requests (injected fault). Please try again in 50ms.",
                           "requests", None, "rate_limit_exceeded",
                           {**self.limiter.headers(exhausted=True), **_retry_headers(FAULT_429_RETRY_S)})
        if fault == "500":
            raise ApiError(500, "The server had an error while processing your request. Sorry about that!",
                           "server_error")
        if fault == "503":
            raise ApiError(503, "The engine is currently overloaded, please try again later.", "server_error",
                           code="service_unavailable")

        if self.one_token_field and "max_tokens" in body and "max_completion_tokens" in body:
            raise ApiError(400, "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
                           param="max_tokens")
        payload = build_completion(body, structured_output=self.structured_output, prompt_tokens=prompt_tokens,
                                   llama_cpp=self.llama_cpp, judge_style=self.judge_style)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        charged = prompt_tokens + (max_tokens if max_tokens else payload["usage"]["completion_tokens"])
        which, wait = self.limiter.acquire(charged)
        if which is not None:
            limit = self.limiter.requests if which == "requests" else self.limiter.tokens
            if math.isinf(wait):
                raise ApiError(429, f"Request too large for {model} on tokens per min (TPM): Limit "
                               f"{int(limit.capacity)}, Requested {charged}.", "tokens", None,
                               "rate_limit_exceeded", self.limiter.headers())
            used = int(limit.capacity - limit.level)
            raise ApiError(429, f"Rate limit reached for {model} on {which} per min ({which[0].upper()}PM): Limit "
                           f"{int(limit.capacity)}, Used {used}, Requested {1 if which == 'requests' else charged}."
                           f" Please try again in {go_duration(wait)}.", which, None, "rate_limit_exceeded",
                           {**self.limiter.headers(), **_retry_headers(wait)})
        if fault == "length":
            _apply_length_fault(payload)
        elif fault == "refusal":
            _apply_refusal_fault(payload)
        elif fault == "unreadable":
            _apply_unreadable_fault(payload)
        data = json.dumps(payload, ensure_ascii=False).encode()
        if fault == "malformed":
            data = data[: len(data) // 2]
        headers = {**self.limiter.headers(), "openai-processing-ms": str(int(self.latency_s * 1000)),
                   "openai-version": "2020-10-01"}
        return web.Response(body=data, status=200, headers=headers, content_type="application/json")

    # -- files -----------------------------------------------------------------------------------------------
    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict:
        fid = _new_id("file-", 12)
        obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
               "expires_at": None}
        self.files[fid] = {**obj, "_content": content}
        return obj

    @staticmethod
    def _public(obj: dict) -> dict:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _file_or_404(self, fid: str) -> dict:
        f = self.files.get(fid)
        if f is None:
            raise ApiError(404, f"No such File object: {fid}", param="id")
        return f

    async def _file_create(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "Expected a multipart/form-data body with fields 'file' and 'purpose'.")
        reader = await request.multipart()
        purpose, content, filename = None, None, "upload"
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or filename
                chunks, size = [], 0
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        raise ApiError(413, f"File exceeds the maximum size of {MAX_UPLOAD_BYTES} bytes.",
                                       param="file")
                    chunks.append(chunk)
                content = b"".join(chunks)
            else:
                await part.release()
        if content is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file",
                           code="missing_required_parameter")
        if not purpose:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose",
                           code="missing_required_parameter")
        if purpose not in FILE_PURPOSES:
            raise ApiError(400, f"'{purpose}' is not one of {sorted(FILE_PURPOSES)} - 'purpose'", param="purpose")
        return _json_response(self._store_file(content, filename, purpose))

    async def _file_list(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        data = [self._public(f) for f in reversed(self.files.values()) if purpose in (None, f["purpose"])]
        return _json_response({"object": "list", "data": data, "has_more": False})

    async def _file_get(self, request: web.Request) -> web.Response:
        return _json_response(self._public(self._file_or_404(request.match_info["id"])))

    async def _file_delete(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        self._file_or_404(fid)
        del self.files[fid]
        return _json_response({"id": fid, "object": "file", "deleted": True})

    async def _file_content(self, request: web.Request) -> web.Response:
        f = self._file_or_404(request.match_info["id"])
        return web.Response(body=f["_content"], content_type="application/octet-stream")

    # -- batches ---------------------------------------------------------------------------------------------
    def _batch_or_404(self, bid: str) -> dict:
        b = self.batches.get(bid)
        if b is None:
            raise ApiError(404, f"No batch found with id '{bid}'.", param="batch_id")
        return b

    async def _batch_create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        fid = body.get("input_file_id")
        if not isinstance(fid, str) or fid not in self.files:
            raise ApiError(400, f"Invalid 'input_file_id': '{fid}'. No such file.", param="input_file_id")
        if body.get("endpoint") != "/v1/chat/completions":
            raise ApiError(400, f"Invalid 'endpoint': {body.get('endpoint')!r}. This server supports "
                           "'/v1/chat/completions'.", param="endpoint")
        if body.get("completion_window") != "24h":
            raise ApiError(400, f"Invalid 'completion_window': {body.get('completion_window')!r}. Supported "
                           "values are: '24h'.", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ApiError(400, "Invalid 'metadata': expected an object.", param="metadata")
        f = self.files[fid]
        if f["purpose"] != "batch":
            raise ApiError(400, f"File {fid} has purpose '{f['purpose']}'; a batch input needs purpose 'batch'.",
                           param="input_file_id")
        content: bytes = f["_content"]
        if len(content) > MAX_BATCH_BYTES:
            raise ApiError(400, f"The input file is larger than the maximum of {MAX_BATCH_BYTES} bytes.",
                           param="input_file_id")
        n_lines = sum(1 for ln in content.splitlines() if ln.strip())
        if n_lines > MAX_BATCH_LINES:
            raise ApiError(400, f"The input file has {n_lines} requests; the maximum is {MAX_BATCH_LINES}.",
                           param="input_file_id")
        now = int(time.time())
        bid = _new_id("batch_", 12)
        batch = {"id": bid, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
                 "input_file_id": fid, "completion_window": "24h", "status": "validating", "output_file_id": None,
                 "error_file_id": None, "created_at": now, "in_progress_at": None, "expires_at": now + 86400,
                 "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
                 "cancelling_at": None, "cancelled_at": None, "model": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata, "usage": None}
        self.batches[bid] = batch
        self._batch_order.append(bid)
        self._batch_tasks[bid] = asyncio.get_running_loop().create_task(self._run_batch(bid))
        return _json_response(batch)

    async def _run_batch(self, bid: str) -> None:
        batch = self.batches[bid]
        try:
            await asyncio.sleep(self.batch_delay_s)
            if batch["status"] == "cancelling":
                self._finish_cancel(batch)
                return
            lines = [ln for ln in self.files[batch["input_file_id"]]["_content"].splitlines() if ln.strip()]
            batch.update(status="in_progress", in_progress_at=int(time.time()))
            batch["request_counts"]["total"] = len(lines)
            await asyncio.sleep(self.batch_delay_s)
            out, err = [], []
            usage = {"input_tokens": 0, "output_tokens": 0}
            for i, line in enumerate(lines):
                if batch["status"] == "cancelling":
                    break
                self._batch_line(batch, line, out, err, usage)
                if i % 200 == 199:
                    await asyncio.sleep(0)  # let sync traffic through during big batches
            batch.update(finalizing_at=int(time.time()))
            cancelled = batch["status"] == "cancelling"
            if not cancelled:
                batch["status"] = "finalizing"
            if out:
                batch["output_file_id"] = self._store_file(b"".join(out), f"{bid}_output.jsonl", "batch_output")["id"]
            if err:
                batch["error_file_id"] = self._store_file(b"".join(err), f"{bid}_error.jsonl", "batch_output")["id"]
            batch["usage"] = {"input_tokens": usage["input_tokens"], "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": usage["output_tokens"],
                              "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": usage["input_tokens"] + usage["output_tokens"]}
            if cancelled:
                self._finish_cancel(batch)
            else:
                batch.update(status="completed", completed_at=int(time.time()))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a server bug shows as a failed batch, not a hung one
            batch.update(status="failed", failed_at=int(time.time()),
                         errors={"object": "list", "data": [{"code": "server_error", "message": repr(e),
                                                             "param": None, "line": None}]})
        finally:
            self._batch_tasks.pop(bid, None)

    @staticmethod
    def _finish_cancel(batch: dict) -> None:
        batch.update(status="cancelled", cancelled_at=int(time.time()))

    def _batch_line(self, batch: dict, line: bytes, out: list[bytes], err: list[bytes], usage: dict) -> None:
        counts = batch["request_counts"]

        def fail(custom_id: Any, code: str, message: str) -> None:
            counts["failed"] += 1
            rec = {"id": _new_id("batch_req_", 16), "custom_id": custom_id, "response": None,
                   "error": {"code": code, "message": message}}
            err.append(json.dumps(rec, ensure_ascii=False).encode() + b"\n")

        try:
            item = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            fail(None, "invalid_json_line", "This line is not parseable as valid JSON.")
            return
        if not isinstance(item, dict):
            fail(None, "invalid_json_line", "This line is not a JSON object.")
            return
        cid = item.get("custom_id")
        if not isinstance(cid, str) or not cid:
            fail(cid, "missing_required_parameter", "Missing required parameter: 'custom_id'.")
            return
        if item.get("method") != "POST" or item.get("url") != batch["endpoint"]:
            fail(cid, "invalid_url", f"The URL provided for this request does not match the batch endpoint "
                 f"{batch['endpoint']} (or the method is not POST).")
            return
        p = self._faults.get("batch_item_error", 0.0)
        if p and self._batch_rng.random() < p:
            fail(cid, "batch_item_error", "The request failed (injected fault).")
            return
        request_id = _new_id("req_", 16)
        try:
            payload = build_completion(item.get("body"), structured_output=self.structured_output,
                                       llama_cpp=self.llama_cpp, judge_style=self.judge_style)
        except ApiError as e:
            counts["failed"] += 1
            rec = {"id": _new_id("batch_req_", 16), "custom_id": cid,
                   "response": {"status_code": e.status, "request_id": request_id, "body": e.body()},
                   "error": None}
            err.append(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
            return
        counts["completed"] += 1
        batch["model"] = batch["model"] or payload["model"]
        usage["input_tokens"] += payload["usage"]["prompt_tokens"]
        usage["output_tokens"] += payload["usage"]["completion_tokens"]
        rec = {"id": _new_id("batch_req_", 16), "custom_id": cid,
               "response": {"status_code": 200, "request_id": request_id, "body": payload}, "error": None}
        out.append(json.dumps(rec, ensure_ascii=False).encode() + b"\n")

    async def _batch_get(self, request: web.Request) -> web.Response:
        return _json_response(self._batch_or_404(request.match_info["id"]))

    async def _batch_list(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise ApiError(400, "Invalid 'limit': expected an integer.", param="limit") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, f"Invalid 'limit': {limit}. Expected a value between 1 and 100.", param="limit")
        ids = list(reversed(self._batch_order))
        after = request.query.get("after")
        if after:
            if after not in self.batches:
                raise ApiError(400, f"Invalid 'after': no batch '{after}'.", param="after")
            ids = ids[ids.index(after) + 1:]
        page = [self.batches[i] for i in ids[:limit]]
        return _json_response({"object": "list", "data": page, "has_more": len(ids) > limit,
                               "first_id": page[0]["id"] if page else None,
                               "last_id": page[-1]["id"] if page else None})

    async def _batch_cancel(self, request: web.Request) -> web.Response:
        batch = self._batch_or_404(request.match_info["id"])
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))
        elif batch["status"] not in ("cancelling", "cancelled"):
            raise ApiError(409, f"Cannot cancel a batch with status '{batch['status']}'.")
        return _json_response(batch)

    # -- moderations, models ---------------------------------------------------------------------------------
    async def _moderations(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        inp = body.get("input") if isinstance(body, dict) else None
        if isinstance(inp, str):
            texts = [inp]
        elif isinstance(inp, list) and inp:
            texts = [_content_text([x]) for x in inp]
        else:
            raise ApiError(400, "Missing required parameter: 'input'.", param="input",
                           code="missing_required_parameter")
        model = body.get("model") or "omni-moderation-latest"
        return _json_response({"id": _new_id("modr-", 12), "model": model,
                               "results": [moderate(t, self.flagged_words) for t in texts]})

    @staticmethod
    def _model_obj(mid: str) -> dict:
        return {"id": mid, "object": "model", "created": 1721172741, "owned_by": "system"}

    async def _models(self, request: web.Request) -> web.Response:
        return _json_response({"object": "list", "data": [self._model_obj(DEFAULT_MODEL)]})

    async def _model_get(self, request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        if mid != DEFAULT_MODEL:
            raise ApiError(404, f"The model '{mid}' does not exist or you do not have access to it.", param="model",
                           code="model_not_found")
        return _json_response(self._model_obj(mid))


# ---------------------------------------------------------------------------------------------------------------
# script


def _parse_faults(spec: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, p = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"fault {item!r}: expected NAME=PROBABILITY")
        out[name.strip()] = float(p)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a fake OpenAI API on 127.0.0.1 (prints 'URL <base_url>').")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--faults", type=_parse_faults, default={}, help="e.g. 429=0.05,500=0.05,timeout=0.01")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rpm", type=int, default=None)
    ap.add_argument("--tpm", type=int, default=None)
    ap.add_argument("--batch-delay-ms", type=float, default=0.0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--no-structured-output", action="store_true")
    ap.add_argument("--judge-style", default="lines", choices=(*JUDGE_STYLES, "mixed"),
                    help="how judge prompts are answered")
    ap.add_argument("--llama-cpp", action="store_true",
                    help="answer like llama-cpp-python: json_schema -> 500, n ignored, only max_tokens honoured")
    args = ap.parse_args(argv)
    rate_limit = {k: v for k, v in (("rpm", args.rpm), ("tpm", args.tpm)) if v}
    srv = FakeOpenAI(latency_s=args.latency_ms / 1000, faults=args.faults, seed=args.seed,
                     rate_limit=rate_limit or None, batch_delay_s=args.batch_delay_ms / 1000,
                     structured_output=not args.no_structured_output, api_key=args.api_key,
                     host=args.host, port=args.port, llama_cpp=args.llama_cpp, judge_style=args.judge_style)
    srv.serve_until_stopped()


if __name__ == "__main__":
    sys.exit(main())
