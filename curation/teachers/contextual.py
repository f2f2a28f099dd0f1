"""Method B's teacher ("Impossible Distillation"): a plain causal LM continues the same context many times.

Three pure pieces, no workdir: `trim_context` cuts a sampled context to its first m complete sentences,
`first_sentence` keeps the first sentence of a continuation when it is a proper one, and `ContextualSampler`
samples raw text continuations of plain prompts (no chat template) in batches.

The sentence splitter is rule based (nltk's punkt needs a download): a boundary is one or more of `. ? !`,
optional closing quotes/brackets, then whitespace (or the end). A period after a title (Mr., Dr., Sen.) or a
single-letter initial never ends a sentence; after another known abbreviation or an acronym with inner dots
(U.S., a.m., Inc., Jan.) it ends one only when a capitalised word follows that is not a weekday, month, time
zone or a word that usually continues a name (Senate, Court...); after an ordinary word it ends one
unless a lower-case letter follows. Decimals (3.5) never match: a boundary needs whitespace after it. A line
break always ends a piece: a line that ends without a terminal mark (a headline, a byline, a caption, a cut-off
line) is a fragment, and splitting stops there.

`context_pairs` turns one context's first sentences into `sources` rows and `candidates` rows (method B step 3).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import polars as pl

from curation.teachers.local import load_causal_lm, resolve_dtype, resolve_model
from curation.text import normalize, pair_id, text_id
from schemas.tables import CANDIDATES, SOURCES

# A candidate boundary: terminal marks, closing quotes/brackets, then whitespace or the end of the line.
_BOUNDARY = re.compile(r"([.?!\u2026]+)([\"'\u201d\u2019)\]\u00bb]*)(?=\s|$)")
_PROPER_END = re.compile(r"(?<![.\u2026])[.?!][\"'\u201d\u2019)\]\u00bb]*$")  # one mark (no ellipsis), closers
_OPENERS = "\"'\u201c\u2018([{\u00ab"

# Never end a sentence: titles before a name, and Latin abbreviations that always run on.
_NEVER = frozenset({
    "mr", "mrs", "ms", "mx", "dr", "prof", "sen", "rep", "gov", "gen", "lt", "col", "sgt", "capt", "cmdr", "adm",
    "maj", "cpl", "pvt", "st", "ste", "mt", "ft", "rev", "hon", "pres", "supt", "det", "insp", "messrs", "mme",
    "mlle", "fr", "e.g", "i.e", "cf", "vs", "viz", "approx", "ca",
})
# End a sentence only before a capitalised word not in _RUN_ON ("... moved to the U.S. The next day ...").
_AMBIGUOUS = frozenset({
    "u.s", "u.k", "u.n", "e.u", "a.m", "p.m", "etc", "inc", "ltd", "corp", "co", "bros", "jr", "sr", "no", "nos",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "dept", "univ", "ave",
    "blvd", "rd", "est", "al", "fig", "vol", "p", "pp",
})
# Capitalised words that run on after such an abbreviation ("9 a.m. Tuesday", "the U.S. Senate", "Inc. CEO").
_RUN_ON = frozenset({
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february", "march",
    "april", "may", "june", "july", "august", "september", "october", "november", "december", "et", "est", "edt",
    "pt", "pst", "pdt", "ct", "cst", "gmt", "utc", "bst", "cet", "senate", "house", "congress", "president",
    "army", "navy", "department", "government", "embassy", "supreme", "court", "attorney", "open", "ceo",
})


def _is_boundary(line: str, m: re.Match) -> bool:
    """Whether the terminal marks matched at `m` end a sentence (see the module docstring)."""
    rest = line[m.end():].lstrip()
    if not rest:
        return True
    nxt = rest[0]
    if m.group(1) != ".":  # ? ! or an ellipsis: ends unless the sentence runs on in lower case
        return not nxt.islower()
    word = line[:m.start(1)].rsplit(None, 1)[-1] if line[:m.start(1)].strip() else ""
    word = word.lstrip(_OPENERS)
    low = word.lower()
    if low in _NEVER or (len(word) == 1 and word.isupper()):
        return False
    if low in _AMBIGUOUS or "." in word:
        following = re.match(r"[\w']+", rest)
        return nxt.isupper() and not (following and following.group(0).lower() in _RUN_ON)
    return not nxt.islower()


def split_sentences(text: str) -> tuple[list[str], bool]:
    """(the sentences before the first fragment, whether such a fragment cut the text short).

    A fragment is a line's tail that does not end with a boundary (a headline, a byline, a line cut off).
    """
    sentences: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        start = 0
        for m in _BOUNDARY.finditer(line):
            if _is_boundary(line, m):
                sentences.append(line[start:m.end()].strip())
                start = m.end()
        if line[start:].strip():
            return sentences, True
    return sentences, False


def is_proper_sentence(sentence: str) -> bool:
    """>= 3 characters, ending with one `.`, `?` or `!` (closing quotes/brackets after it allowed; no ellipsis)."""
    return len(sentence) >= 3 and _PROPER_END.search(sentence) is not None


def first_sentence(text: str) -> str | None:
    """The first sentence of a continuation (normalised) if it is a proper sentence, else None."""
    sentences, _ = split_sentences(text.lstrip())
    if not sentences:
        return None
    first = normalize(sentences[0])
    return first if is_proper_sentence(first) else None


def complete_sentences(text: str, limit: int | None = None) -> list[str]:
    """The leading run of proper sentences of `text` (normalised), at most `limit` of them."""
    sentences, _ = split_sentences(text)
    out: list[str] = []
    for s in sentences:
        s = normalize(s)
        if not is_proper_sentence(s) or (limit is not None and len(out) >= limit):
            break
        out.append(s)
    return out


def trim_context(text: str, min_sentences: int, max_sentences: int, rng: random.Random) -> str | None:
    """The first m complete sentences of `text` joined by single spaces (the prefix stays part of the first).

    m is drawn uniformly in [min_sentences, max_sentences] from `rng` (always, so the rng advances the same way
    whatever the text), then capped at the number available; None when fewer than min_sentences are complete.
    """
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(f"context_sentences must satisfy 1 <= min <= max, got ({min_sentences}, {max_sentences})")
    m = rng.randint(min_sentences, max_sentences)
    sentences = complete_sentences(text, max_sentences)
    if len(sentences) < min_sentences:
        return None
    return " ".join(sentences[:m])


def context_ingest_id(context_id: str) -> str:
    """`origin` and `ingest_id` of the sources rows a context contributes."""
    return f"contextual:{context_id}"


def context_pairs(context_id: str, continuations: Sequence[tuple[int, str, str | None]],
                  known_sources: Mapping[str, str], known_pairs: set[str] | frozenset[str]
                  ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Method B step 3 for one context: (sources rows, candidates rows).

    `continuations`: (sample_index, request_id, first sentence or None) of every continuation of the context.
    The context's distinct sentences (normalised) are ordered by their first sample index. sources: one row per
    distinct sentence, except those already stored under another ingest id (`known_sources`: source_id ->
    ingest_id), so the sources table holds one row per source_id. candidates: every unordered pair of distinct
    sentences, x the one seen first: source_id = id(x), paraphrase = y, request_id = y's first request;
    `is_repeat` when the pair id is in `known_pairs` (stored by an earlier context or teacher).
    """
    own = context_ingest_id(context_id)
    first: dict[str, tuple[int, str]] = {}  # sentence -> (sample_index, request_id) of its first occurrence
    for j, rid, sentence in sorted(continuations, key=lambda c: c[0]):
        if sentence is not None:
            text = normalize(sentence)
            if text and text not in first:
                first[text] = (j, rid)
    texts = list(first)
    ids = [text_id(t) for t in texts]
    src_rows = [
        {"source_id": sid, "text": t, "origin": own, "origin_row": first[t][0] + 1, "n_chars": len(t),
         "ingest_id": own}
        for t, sid in zip(texts, ids, strict=True) if known_sources.get(sid, own) == own
    ]
    cand_rows = []
    for a in range(len(texts)):
        for b in range(a + 1, len(texts)):
            pid = pair_id(ids[a], ids[b])
            cand_rows.append({"pair_id": pid, "source_id": ids[a], "candidate_id": ids[b], "paraphrase": texts[b],
                              "request_id": first[texts[b]][1], "item_index": 0, "is_source_copy": False,
                              "is_repeat": pid in known_pairs, "context_id": context_id})
    return pl.DataFrame(src_rows, schema=SOURCES), pl.DataFrame(cand_rows, schema=CANDIDATES)


class Sample(NamedTuple):
    """One sampled continuation: the text after the prompt, token counts and why it stopped."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the end-of-text token included when one was produced
    finish_reason: str  # "stop" (end-of-text token) | "length" (max_new_tokens reached)


class ContextualSampler:
    """Raw text continuations of plain prompts from a causal LM (no chat template). Loads weights on first use."""

    kind = "contextual"

    def __init__(self, model_ref: str | None = None, dtype: str = "auto"):
        self.model_id, self._loadable = resolve_model(model_ref)
        self.dtype = resolve_dtype(dtype)
        self.last_latency_s = 0.0

    def _loaded(self):
        return load_causal_lm(self._loadable, self.dtype)

    def _stop_ids(self, tok) -> list[int]:
        """The tokenizer's EOS plus a document-end token (`<|endoftext|>`), which a plain LM emits instead."""
        ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
        for name in ("<|endoftext|>", "</s>"):
            tid = tok.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != tok.unk_token_id and tid not in ids:
                ids.append(tid)
        return ids

    def sample_detailed(self, prompts: list[str], *, temperature: float, top_p: float, max_new_tokens: int,
                        no_repeat_ngram_size: int, seed: int) -> list[Sample]:
        """One continuation per prompt, sampled in one batch (left padding) after `torch.manual_seed(seed)`."""
        import torch

        if not prompts:
            return []
        model, tok = self._loaded()
        enc = tok(prompts, return_tensors="pt", padding=True).to(model.device)  # default special tokens
        stop_ids = self._stop_ids(tok)
        extra = {"no_repeat_ngram_size": no_repeat_ngram_size} if no_repeat_ngram_size > 0 else {}
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=stop_ids, **extra,
            )
        self.last_latency_s = time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        samples = []
        for i, ids in enumerate(new):
            stop = next((n for n, t in enumerate(ids) if t in stop_ids), None)
            ids = ids[:stop + 1] if stop is not None else ids
            samples.append(Sample(
                text=tok.decode(ids, skip_special_tokens=True),
                prompt_tokens=int(enc["attention_mask"][i].sum()),
                completion_tokens=len(ids),
                finish_reason="stop" if stop is not None else "length",
            ))
        return samples

    def sample(self, prompts: list[str], *, temperature: float, top_p: float, max_new_tokens: int,
               no_repeat_ngram_size: int, seed: int) -> list[tuple[str, int, int]]:
        """(text, prompt_tokens, completion_tokens) per prompt; see `sample_detailed`."""
        return [(s.text, s.prompt_tokens, s.completion_tokens) for s in self.sample_detailed(
            prompts, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram_size, seed=seed)]
