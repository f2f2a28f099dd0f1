"""Parse teacher outputs into paraphrases, robust to numbering, bullets, quotes, labels and preambles."""

from __future__ import annotations

import json
import re

_MARKER = re.compile(r"^\s*(?:\(?\d{1,2}[.):\]]|\(?[a-hA-H][.)]\s|[-*•·–—>]+|#+)\s*")
_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:paraphrase|paraphrased|rewrite|rewritten|rephrased|version|option|sentence|answer|output)"
    r"(?:\s*(?:version|sentence))?\s*\d*\s*(?:\*\*)?\s*[:\-–]\s*(?:\*\*)?",
    re.IGNORECASE,
)
_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|below (?:is|are)|i can|i'd be|i would be|"
    r"the following|these are)\b",
    re.IGNORECASE,
)
_INTERJECTION = re.compile(r"^(?:sure|certainly|of course|okay|ok|absolutely|great)\s*[!.,]\s+", re.I)
_COMMENTARY = re.compile(r"^(?:note|explanation|i hope|let me know|these paraphrases|each of these)\b", re.I)
_INLINE_NUMBERS = re.compile(r"\s+(?=\(?\d{1,2}[.)]\s)")
_QUOTES = "\"'“”‘’«»`"


def _clean(item: str) -> str:
    s = item.strip()
    for _ in range(3):
        before = s
        s = _INTERJECTION.sub("", s, count=1).strip()
        s = _MARKER.sub("", s, count=1).strip()
        s = _LABEL.sub("", s, count=1).strip()
        s = s.strip("*_").strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1].strip()
        elif len(s) >= 2 and s[0] in _QUOTES and s.count(s[0]) == 1 and s[-1] in ".!?" and s[-2] in _QUOTES:
            s = (s[1:-2] + s[-1]).strip()
        if s == before:
            break
    return s


def _is_preamble(line: str) -> bool:
    s = line.strip()
    if _COMMENTARY.match(s):
        return True
    if _PREAMBLE.match(s) and (s.endswith(":") or len(s.split()) <= 12):
        return True
    return s.endswith(":") and not _MARKER.match(s)


def _json_list(text: str) -> list[str] | None:
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`").removeprefix("json").strip()
    if not s.startswith(("[", "{")):
        return None
    try:
        obj = json.loads(s)
    except json.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        obj = next((v for v in obj.values() if isinstance(v, list)), None)
    if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
        return [x for x in (_clean(x) for x in obj) if x]
    return None


def parse_paraphrases(text: str | None, mode: str = "list") -> tuple[list[str], str | None]:
    """Items found in a teacher output, and a parse error when there are none.

    `mode="list"` returns every item; `mode="single"` the first one (the request asked for one rewrite).
    """
    if text is None or not text.strip():
        return [], "empty output"
    items = _json_list(text)
    if items is None:
        lines = [ln for ln in text.replace("\r", "").split("\n") if ln.strip()]
        if len(lines) == 1 and mode == "list":
            lines = _INLINE_NUMBERS.split(lines[0])
        items = []
        for line in lines:
            line = _INTERJECTION.sub("", line.strip(), count=1)
            if line.startswith("```") or _is_preamble(line):
                continue
            cleaned = _clean(line)
            if cleaned and not _is_preamble(cleaned) and any(ch.isalnum() for ch in cleaned):
                items.append(cleaned)
    if not items:
        return [], "no paraphrase found in output"
    seen, unique = set(), []
    for it in items:
        if it not in seen:
            seen.add(it)
            unique.append(it)
    return (unique[:1] if mode == "single" else unique), None


_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _salvage_json_list(text: str) -> list[str] | None:
    """Complete string items of a JSON list cut off mid-way (`{"paraphrases": ["a", "b", "c`)."""
    s = text.strip()
    start = s.find("[")
    if not s.startswith(("{", "[")) or start < 0:
        return None
    out = []
    for m in _JSON_STRING.finditer(s, start):
        try:
            out.append(json.loads(f'"{m.group(1)}"'))
        except json.JSONDecodeError:
            continue
    return [x for x in (_clean(x) for x in out) if x]


def parse_choice(content: str | None, mode: str, finish_reason: str | None = "stop",
                 refusal: str | None = None) -> tuple[list[str], str | None]:
    """Items of one chat choice. A refusal yields none; a reply cut by `finish_reason: length` loses its last,
    possibly truncated item (a cut JSON list keeps its complete strings)."""
    if refusal:
        return [], f"refused: {refusal.strip()[:200]}"
    if finish_reason != "length":
        return parse_paraphrases(content, mode)
    if content and _json_list(content) is None and (salvaged := _salvage_json_list(content)) is not None:
        items = salvaged
    else:
        items = parse_paraphrases(content, "list")[0][:-1]
    if not items:
        return [], "truncated (finish_reason length) before a complete paraphrase"
    return (items[:1] if mode == "single" else items), None
