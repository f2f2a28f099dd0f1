"""Token counts for teacher prompts, offline: tiktoken's encodings built from the vocabularies quicktok ships.

tiktoken downloads its vocabulary files at first use, which fails without internet. `ensure_offline` writes
the same file (byte for byte: tiktoken checks its sha256) into tiktoken's cache under tiktoken's own cache key,
from quicktok's bundled binary vocabularies; after that the unmodified `tiktoken.get_encoding("o200k_base")` and
`tiktoken.encoding_for_model("gpt-4o")` load from the cache and never touch the network.

Chat prompts are counted the way OpenAI documents it (3 tokens per message, the tokens of each value, 1 more for
a `name`, 3 to prime the reply). Models tiktoken does not know (local vLLM, llama.cpp or Ollama models) are
counted with cl100k_base as an approximation: their own tokenizers differ, so the figure is an estimate.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import os
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.model

from schemas.errors import RecipeError, first_line

__all__ = [
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "REPLY_PRIMING_TOKENS",
    "OFFLINE_ENCODINGS",
    "encoding_name_for",
    "tiktoken_cache_dir",
    "cache_path_for",
    "ensure_offline",
    "get_encoding",
    "count_text",
    "count_texts",
    "estimate_chat_prompt_tokens",
    "estimate_many",
    "clear_caches",
]

# OpenAI's documented accounting for chat models (gpt-3.5-turbo-0613 and later, gpt-4*, gpt-4o*).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

# tiktoken encoding -> quicktok vocabulary file that holds its mergeable ranks.
_QUICKTOK_VOCAB = {"o200k_base": "o200k.vocab", "cl100k_base": "cl100k.vocab"}
# Encodings that load offline once `ensure_offline` wrote the file they read (o200k_harmony reads o200k_base's).
OFFLINE_ENCODINGS: Mapping[str, str] = {"o200k_base": "o200k_base", "cl100k_base": "cl100k_base",
                                        "o200k_harmony": "o200k_base"}

# What tiktoken_ext.openai_public passes to load_tiktoken_bpe (tiktoken 0.7 .. 0.14); re-read from its source at
# run time (`_blob_source`) so a tiktoken that moves a file still gets the right cache key and hash.
_KNOWN_BLOBS = {
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
}

# Rules for names tiktoken does not know, on the lower-cased bare name; o200k first, so "gpt-4o" beats "gpt-4".
_O200K_PREFIXES = ("chatgpt-4o", "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "o1", "o3", "o4")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")
_APPROXIMATION = "cl100k_base"

# Per-encoding cache of content -> token count; dropped when it passed this size at the start of a call.
_COUNT_CACHE_MAX = 200_000
_COUNT_CACHES: dict[str, dict[str, int]] = {}


# ---------------------------------------------------------------------------------------------- model -> encoding


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    """True when `name` is one of `prefixes` or starts with one of them."""
    return any(name.startswith(p) for p in prefixes)


@functools.lru_cache(maxsize=1024)
def encoding_name_for(model: str) -> str:
    """The tiktoken encoding to count `model`'s tokens with: "o200k_base" or "cl100k_base".

    tiktoken's own table is asked first (with and without an "openai/"-style provider prefix); names it does not
    know follow the documented rules, and unknown (local) models get cl100k_base as an approximation.
    """
    name = model.strip()
    bare = name.rsplit("/", 1)[-1]
    for candidate in dict.fromkeys((name, bare, bare.lower())):
        try:
            known = tiktoken.model.encoding_name_for_model(candidate)
        except KeyError:
            continue
        # o200k_harmony counts ordinary text exactly like o200k_base; retired models' encodings (r50k, p50k,
        # gpt2) cannot be built offline, so those names get the same approximation as any unknown model.
        return OFFLINE_ENCODINGS.get(known, _APPROXIMATION)
    low = bare.lower()
    if _matches(low, _O200K_PREFIXES):
        return "o200k_base"
    if _matches(low, _CL100K_PREFIXES):
        return "cl100k_base"
    return _APPROXIMATION


# ------------------------------------------------------------------------------------------- offline vocabulary


def tiktoken_cache_dir() -> str | None:
    """The folder tiktoken reads cached files from (mirrors tiktoken.load.read_file_cached); None: caching off."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache_dir or None


@functools.cache
def _blob_source(encoding: str) -> tuple[str, str]:
    """(blob URL, sha256) that tiktoken_ext.openai_public loads for `encoding`, read from its source without
    running it (running it would download); falls back to the values of tiktoken 0.7-0.14."""
    try:
        import tiktoken_ext.openai_public as public

        tree = ast.parse(Path(public.__file__).read_text(encoding="utf-8"))
        for fn in tree.body:
            if not (isinstance(fn, ast.FunctionDef) and fn.name == encoding):
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "load_tiktoken_bpe" and node.args
                        and isinstance(node.args[0], ast.Constant)):
                    digest = next((k.value.value for k in node.keywords if k.arg == "expected_hash"
                                   and isinstance(k.value, ast.Constant)), None)
                    if isinstance(node.args[0].value, str) and isinstance(digest, str):
                        return node.args[0].value, digest
    except (ImportError, OSError, SyntaxError, AttributeError, TypeError):
        pass
    return _KNOWN_BLOBS[encoding]


def cache_path_for(encoding: str) -> Path | None:
    """Where tiktoken caches the vocabulary file `encoding` loads (sha1 of its blob URL); None: caching off."""
    base = OFFLINE_ENCODINGS.get(encoding)
    if base is None:
        raise RecipeError(f"no offline vocabulary for tiktoken encoding {encoding!r}; "
                          f"known: {', '.join(OFFLINE_ENCODINGS)}")
    cache_dir = tiktoken_cache_dir()
    if cache_dir is None:
        return None
    url, _ = _blob_source(base)
    return Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()


def _quicktok_vocab_path(encoding: str) -> Path:
    """quicktok's bundled binary vocabulary for `encoding` (found without importing its native module)."""
    from importlib import util

    spec = util.find_spec("quicktok")
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError("tiktoken cannot download its vocabulary and quicktok-v1 is not installed; "
                          "run `pip install quicktok-v1` or give tiktoken internet access once")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / _QUICKTOK_VOCAB[encoding]


def _read_quicktok_vocab(path: Path) -> Iterator[tuple[int, bytes]]:
    """(rank, token bytes) pairs of a quicktok .vocab: u32 count, then per token u16 length, bytes, u32 rank
    (all little-endian)."""
    data = path.read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    offset = 4
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        token = data[offset + 2: offset + 2 + length]
        (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
        offset += 6 + length
        yield rank, token
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes after {count} tokens")


def _tiktoken_file_bytes(encoding: str) -> bytes:
    """tiktoken's .tiktoken file for `encoding` (one "base64(token) rank" line per token, by rank)."""
    pairs = sorted(_read_quicktok_vocab(_quicktok_vocab_path(encoding)))
    return b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for rank, token in pairs)


def _sha256_file(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def ensure_offline(name: str) -> Path | None:
    """Make tiktoken's `name` load without network: write its vocabulary into tiktoken's cache if missing or wrong.

    Returns the cache file (None when TIKTOKEN_CACHE_DIR="" turns caching off). Idempotent and atomic
    (temp file + os.replace), so concurrent workers can all call it.
    """
    base = OFFLINE_ENCODINGS.get(name)
    path = cache_path_for(name)
    if base is None or path is None:
        return None
    _, expected = _blob_source(base)
    if _sha256_file(path) == expected:
        return path
    try:
        contents = _tiktoken_file_bytes(base)
    except (OSError, ValueError, struct.error) as e:
        raise RecipeError(f"cannot read quicktok's {base} vocabulary: {first_line(e)}") from None
    if hashlib.sha256(contents).hexdigest() != expected:
        raise RecipeError(f"quicktok's {base} vocabulary does not match tiktoken's (sha256 differs); "
                          "reinstall quicktok-v1 or give tiktoken internet access once")
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(contents)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RecipeError(f"cannot write tiktoken's cache {path.parent}: {first_line(e)}; "
                          "set TIKTOKEN_CACHE_DIR to a writable folder") from None
    return path


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken's encoding `name`, loaded offline when it is one of OFFLINE_ENCODINGS (cached per process)."""
    if name in OFFLINE_ENCODINGS:
        ensure_offline(name)  # before tiktoken looks: it would otherwise try to download (no timeout)
    try:
        return tiktoken.get_encoding(name)
    except (OSError, ValueError, ImportError) as e:  # requests/urllib/ssl errors are OSErrors
        hint = ("caching is off (TIKTOKEN_CACHE_DIR is empty), so it must download"
                if name in OFFLINE_ENCODINGS else "it has no offline copy")
        raise RecipeError(f"tiktoken encoding {name!r} cannot be loaded ({hint}): {first_line(e)}") from None


# ------------------------------------------------------------------------------------------------------ counting


def _counter(encoding: str) -> Callable[[str], int]:
    """A function text -> token count for `encoding`, remembering each distinct text's count.

    Special-token text ("<|endoftext|>") is counted as ordinary text. The cache is cleared whole when it passed
    _COUNT_CACHE_MAX entries at the start of a call, which bounds memory across calls.
    """
    cache = _COUNT_CACHES.get(encoding)
    if cache is None or len(cache) > _COUNT_CACHE_MAX:
        cache = _COUNT_CACHES[encoding] = {}
    encode = get_encoding(encoding).encode_ordinary
    get = cache.get

    def count(text: str) -> int:
        n = get(text)
        if n is None:
            n = cache[text] = len(encode(text))
        return n

    return count


def count_texts(texts: Iterable[str], model: str) -> list[int]:
    """Token counts of `texts` for `model`; "<|endoftext|>" and the like are counted as ordinary text."""
    count = _counter(encoding_name_for(model))
    return [count(t) for t in texts]


def count_text(text: str, model: str) -> int:
    """Token count of one text for `model` (cached per content string)."""
    return _counter(encoding_name_for(model))(text)


def _message_tokens(message: Any, index: int, count: Callable[[str], int]) -> int:
    """Tokens of one chat message's values: every string value (+1 for a name); content parts count their text."""
    if not isinstance(message, Mapping):
        raise RecipeError(f"chat message {index} is a {type(message).__name__}, not a mapping with role/content")
    total = 0
    for key, value in message.items():
        if isinstance(value, str):
            total += count(value)
            if key == "name":
                total += TOKENS_PER_NAME
        elif key == "content" and isinstance(value, list):  # [{"type": "text", "text": ...}, {"type": "image_url"}]
            for part in value:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += count(part["text"])
    return total


def estimate_many(requests: Iterable[Sequence[Mapping[str, Any]]], model: str) -> list[int]:
    """Prompt tokens of many chat requests (OpenAI's accounting), each distinct string encoded once.

    Few-shot prompts repeat their system and example messages in every request, so those are encoded once and
    only the varying text costs an encode.
    """
    count = _counter(encoding_name_for(model))
    base = REPLY_PRIMING_TOKENS
    totals: list[int] = []
    for msgs in requests:
        total = base
        for i, m in enumerate(msgs):
            total += TOKENS_PER_MESSAGE + _message_tokens(m, i, count)
        totals.append(total)
    return totals


def estimate_chat_prompt_tokens(messages: Sequence[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens of one chat request: 3 per message + each value's tokens (+1 per name) + 3 reply priming."""
    return estimate_many([messages], model)[0]


def clear_caches() -> None:
    """Forget loaded encodings and remembered counts (tests that move TIKTOKEN_CACHE_DIR call this)."""
    _COUNT_CACHES.clear()
    get_encoding.cache_clear()
    encoding_name_for.cache_clear()
    _blob_source.cache_clear()
