"""Lexical pair metrics, vectorised: ROUGE-L, sentence BLEU, self-BLEU, token Jaccard, length ratios, numbers.

Every function takes whole columns (lists aligned by pair) and returns a numpy array, one value per pair.
Each text is tokenised once (Polars regexes over the whole column), tokens become integer ids, and the
per-pair work runs in small numba kernels. Values equal the reference libraries':

- `rouge_l_f1` == `rouge_scorer.RougeScorer(["rougeL"]).score(source, paraphrase)["rougeL"].fmeasure`
  (`rouge_tokens` == rouge-score's default tokeniser: lowercase, runs of `[a-z0-9]`, no stemming).
- `sentence_bleu` == `sacrebleu.sentence_bleu(hyp, refs).score` (13a tokeniser, exp smoothing, effective order,
  several references per hypothesis allowed).
- `self_bleu`: sentence BLEU of each paraphrase against the other paraphrases of its group.

Conventions chosen here (the README quotes them):

- `token_jaccard`: |set(src) & set(tgt)| / |set(src) | set(tgt)| over rouge tokens; 1.0 when both are empty,
  0.0 when exactly one is empty.
- `length_ratios`: len(tgt) / len(src) in characters (code points) and in rouge tokens; NaN when the source
  length is 0.
- `numbers_consistent`: a number is a maximal match of `[0-9]+(?:[.,][0-9]+)*` with the `,` separators removed
  ("1,000" == "1000"; "3.5" != "35"). A pair is consistent when every number of the paraphrase also occurs in
  the source. Number words ("three") are not numbers: spelling a digit out, or the reverse, is a paraphrase
  choice and is not judged here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import chain

import numba
import numpy as np
import polars as pl
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

__all__ = [
    "rouge_tokens",
    "rouge_l_f1",
    "sentence_bleu",
    "token_jaccard",
    "self_bleu",
    "length_ratios",
    "numbers_consistent",
    "bleu_tokens",
]

TokenLists = Sequence[Sequence[str]] | pl.Series

_NUMBER = r"[0-9]+(?:[.,][0-9]+)*"


# ----------------------------------------------------------------------------------------------- encoding helpers
def _as_lists(tokens: TokenLists) -> list:
    ls = tokens.to_list() if isinstance(tokens, pl.Series) else list(tokens)
    if None in ls:
        ls = [t if t is not None else [] for t in ls]
    return ls


# code points str.split() splits on (str.isspace)
_WHITESPACE = np.zeros(0x3001, dtype=np.bool_)
_WHITESPACE[[*range(0x9, 0xE), *range(0x1C, 0x21), 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
             0x202F, 0x205F, 0x3000]] = True


def _code_units(text: str) -> np.ndarray:
    """The code points of `text` as a numpy array (uint8 when ASCII, else uint32): one unit per character."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


@numba.njit(cache=True, nogil=True)
def _intern(cps, t0, t1):  # pragma: no cover - compiled
    """Dense ids of the tokens cps[t0[k]:t1[k]] (equal code unit sequences, equal ids), by open addressing.

    Returns (ids, rep0, rep1): the tokens of id v are cps[rep0[v]:rep1[v]]."""
    n = len(t0)
    size = 1024
    mask = size - 1
    table = np.full(size, -1, dtype=np.int64)
    hashes = np.empty(n, dtype=np.uint64)
    ids = np.empty(n, dtype=np.int64)
    rep0 = np.empty(n, dtype=np.int64)
    rep1 = np.empty(n, dtype=np.int64)
    nv = 0
    for k in range(n):
        s, e = t0[k], t1[k]
        h = np.uint64(14695981039346656037)
        for q in range(s, e):
            h = (h ^ np.uint64(cps[q])) * np.uint64(1099511628211)
        slot = np.int64(h & np.uint64(mask))
        while True:
            v = table[slot]
            if v < 0:
                table[slot] = nv
                rep0[nv] = s
                rep1[nv] = e
                hashes[nv] = h
                ids[k] = nv
                nv += 1
                if 2 * nv > size:  # keep the table at most half full: rehash into twice the slots
                    size *= 2
                    mask = size - 1
                    table = np.full(size, -1, dtype=np.int64)
                    for w in range(nv):
                        sl = np.int64(hashes[w] & np.uint64(mask))
                        while table[sl] >= 0:
                            sl = (sl + 1) & mask
                        table[sl] = w
                break
            fs, fe = rep0[v], rep1[v]
            if fe - fs == e - s:
                same = True
                for q in range(e - s):
                    if cps[fs + q] != cps[s + q]:
                        same = False
                        break
                if same:
                    ids[k] = v
                    break
            slot = (slot + 1) & mask
    return ids, rep0[:nv].copy(), rep1[:nv].copy()


@numba.njit(cache=True, nogil=True)
def _split_sep(cps, sep, ntok):  # pragma: no cover - compiled
    """Bounds of the ntok tokens of cps joined by `sep`, and the number of separators found (ntok - 1 unless a
    token holds `sep`, in which case the bounds are meaningless)."""
    t0 = np.empty(ntok, dtype=np.int64)
    t1 = np.empty(ntok, dtype=np.int64)
    k = 0
    start = 0
    for q in range(len(cps)):
        if cps[q] == sep:
            if k + 1 < ntok:
                t0[k] = start
                t1[k] = q
            k += 1
            start = q + 1
    if 0 < ntok and k + 1 == ntok:
        t0[k] = start
        t1[k] = len(cps)
    return t0, t1, k


@numba.njit(cache=True, nogil=True)
def _split_ws(cps, text_off, ws):  # pragma: no cover - compiled
    """Tokens of each text cps[text_off[i]:text_off[i+1]] as str.split() cuts them; CSR offsets per text."""
    n_ws = len(ws)
    t0 = np.empty(len(cps) // 2 + 1, dtype=np.int64)
    t1 = np.empty(len(cps) // 2 + 1, dtype=np.int64)
    off = np.zeros(len(text_off), dtype=np.int64)
    k = 0
    for i in range(len(text_off) - 1):
        inside = False
        for q in range(text_off[i], text_off[i + 1]):
            c = cps[q]
            space = c < n_ws and ws[c]
            if space:
                if inside:
                    t1[k] = q
                    k += 1
                    inside = False
            elif not inside:
                t0[k] = q
                inside = True
        if inside:
            t1[k] = text_off[i + 1]
            k += 1
        off[i + 1] = k
    return t0[:k].copy(), t1[:k].copy(), off


class _Encoded:
    """Token lists in CSR form over dense ids: `off` (n+1), `ids`; `vocab_size`; `vocab()` the id -> token strings
    (token v is text[rep0[v]:rep1[v]], text a str or UTF-8 bytes)."""

    __slots__ = ("off", "ids", "vocab_size", "_text", "_rep0", "_rep1")

    def __init__(self, off, ids, text, rep0, rep1):
        self.off, self.ids, self.vocab_size = off, ids, len(rep0)
        self._text, self._rep0, self._rep1 = text, rep0, rep1

    def vocab(self) -> list[str]:
        text = self._text
        bounds = zip(self._rep0.tolist(), self._rep1.tolist(), strict=True)
        if isinstance(text, bytes):
            return [text[a:b].decode("utf-8", "surrogatepass") for a, b in bounds]
        return [text[a:b] for a, b in bounds]


def _encode_lists(lists: list) -> _Encoded:
    """Encode token lists (of str): one C-level join, then splitting and interning in numba."""
    off = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)), out=off[1:])
    ntok = int(off[-1])
    # UTF-8 is injective and has no 0 byte but U+0000's: equal byte runs <=> equal tokens
    text = "\x00".join(chain.from_iterable(lists)).encode("utf-8", "surrogatepass")
    cps = np.frombuffer(text, dtype=np.uint8)
    t0, t1, n_sep = _split_sep(cps, 0, ntok)
    if n_sep != max(ntok - 1, 0):  # a token holds the separator itself: intern with a dict
        vocab: dict = dict.fromkeys(chain.from_iterable(lists))
        for i, k in enumerate(vocab):
            vocab[k] = i
        ids = np.fromiter(map(vocab.__getitem__, chain.from_iterable(lists)), dtype=np.int64, count=ntok)
        text = "".join(vocab)
        lens = np.fromiter(map(len, vocab), dtype=np.int64, count=len(vocab))
        rep1 = np.cumsum(lens)
        return _Encoded(off, ids, text, rep1 - lens, rep1)
    ids, rep0, rep1 = _intern(cps, t0, t1)
    return _Encoded(off, ids, text, rep0, rep1)


def _encode_list_column(column: pl.Series) -> _Encoded:
    """Encode a List(String) column straight from its Arrow buffers: no Python string is made or joined."""
    if column.dtype != pl.List(pl.String):  # List(Null), List(Categorical), Array(String): their token strings
        column = column.cast(pl.List(pl.String))
    if column.null_count():
        column = column.fill_null(pl.Series([[]], dtype=column.dtype))
    arr = column.rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())  # large_list<large_string>
    lo = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    values = arr.values
    if values.null_count:  # a null token is the empty token
        values = values.fill_null("")
    bufs = values.buffers()
    voff = np.frombuffer(bufs[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, dtype=np.uint8)
    ids, rep0, rep1 = _intern(data, voff[lo[0] : lo[-1]], voff[lo[0] + 1 : lo[-1] + 1])
    return _Encoded(lo - lo[0], ids, data.tobytes(), rep0, rep1)


def _encode_split(strings: list[str]) -> _Encoded:
    """Encode str.split() of each string, without building the token lists."""
    lens = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    text_off = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum(lens, out=text_off[1:])
    text = "".join(strings)
    cps = _code_units(text)
    t0, t1, off = _split_ws(cps, text_off, _WHITESPACE)
    ids, rep0, rep1 = _intern(cps, t0, t1)
    return _Encoded(off, ids, text, rep0, rep1)


def _encode_pairs(src: TokenLists, tgt: TokenLists) -> tuple[_Encoded, np.ndarray, np.ndarray]:
    """Encoding of the distinct list *objects* of both sides, and each pair's row in it (ai, bi).

    Lists that are the same object (as `rouge_tokens` returns for repeated texts) are encoded once.
    """
    a, b = _as_lists(src), _as_lists(tgt)
    if len(a) != len(b):
        raise ValueError("the two sides differ in length")
    both = a + b
    keys = np.fromiter(map(id, both), dtype=np.int64, count=len(both))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    uniq = [both[i] for i in first.tolist()]
    return _encode_lists(uniq), inverse[: len(a)].astype(np.int64), inverse[len(a) :].astype(np.int64)


def _texts(texts: Sequence[str] | pl.Series) -> pl.Series:
    if isinstance(texts, pl.Series):
        return texts.cast(pl.String).fill_null("")
    return pl.Series(values=["" if t is None else t for t in texts], dtype=pl.String)


def _unique_index(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    uniq: dict = dict.fromkeys(texts)
    uniq.update(zip(uniq, range(len(uniq)), strict=True))
    idx = np.fromiter(map(uniq.__getitem__, texts), dtype=np.int64, count=len(texts))
    return list(uniq), idx


# --------------------------------------------------------------------------------------------------- tokenisers
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")
_13A = Tokenizer13a()


_ROUGE_TABLE = str.maketrans({c: " " for c in map(chr, range(128)) if not ("a" <= c <= "z" or "0" <= c <= "9")})


@numba.njit(cache=True, nogil=True)
def _run_counts(cps, text_off):  # pragma: no cover - compiled
    """Number of runs of non-space units in each cps[text_off[i]:text_off[i+1]]."""
    n = len(text_off) - 1
    out = np.zeros(n, dtype=np.int64)
    for i in range(n):
        c = 0
        prev = True
        for q in range(text_off[i], text_off[i + 1]):
            space = cps[q] == 32
            if not space and prev:
                c += 1
            prev = space
        out[i] = c
    return out


def rouge_tokens(texts: Sequence[str]) -> list[list[str]]:
    """rouge-score's default tokenisation (lowercase, runs of [a-z0-9], no stemming) of each text.

    rouge_score.tokenize: lower(); sub([^a-z0-9]+, " "); split; keep ^[a-z0-9]+$ == the runs of [a-z0-9].
    Each distinct text is tokenised once; repeated texts share one list object (do not mutate the lists).
    The ASCII texts are tokenised together: one lower/translate/split of their join, cut by token counts.
    """
    cache: dict = dict.fromkeys(texts)
    ascii_texts = [t for t in cache if t and t.isascii()]
    if ascii_texts:
        big = " ".join(ascii_texts).lower().translate(_ROUGE_TABLE)  # ASCII: lower() keeps every length
        text_off = np.zeros(len(ascii_texts) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, ascii_texts), dtype=np.int64, count=len(ascii_texts)) + 1, out=text_off[1:])
        text_off[-1] -= 1  # the join puts no separator after the last text: never read past `big`
        counts = _run_counts(np.frombuffer(big.encode("ascii"), dtype=np.uint8), text_off)
        flat = big.split()
        ends = np.cumsum(counts).tolist()
        starts = [0, *ends[:-1]]
        cache.update(zip(ascii_texts, map(flat.__getitem__, map(slice, starts, ends)), strict=True))
    findall = _ROUGE_TOKEN.findall
    for t, toks in cache.items():
        if toks is None:
            cache[t] = findall(t.lower()) if t else []
    return list(map(cache.__getitem__, texts))


def _bleu_strings(texts: Sequence[str]) -> list[str]:
    """sacrebleu's own 13a tokeniser on rstrip(text): the string whose split() BLEU counts n-grams over."""
    return list(map(_13A, map(str.rstrip, texts)))


def bleu_tokens(texts: Sequence[str]) -> list[list[str]]:
    """The tokens sacrebleu's BLEU counts n-grams over: sacrebleu's own 13a tokeniser on rstrip(text), split."""
    return [t.split() for t in _bleu_strings(texts)]


# ------------------------------------------------------------------------------------------------------ ROUGE-L
def _chunks(n: int) -> int:
    """How many contiguous blocks of pairs the parallel kernels split n pairs into (prange over blocks)."""
    return 1 if n < 256 else min(n // 128, 4 * numba.get_num_threads())


@numba.njit(cache=True, nogil=True)
def _lcs_f1_range(off, ids, ai, bi, vocab_size, lo, hi, out):  # pragma: no cover - compiled
    """ROUGE-L F1 of pairs lo..hi. LCS length: bit-parallel (Hyyro 2004) when the paraphrase has <= 64 tokens,
    else the row-by-row dynamic programme."""
    maxlen = 1
    for p in range(lo, hi):
        lb = off[bi[p] + 1] - off[bi[p]]
        if lb + 1 > maxlen:
            maxlen = lb + 1
    row = np.zeros(maxlen, dtype=np.int64)
    masks = np.zeros(max(vocab_size, 1), dtype=np.uint64)
    stamp = np.full(max(vocab_size, 1), -1, dtype=np.int64)
    for p in range(lo, hi):
        a0, a1 = off[ai[p]], off[ai[p] + 1]
        b0, b1 = off[bi[p]], off[bi[p] + 1]
        la = a1 - a0
        lb = b1 - b0
        if la == 0 or lb == 0:
            out[p] = 0.0
            continue
        if lb <= 64:
            for j in range(lb):
                t = ids[b0 + j]
                if stamp[t] != p:
                    stamp[t] = p
                    masks[t] = np.uint64(0)
                masks[t] |= np.uint64(1) << np.uint64(j)
            v = ~np.uint64(0)
            for i in range(a0, a1):
                t = ids[i]
                if stamp[t] == p:
                    u = v & masks[t]
                    v = (v + u) | (v - u)
            lcs = 0
            for j in range(lb):
                if (v >> np.uint64(j)) & np.uint64(1) == np.uint64(0):
                    lcs += 1
        else:
            for j in range(lb + 1):
                row[j] = 0
            for i in range(la):
                x = ids[a0 + i]
                diag = 0
                left = 0
                for j in range(1, lb + 1):
                    up = row[j]
                    if x == ids[b0 + j - 1]:
                        val = diag + 1
                    else:
                        val = up if up > left else left
                    diag = up
                    row[j] = val
                    left = val
            lcs = row[lb]
        precision = lcs / lb
        recall = lcs / la
        if precision + recall > 0:
            out[p] = 2 * precision * recall / (precision + recall)
        else:
            out[p] = 0.0


@numba.njit(cache=True, parallel=True)
def _lcs_f1_kernel(off, ids, ai, bi, vocab_size, nch):  # pragma: no cover - compiled
    n = len(ai)
    out = np.empty(n, dtype=np.float64)
    for c in numba.prange(nch):
        _lcs_f1_range(off, ids, ai, bi, vocab_size, c * n // nch, (c + 1) * n // nch, out)
    return out


def rouge_l_f1(src_tokens: TokenLists, tgt_tokens: TokenLists) -> np.ndarray:
    """ROUGE-L F1 per pair (target = source, prediction = paraphrase), float64; 0.0 when either side is empty."""
    enc, ai, bi = _encode_pairs(src_tokens, tgt_tokens)
    return _lcs_f1_kernel(enc.off, enc.ids, ai, bi, enc.vocab_size, _chunks(len(ai)))


# ----------------------------------------------------------------------------------------------------- Jaccard
@numba.njit(cache=True, nogil=True)
def _jaccard_kernel(off, ids, ai, bi, vocab_size):  # pragma: no cover - compiled
    n = len(ai)
    out = np.empty(n, dtype=np.float64)
    mark_a = np.full(vocab_size, -1, dtype=np.int64)
    mark_b = np.full(vocab_size, -1, dtype=np.int64)
    for p in range(n):
        na = 0
        for k in range(off[ai[p]], off[ai[p] + 1]):
            t = ids[k]
            if mark_a[t] != p:
                mark_a[t] = p
                na += 1
        nb = 0
        inter = 0
        for k in range(off[bi[p]], off[bi[p] + 1]):
            t = ids[k]
            if mark_b[t] != p:
                mark_b[t] = p
                nb += 1
                if mark_a[t] == p:
                    inter += 1
        if na == 0 and nb == 0:
            out[p] = 1.0
        else:
            out[p] = inter / (na + nb - inter)
    return out


def token_jaccard(src_tokens: TokenLists, tgt_tokens: TokenLists) -> np.ndarray:
    """|set intersection| / |set union| of the token sets; 1.0 when both are empty, 0.0 when one is."""
    enc, ai, bi = _encode_pairs(src_tokens, tgt_tokens)
    return _jaccard_kernel(enc.off, enc.ids, ai, bi, max(1, enc.vocab_size))


# -------------------------------------------------------------------------------------------------------- BLEU
@numba.njit(cache=True, nogil=True)
def _count_ngram(ids, s0, s1, start, n):  # pragma: no cover - compiled
    """Occurrences of ids[start:start+n] in ids[s0:s1]."""
    c = 0
    for k in range(s0, s1 - n + 1):
        ok = True
        for t in range(n):
            if ids[k + t] != ids[start + t]:
                ok = False
                break
        if ok:
            c += 1
    return c


@numba.njit(cache=True, nogil=True)
def _seen_before(ids, s0, start, n):  # pragma: no cover - compiled
    for k in range(s0, start):
        ok = True
        for t in range(n):
            if ids[k + t] != ids[start + t]:
                ok = False
                break
        if ok:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _bleu_stats_brute(off, ids, h0, h1, ref_text, r0, r1, correct, total):  # pragma: no cover - compiled
    for n in range(1, 5):
        correct[n - 1] = 0
        total[n - 1] = 0
        for i in range(h0, h1 - n + 1):
            total[n - 1] += 1
            if _seen_before(ids, h0, i, n):
                continue
            ch = _count_ngram(ids, i, h1, i, n)
            cr = 0
            for r in range(r0, r1):
                t = ref_text[r]
                c = _count_ngram(ids, off[t], off[t + 1], i, n)
                if c > cr:
                    cr = c
            correct[n - 1] += ch if ch < cr else cr


@numba.njit(cache=True, nogil=True)
def _ngram_matches(hc, nh, rc, ref_lens, n, keys, hcnt, rmax, rcur, rlast, gen, g, used):  # pragma: no cover
    """Clipped matches sum_g min(count in hyp, max count in one reference) of the n-gram codes hc[:nh] against
    the references' codes (reference r: the next ref_lens[r] - n + 1 codes of rc), with an open-addressing
    table of the hypothesis' n-grams (slots of generation g are live)."""
    mask = len(keys) - 1
    nu = 0
    for i in range(nh):
        c = hc[i]
        slot = np.int64((np.uint64(c) * np.uint64(11400714819323198485)) >> np.uint64(40)) & mask
        while True:
            if gen[slot] != g:
                gen[slot] = g
                keys[slot] = c
                hcnt[slot] = 1
                rmax[slot] = 0
                rlast[slot] = -1
                used[nu] = slot
                nu += 1
                break
            if keys[slot] == c:
                hcnt[slot] += 1
                break
            slot = (slot + 1) & mask
    w = 0
    for r in range(len(ref_lens)):
        rlen = ref_lens[r]
        for k in range(w, w + rlen - n + 1):
            c = rc[k]
            slot = np.int64((np.uint64(c) * np.uint64(11400714819323198485)) >> np.uint64(40)) & mask
            while gen[slot] == g:
                if keys[slot] == c:
                    if rlast[slot] != r:
                        rlast[slot] = r
                        rcur[slot] = 0
                    rcur[slot] += 1
                    if rcur[slot] > rmax[slot]:
                        rmax[slot] = rcur[slot]
                    break
                slot = (slot + 1) & mask
        w += rlen
    correct = 0
    for u in range(nu):
        slot = used[u]
        correct += hcnt[slot] if hcnt[slot] < rmax[slot] else rmax[slot]
    return correct


@numba.njit(cache=True, nogil=True)
def _bleu_range(off, ids, hyp_text, ref_off, ref_text, vocab_size, lo, hi, out):  # pragma: no cover - compiled
    correct = np.zeros(4, dtype=np.int64)
    total = np.zeros(4, dtype=np.int64)
    precisions = np.zeros(4, dtype=np.float64)
    stamp = np.full(max(vocab_size, 1), -1, dtype=np.int64)
    loc = np.zeros(max(vocab_size, 1), dtype=np.int64)
    max_h = 1
    max_r = 1
    max_nr = 1
    for p in range(lo, hi):
        h = hyp_text[p]
        max_h = max(max_h, off[h + 1] - off[h])
        rl = 0
        for r in range(ref_off[p], ref_off[p + 1]):
            t = ref_text[r]
            rl += off[t + 1] - off[t]
        max_r = max(max_r, rl)
        max_nr = max(max_nr, ref_off[p + 1] - ref_off[p])
    hc = np.empty(max_h, dtype=np.int64)
    rc = np.empty(max_r, dtype=np.int64)
    ref_lens = np.empty(max_nr, dtype=np.int64)
    size = 16
    while size < 2 * max_h:
        size *= 2
    keys = np.zeros(size, dtype=np.int64)
    hcnt = np.zeros(size, dtype=np.int64)
    rmax = np.zeros(size, dtype=np.int64)
    rcur = np.zeros(size, dtype=np.int64)
    rlast = np.zeros(size, dtype=np.int64)
    gen = np.full(size, -1, dtype=np.int64)
    used = np.empty(max_h, dtype=np.int64)
    g = 0
    for p in range(lo, hi):
        r0, r1 = ref_off[p], ref_off[p + 1]
        if r1 == r0:
            out[p] = np.nan
            continue
        h = hyp_text[p]
        h0, h1 = off[h], off[h + 1]
        hyp_len = h1 - h0
        # closest reference length (ties: the shorter)
        closest_diff = -1
        ref_len = -1
        for r in range(r0, r1):
            rl = off[ref_text[r] + 1] - off[ref_text[r]]
            ref_lens[r - r0] = rl
            diff = abs(hyp_len - rl)
            if closest_diff == -1 or diff < closest_diff:
                closest_diff = diff
                ref_len = rl
            elif diff == closest_diff and rl < ref_len:
                ref_len = rl
        # local vocabulary of this hypothesis and its references
        nloc = 0
        for k in range(h0, h1):
            t = ids[k]
            if stamp[t] != p:
                stamp[t] = p
                nloc += 1
                loc[t] = nloc
        n_rtok = 0
        for r in range(r0, r1):
            t = ref_text[r]
            for k in range(off[t], off[t + 1]):
                w = ids[k]
                if stamp[w] != p:
                    stamp[w] = p
                    nloc += 1
                    loc[w] = nloc
                rc[n_rtok] = loc[w]
                n_rtok += 1
        base = nloc + 1
        if base >= 55000:  # base**4 would overflow int64: compare token by token
            _bleu_stats_brute(off, ids, h0, h1, ref_text, r0, r1, correct, total)
        else:
            for k in range(hyp_len):
                hc[k] = loc[ids[h0 + k]]
            for n in range(1, 5):
                if n > 1:
                    for k in range(hyp_len - n + 1):
                        hc[k] = hc[k] * base + loc[ids[h0 + k + n - 1]]
                    w = 0
                    for r in range(r0, r1):
                        t = ref_text[r]
                        rlen = off[t + 1] - off[t]
                        for k in range(rlen - n + 1):
                            rc[w + k] = rc[w + k] * base + loc[ids[off[t] + k + n - 1]]
                        w += rlen
                nh = hyp_len - n + 1
                if nh <= 0:
                    correct[n - 1] = 0
                    total[n - 1] = 0
                    continue
                total[n - 1] = nh
                correct[n - 1] = _ngram_matches(hc, nh, rc, ref_lens[: r1 - r0], n, keys, hcnt, rmax, rcur,
                                                rlast, gen, g, used)
                g += 1
        # BLEU.compute_bleu
        bp = 1.0
        if hyp_len < ref_len:
            bp = math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0
        any_correct = False
        for n in range(4):
            precisions[n] = 0.0
            if correct[n] != 0:
                any_correct = True
        if not any_correct:
            out[p] = 0.0
            continue
        smooth_mteval = 1.0
        eff_order = 4
        for n in range(1, 5):
            if total[n - 1] == 0:
                break
            eff_order = n
            if correct[n - 1] == 0:
                smooth_mteval *= 2
                precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1])
            else:
                precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1]
        s = 0.0
        for n in range(eff_order):
            s += math.log(precisions[n]) if precisions[n] != 0.0 else -9999999999.0
        out[p] = bp * math.exp(s / eff_order)


@numba.njit(cache=True, parallel=True)
def _bleu_kernel(off, ids, hyp_text, ref_off, ref_text, vocab_size, nch):  # pragma: no cover - compiled
    """Sentence BLEU (sacrebleu: exp smoothing, effective order, max order 4) per hypothesis.

    hyp_text[p] indexes the text of hypothesis p; its references are ref_text[ref_off[p]:ref_off[p+1]].
    N-grams are packed into one int64 code over a per-hypothesis local vocabulary, so every n-gram comparison
    is one integer comparison, and counted in a small hash table. Returns NaN for a hypothesis with no reference.
    """
    n = len(hyp_text)
    out = np.empty(n, dtype=np.float64)
    for c in numba.prange(nch):
        _bleu_range(off, ids, hyp_text, ref_off, ref_text, vocab_size, c * n // nch, (c + 1) * n // nch, out)
    return out


def sentence_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
    """sacrebleu sentence BLEU (0-100) of each hypothesis against its own list of references.

    `refs[i]` is the list of references of `hyps[i]` (for a pair: hyp = paraphrase, refs = [source]); `None`
    references are skipped as sacrebleu does. NaN where a hypothesis has no reference.
    """
    if len(hyps) != len(refs):
        raise ValueError("hyps and refs differ in length")
    refs = list(refs)
    if any(issubclass(t, str) for t in set(map(type, refs))):
        raise TypeError("refs must be a list of reference lists, e.g. [[source], ...]")
    ref_off = np.zeros(len(refs) + 1, dtype=np.int64)
    flat_refs = list(chain.from_iterable(refs))
    if None in flat_refs:  # sacrebleu skips None references
        refs = [[r for r in rs if r is not None] for rs in refs]
        flat_refs = list(chain.from_iterable(refs))
    np.cumsum(np.fromiter(map(len, refs), dtype=np.int64, count=len(refs)), out=ref_off[1:])
    uniq, idx = _unique_index([*hyps, *flat_refs])
    enc = _encode_split(_bleu_strings(uniq))
    return _bleu_kernel(enc.off, enc.ids, idx[: len(hyps)], ref_off, idx[len(hyps) :], enc.vocab_size,
                        _chunks(len(hyps)))


def self_bleu(paraphrases: Sequence[str], group_ids: Sequence[str]) -> np.ndarray:
    """Sentence BLEU of each paraphrase against the other paraphrases of its group; NaN for a lone member."""
    if len(paraphrases) != len(group_ids):
        raise ValueError("paraphrases and group_ids differ in length")
    n = len(paraphrases)
    uniq, idx = _unique_index(list(paraphrases))
    enc = _encode_split(_bleu_strings(uniq))
    groups = pl.Series(values=list(group_ids)).cast(pl.String).fill_null("\x00null")
    gcode = groups.rank("dense").to_numpy().astype(np.int64)
    order = np.argsort(gcode, kind="stable")
    sorted_codes = gcode[order]
    starts = np.searchsorted(sorted_codes, sorted_codes, side="left")
    ends = np.searchsorted(sorted_codes, sorted_codes, side="right")
    sizes = ends - starts  # per sorted position
    n_refs = np.empty(n, dtype=np.int64)
    n_refs[order] = sizes - 1
    ref_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_refs, out=ref_off[1:])
    ref_text = _self_refs(order, starts, ends, idx, ref_off)
    return _bleu_kernel(enc.off, enc.ids, idx, ref_off, ref_text, enc.vocab_size, _chunks(n))


@numba.njit(cache=True)
def _self_refs(order, starts, ends, text_idx, ref_off):  # pragma: no cover - compiled
    out = np.empty(ref_off[-1], dtype=np.int64)
    for k in range(len(order)):
        p = order[k]
        w = ref_off[p]
        for m in range(starts[k], ends[k]):
            if m != k:
                out[w] = text_idx[order[m]]
                w += 1
    return out


# ----------------------------------------------------------------------------------------- lengths and numbers
def length_ratios(
    src: Sequence[str], tgt: Sequence[str], src_tokens: TokenLists, tgt_tokens: TokenLists
) -> tuple[np.ndarray, np.ndarray]:
    """(len(tgt)/len(src) in characters, len(tgt_tokens)/len(src_tokens)); NaN where the source length is 0."""
    sc = _texts(src).str.len_chars().to_numpy().astype(np.float64)
    tc = _texts(tgt).str.len_chars().to_numpy().astype(np.float64)
    st = np.fromiter(map(len, _as_lists(src_tokens)), dtype=np.float64)
    tt = np.fromiter(map(len, _as_lists(tgt_tokens)), dtype=np.float64)
    if not (len(sc) == len(tc) == len(st) == len(tt)):
        raise ValueError("inputs differ in length")
    with np.errstate(divide="ignore", invalid="ignore"):
        chars = np.where(sc > 0, tc / np.where(sc > 0, sc, 1.0), np.nan)
        toks = np.where(st > 0, tt / np.where(st > 0, st, 1.0), np.nan)
    return chars, toks


def _numbers(texts: Sequence[str] | pl.Series) -> pl.Series:
    return _texts(texts).str.extract_all(_NUMBER).fill_null([]).list.eval(pl.element().str.replace_all(",", ""))


def numbers_consistent(src: Sequence[str], tgt: Sequence[str]) -> np.ndarray:
    """True where every number of the paraphrase also occurs in the source (see the module docstring)."""
    if len(src) != len(tgt):
        raise ValueError("src and tgt differ in length")
    s_nums = _numbers(src)
    t_nums = _numbers(tgt)
    new = t_nums.list.set_difference(s_nums).list.len()
    return (new == 0).to_numpy().astype(bool)
