"""The LLM judge's operators: its chat messages, the reading of its answer, and the stratified sample it labels.

Pure functions: no file layout, no client. `pipelines/steps/judge.py` draws the sample from the current scores,
sends the messages through the chat teacher's client and stores what `parse_answer` reads as `labels` rows.

The sample (`stratified_sample`) splits the value range (a score column) into equal-width bins and takes the same
number of pairs from each bin, so the borderline, where few pairs lie but the calibration is decided, is covered
as well as the bulk. Pairs whose value is null (or NaN) have no place on that range and are never drawn.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterable

import polars as pl

from curation.prompt_templates import PromptTemplate
from curation.text import _hash

#: An answer in the shape the shipped judge prompt asks for (its tokens are the completion estimate).
EXAMPLE_ANSWER = "meaning: yes\nrewrite: no"

_YES = {"yes", "y", "true", "1"}
_NO = {"no", "n", "false", "0"}
# a yes/no word, not the start of a longer token ("n/a", "0.8", "nothing")
_VALUE = r"(yes|no|true|false|y|n|1|0)(?![\w/.]\w|\w)"
# `meaning: yes`, `**Meaning**: Yes.`, `"keeps_meaning": "no"`, `1. Meaning - yes`, `rewrite = false`
_LABELLED = re.compile(r"(?i)\b(?:[a-z]+[ _-])?(meaning|rewrite)[a-z_]*\W{0,4}?\s*[:=\u2013\u2014-]\s*[\W_]{0,4}?"
                       + _VALUE)
_BARE = re.compile(r"(?i)^[\W_]*(?:\d+[.)]\s*)?[\W_]*" + _VALUE)
_ONLY = re.compile(r"(?i)^[\W_]*(?:\d+[.)]\s*)?[\W_]*" + _VALUE + r"[\W_]*$")
_JSON = re.compile(r"\{.*?\}", re.DOTALL)


def judge_label_id(pair_id: str, model: str, prompt_version: str) -> str:
    """A pair's judge label: one per (pair, judge model, prompt version); the human label has its own id."""
    return _hash("label", "judge", pair_id, model, prompt_version)


def judge_messages(template: PromptTemplate, source: str, paraphrase: str) -> list[dict]:
    """Chat messages asking `template` (mode judge) about one pair; few-shot examples become earlier turns."""
    if template.mode != "judge":
        raise ValueError(f"{template.version_id} is a {template.mode} template, not a judge template")
    msgs = [{"role": "system", "content": template.system}] if template.system else []
    for ex in template.examples:
        msgs.append({"role": "user", "content": template.user.format(source=ex["source"],
                                                                    paraphrase=ex["paraphrase"])})
        msgs.append({"role": "assistant", "content": ex["output"]})
    # the pair's texts are data: escaped, a text holding "</paraphrase>" cannot close its tag early
    msgs.append({"role": "user", "content": template.user.format(source=html.escape(source, quote=False),
                                                                 paraphrase=html.escape(paraphrase, quote=False))})
    return msgs


def _truth(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().strip(".!*_\"'` ").lower()
        return True if word in _YES else False if word in _NO else None
    return None


def _one(values: list[bool | None]) -> bool | None:
    """The answer when every reading agrees (a contradiction or nothing read is None)."""
    got = {v for v in values if v is not None}
    return got.pop() if len(got) == 1 else None


def _from_json(text: str) -> tuple[bool | None, bool | None] | None:
    """(meaning, rewrite) from the first JSON object in the text holding either key, else None."""
    for m in _JSON.finditer(text):
        try:
            obj = json.loads(m.group())
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        found: dict[str, list[bool | None]] = {"meaning": [], "rewrite": []}
        for key, value in obj.items():
            k = str(key).lower()
            for name in found:
                if name in k:
                    found[name].append(_truth(value))
        if found["meaning"] or found["rewrite"]:
            return _one(found["meaning"]), _one(found["rewrite"])
    return None


def parse_answer(text: str | None) -> tuple[bool | None, bool | None]:
    """(meaning kept, real rewrite) from a judge's answer; None where it cannot be read.

    Read, in order: a JSON object with keys naming meaning / rewrite (`{"meaning": "yes", "rewrite": false}`);
    labelled lines (`meaning: yes`, `**Rewrite:** No.`, `1. meaning - yes`); else bare answers: two lines of one
    yes/no each are meaning then rewrite, an answer starting with yes/no ("Yes, it does.") is the meaning only.
    Case, markdown and punctuation do not matter; an answer that says both yes and no to one question is
    unreadable for that question.
    """
    if not text or not text.strip():
        return None, None
    got = _from_json(text)
    if got is not None:
        return got
    found: dict[str, list[bool | None]] = {"meaning": [], "rewrite": []}
    for key, value in _LABELLED.findall(text):
        found[key.lower()].append(_truth(value))
    if found["meaning"] or found["rewrite"]:
        return _one(found["meaning"]), _one(found["rewrite"])
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) == 2 and all(_ONLY.match(ln) for ln in lines):
        first, second = (_truth(_ONLY.match(ln).group(1)) for ln in lines)
        return first, second
    m = _BARE.match(lines[0])
    if m:
        return _truth(m.group(1)), None
    return None, None


def _order_key(seed: int, pair_id: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{pair_id}".encode()).hexdigest()[:16]


def bin_edges(low: float, high: float, bins: int) -> list[float]:
    """The `bins + 1` edges of equal-width bins over [low, high] (one bin when the range is a point)."""
    if high <= low:
        return [low, high]
    return [low + (high - low) * i / bins for i in range(bins)] + [high]


def assign_bins(values: pl.Expr, low: float, high: float, bins: int) -> pl.Expr:
    """The bin (0..bins-1) of each value; the top edge belongs to the last bin."""
    if high <= low:
        return pl.lit(0, pl.Int32)
    return ((values - low) / (high - low) * bins).floor().clip(0, bins - 1).cast(pl.Int32)


def stratified_sample(frame: pl.DataFrame, n: int, bins: int, seed: int, value: str = "value",
                      exclude: Iterable[str] = (), first: Iterable[str] = ()) -> pl.DataFrame:
    """Up to `n` pairs of `frame` (pair_id + the `value` column), the same number from each equal-width bin of the
    value's range; returns (pair_id, value, bin) in draw order.

    Within a bin pairs are ordered by a hash of (seed, pair_id); the draw takes the first pair of every bin, then
    the second of every bin, and so on (a round's pairs in hash order), so a bin that runs out leaves its share
    to the bins that still have pairs, the same seed gives the same sample, and a larger `n` extends a smaller
    one. Pairs in `first` (already labelled) come before the others of their bin, so a changed pair set keeps
    what was paid for; pairs in `exclude` and pairs with a null or NaN value are never drawn.
    """
    out_schema = {"pair_id": pl.String, "value": pl.Float64, "bin": pl.Int32}
    df = (frame.select(pl.col("pair_id"), pl.col(value).cast(pl.Float64).alias("value"))
          .filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
          .unique("pair_id", keep="first"))
    skip = list(exclude)
    if skip:
        df = df.filter(~pl.col("pair_id").is_in(skip))
    if df.height == 0 or n <= 0:
        return pl.DataFrame(schema=out_schema)
    low, high = float(df["value"].min()), float(df["value"].max())
    keys = [_order_key(seed, p) for p in df.get_column("pair_id").to_list()]
    df = df.with_columns(assign_bins(pl.col("value"), low, high, bins).alias("bin"),
                         pl.Series("_key", keys, dtype=pl.String),
                         (~pl.col("pair_id").is_in(list(first))).alias("_later"))
    return (df.sort("bin", "_later", "_key")
            .with_columns(pl.int_range(pl.len()).over("bin").alias("_rank"))
            .sort("_rank", "_later", "_key")
            .head(n)
            .select(pl.col("pair_id"), pl.col("value"), pl.col("bin").cast(pl.Int32)))
