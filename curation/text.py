"""Text normalisation and content ids: every stage names texts, pairs and requests by these hashes."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

import polars as pl

_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Unicode NFC, every whitespace run (tabs, newlines, NBSP...) to one space, stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:20]


def text_id(normalized_text: str) -> str:
    """Content id of an already normalised text."""
    return _hash("text", normalized_text)


def pair_id(source_id: str, candidate_id: str) -> str:
    return _hash("pair", source_id, candidate_id)


def request_id(teacher: str, model: str, prompt_version: str, params: dict, source_id: str, sample: int) -> str:
    """Id of one teacher request: same teacher, model, prompt, parameters, source and sample -> same id."""
    canon = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return _hash("request", teacher, model, prompt_version, canon, source_id, str(sample))


def normalize_expr(col: str) -> pl.Expr:
    """Vectorised `normalize` for a Polars string column (NFC + whitespace collapse + strip)."""
    return pl.col(col).str.normalize("NFC").str.replace_all(r"\s+", " ").str.strip_chars()



# C0 control characters other than whitespace (tab, newline, vertical tab, form feed, carriage return), and DEL:
# a NUL or an escape code in a text is damage from a binary or terminal export, never content to paraphrase.
CONTROL_PATTERN = r"[\x00-\x08\x0e-\x1f\x7f]"
_CONTROL = re.compile(CONTROL_PATTERN)


def control_problem(text: str) -> str | None:
    """Why a text with a NUL byte or another control character is refused (None for ordinary text)."""
    m = _CONTROL.search(text)
    if m is None:
        return None
    return control_reason(m.group(), m.start() + 1)


def control_reason(char: str, position: int | None = None) -> str:
    at = f" at character {position}" if position is not None else ""
    what = "a NUL byte (U+0000)" if char == "\x00" else f"a control character (U+{ord(char):04X})"
    return f"contains {what}{at}; remove it or fix the export that wrote it"
