"""Corpus-level quality numbers: the columns of method B's dataset-quality table (METHODS.md).

`corpus_metrics(df)` reads one row per pair: `source_id`, `source`, `paraphrase`, and when present the per-pair
scores `cosine`, `jaccard`, `ted_3`, `ted_f`, `wpd`, `ld`. Definitions chosen here (the README quotes them):

- `cos_sim`: mean of `cosine` x 100.
- `h2`, `h3`: Shannon entropy in bits of the corpus' 2-gram / 3-gram frequency distribution, over the
  paraphrases' rouge tokens (lowercase runs of [a-z0-9], `lexical.rouge_tokens`); n-grams never cross two
  paraphrases. None when the corpus has no such n-gram.
- `msttr`: mean segmental type-token ratio x 100: the paraphrases' rouge tokens concatenated in row order, cut
  into segments of 50 tokens, a trailing partial segment dropped; None when there is no full segment.
- `jaccard`: mean of `jaccard` x 100; when the column is absent it is computed from the texts
  (`lexical.token_jaccard` on rouge tokens).
- `ted_3`, `ted_f`, `wpd`, `ld`: means of those columns.
- `pairs`, `sources` (distinct `source_id`), `pairs_per_source`.

A missing input column gives None for its metric; NaN and null scores are left out of the means. Zero rows give
pairs = sources = 0, pairs_per_source = 0.0 and None for every metric.

How it is computed (millions of pairs in bounded memory; results bit-for-bit those of the previous Counter code):

- Texts are tokenised straight from the column's Arrow buffers, a block of rows at a time, into int32 ids of
  one vocabulary (interned by a numba kernel): no Python object per token. An ASCII text's rouge tokens are its
  runs of [A-Za-z0-9], lowercased, read byte by byte; a text with a non-ASCII character is first rewritten by
  rouge-score's own rule (`re.findall("[a-z0-9]+", text.lower())`, joined by spaces), so that Unicode
  lowercasing (KELVIN SIGN -> "k", "İ" -> "i" + a combining dot) stays Python's.
- n-grams are counted by sorting int64 keys that pack the n-gram's ids, its position in the stream and its
  selection's label (a range of first tokens at a time; one sort per first token when the whole n-gram does
  not fit; a hash table over the n-grams when even that does not fit 63 bits).
- Entropy: the previous code added `c/total * math.log2(c/total)` over its Counter, i.e. in first-seen order,
  with the builtin sum(). Summing those terms in another order (or with math.fsum) moves the result by up to
  ~1e-11 relatively at 100k pairs, more than the last bits, so this module keeps the very arithmetic: the
  same term per count (math.log2, computed once per distinct count), the same first-seen order (read from
  the sorted keys' positions) and the interpreter's own sum() algorithm (plain before 3.12, Neumaier's
  compensated sum from 3.12). tests/test_corpus_scale.py compares every value with == to the previous code.
- `corpus_metrics_split(df, kept)` gives the all / kept / dropped rows of the table from one tokenisation
  and one count per n: the filter step's `corpus_metrics`. MSTTR's stream is the rows' order (with `texts`
  and `rows`, the order of `rows`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence

import numba
import numpy as np
import polars as pl

from .lexical import _jaccard_kernel

__all__ = ["corpus_metrics", "corpus_metrics_split", "ngram_entropy", "msttr", "MSTTR_SEGMENT"]

MSTTR_SEGMENT = 50
_MEAN_COLUMNS = {"cos_sim": ("cosine", 100.0), "ted_3": ("ted_3", 1.0), "ted_f": ("ted_f", 1.0),
                 "wpd": ("wpd", 1.0), "ld": ("ld", 1.0)}
_METRICS = ("cos_sim", "h2", "h3", "msttr", "jaccard", "ted_3", "ted_f", "wpd", "ld")

_BLOCK_ROWS = 1 << 17  # rows tokenised at a time: bounds the transient copy of their text
_KEY_BITS = 63  # an n-gram, its number and its label pack into one int64 key when they need this many bits
_NUMPY_SORT = 1024  # key buckets this big are sorted by numpy (SIMD), smaller ones in numba
_PART_KEYS = 1 << 22  # n-gram keys held at once (32 MiB), unless one first token has more
_HIST = 1 << 16  # n-gram counts below this get their entropy term from a dense table, larger ones are searched
_NEUMAIER = sys.version_info >= (3, 12)  # CPython's sum() of floats compensates from 3.12 on
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")

# byte -> its lowercase rouge character, 0 for a separator (every byte >= 0x80 included: such texts are rewritten)
_ASCII_MAP = np.zeros(256, dtype=np.uint8)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789":
    _ASCII_MAP[_c] = _c
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _ASCII_MAP[_c] = _c + 32


# -------------------------------------------------------------------------------------------------- tokenising
@numba.njit(cache=True, nogil=True)
def _mix(h):  # pragma: no cover - compiled
    """murmur3's 64-bit finaliser: every bit of h reaches the low bits the hash tables index by."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@numba.njit(cache=True, nogil=True)
def _tokenise_rows(data, offs, amap, table, vhash, vstart, vstore, nv, ids, counts, r0, k):  # pragma: no cover
    """Intern the rouge tokens of rows data[offs[r]:offs[r+1]] (ASCII bytes), r = r0.., into the vocabulary.

    The vocabulary: token v is vstore[vstart[v]:vstart[v+1]] with hash vhash[v]; `table` is an open addressing
    index (-1 empty) kept at most half full. Writes the ids from ids[k], each row's count to counts[r].
    Returns (r, k, nv): r == len(offs) - 1 when done; else a new token did not fit, and the caller grows the
    arrays and calls again from row r (whose ids start at k; its tokens interned so far are found again)."""
    mask = len(table) - 1
    for r in range(r0, len(offs) - 1):
        q = offs[r]
        end = offs[r + 1]
        k0 = k
        while q < end:
            if amap[data[q]] == 0:
                q += 1
                continue
            s = q
            h = np.uint64(14695981039346656037)
            while q < end:
                m = amap[data[q]]
                if m == 0:
                    break
                h = (h ^ np.uint64(m)) * np.uint64(1099511628211)
                q += 1
            n = q - s
            h = _mix(h)
            slot = np.int64(h & np.uint64(mask))
            while True:
                v = table[slot]
                if v < 0:
                    at = vstart[nv]
                    if nv + 2 > len(vhash) or at + n > len(vstore) or 2 * (nv + 1) > len(table):
                        return r, k0, nv
                    for j in range(n):
                        vstore[at + j] = amap[data[s + j]]
                    vstart[nv + 1] = at + n
                    vhash[nv] = h
                    table[slot] = nv
                    ids[k] = nv
                    nv += 1
                    break
                if vhash[v] == h and vstart[v + 1] - vstart[v] == n:
                    base = vstart[v]
                    same = True
                    for j in range(n):
                        if vstore[base + j] != amap[data[s + j]]:
                            same = False
                            break
                    if same:
                        ids[k] = v
                        break
                slot = (slot + 1) & mask
            k += 1
        counts[r] = k - k0
    return len(offs) - 1, k, nv


@numba.njit(cache=True, nogil=True)
def _rehash(hashes, nv, size):  # pragma: no cover - compiled
    """An open addressing index of `size` slots over the entries 0..nv-1 with the given hashes."""
    table = np.full(size, -1, dtype=np.int32)
    mask = size - 1
    for w in range(nv):
        sl = np.int64(hashes[w] & np.uint64(mask))
        while table[sl] >= 0:
            sl = (sl + 1) & mask
        table[sl] = w
    return table


def _grown(arr: np.ndarray, need: int, keep: int) -> np.ndarray:
    if need <= len(arr):
        return arr
    out = np.empty(max(2 * len(arr), need), dtype=arr.dtype)
    out[:keep] = arr[:keep]
    return out


class _Vocab:
    """One growing vocabulary of rouge tokens; `encode` turns a text column into CSR token ids over it."""

    def __init__(self) -> None:
        self.table = np.full(1024, -1, dtype=np.int32)
        self.vhash = np.empty(512, dtype=np.uint64)
        self.vstart = np.zeros(512, dtype=np.int64)
        self.vstore = np.empty(4096, dtype=np.uint8)
        self.size = 0

    def _grow(self, longest: int) -> None:
        nv = self.size
        self.vhash = _grown(self.vhash, nv + 2, nv)
        self.vstart = _grown(self.vstart, nv + 2, nv + 1)
        self.vstore = _grown(self.vstore, int(self.vstart[nv]) + longest, int(self.vstart[nv]))
        if 2 * (nv + 1) > len(self.table):
            self.table = _rehash(self.vhash, nv, 2 * len(self.table))

    def encode(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(off, ids): the rouge tokens of text i are ids[off[i]:off[i+1]] (int64 offsets, int32 ids)."""
        texts = texts.cast(pl.String)
        n = texts.len()
        counts = np.zeros(n, dtype=np.int64)
        parts = []
        for a in range(0, n, _BLOCK_ROWS):
            block = texts.slice(a, _BLOCK_ROWS).fill_null("")
            wide = (block.str.len_bytes() != block.str.len_chars()).arg_true()
            if wide.len():  # rouge-score's rule, verbatim, for texts with a non-ASCII character
                findall = _ROUGE_TOKEN.findall
                block = block.scatter(wide, [" ".join(findall(t.lower())) for t in block.gather(wide).to_list()])
            arr = block.rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string
            bufs = arr.buffers()
            offs = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
            data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, dtype=np.uint8)
            ids = np.empty((int(offs[-1] - offs[0]) + len(arr)) // 2 + 1, dtype=np.int32)
            r, k = 0, 0
            while True:
                r, k, self.size = _tokenise_rows(data, offs, _ASCII_MAP, self.table, self.vhash, self.vstart,
                                                 self.vstore, self.size, ids, counts[a : a + len(arr)], r, k)
                if r == len(arr):
                    break
                self._grow(int(offs[r + 1] - offs[r]))
            parts.append(ids[:k].copy())
            del ids, arr, bufs, data, offs, block
        off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=off[1:])
        return off, (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32))


def _encode_token_lists(token_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, int]:
    """(off, ids, vocab size) of given token lists (any strings: the tokens are not re-tokenised)."""
    vocab: dict = {}
    ids = np.fromiter((vocab.setdefault(t, len(vocab)) for toks in token_lists for t in toks), dtype=np.int32)
    off = np.zeros(len(token_lists) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists)), out=off[1:])
    return off, ids, len(vocab)


# -------------------------------------------------------------------------------------------- n-gram entropy
# The stream's n-grams are numbered k = 0, 1, ... in row order (only those inside one row). Counting yields
# "marks": marks[k] = how often the n-gram at k occurs in a selection when k is its first occurrence there,
# else 0. Reading the marks in k order visits the distinct n-grams in first-seen order: the order in which
# the previous code's Counter held them, and so the order in which it added their entropy terms.
@numba.njit(cache=True, nogil=True)
def _first_token_starts(ids, off, n, vocab):  # pragma: no cover - compiled
    """start[t]: how many n-grams begin with a token id below t (start has vocab + 1 entries)."""
    start = np.zeros(vocab + 1, dtype=np.int64)
    for r in range(len(off) - 1):
        for i in range(off[r], off[r + 1] - n + 1):
            start[ids[i] + 1] += 1
    for t in range(vocab):
        start[t + 1] += start[t]
    return start


@numba.njit(cache=True, nogil=True)
def _bucket_keys(ids, off, lab, n, by_first, base, kbits, lbits, start, t0, t1, buf):  # pragma: no cover
    """For each n-gram k whose first token t is in [t0, t1): buf[start[t] - start[t0] + j] (its j-th in k order
    among those beginning with t) = ((rest << kbits | k) << lbits | label), where `rest` packs the n-gram's
    ids in base `base` (without the first when by_first) and label is its row's."""
    cursor = start[t0:t1] - start[t0]
    k = 0
    for r in range(len(off) - 1):
        for i in range(off[r], off[r + 1] - n + 1):
            t = ids[i]
            if t0 <= t < t1:
                rest = np.int64(0)
                for j in range(1 if by_first else 0, n):
                    rest = rest * base + ids[i + j]
                buf[cursor[t - t0]] = (((rest << kbits) | k) << lbits) | lab[r]
                cursor[t - t0] += 1
            k += 1


@numba.njit(cache=True, nogil=True)
def _sort_small_buckets(buf, start, big):  # pragma: no cover - compiled
    for b in range(len(start) - 1):
        if 1 < start[b + 1] - start[b] < big:
            buf[start[b] : start[b + 1]].sort()


@numba.njit(cache=True, nogil=True)
def _marks_from_sorted(buf, start, kbits, lbits, nlab, marks):  # pragma: no cover - compiled
    """Marks of every row (marks[:, 0]) and, when marks has a second column, of each label (labels' rows are
    disjoint, so one column holds them all) from the sorted buckets."""
    kmask = (np.int64(1) << kbits) - 1
    lmask = (np.int64(1) << lbits) - 1
    firstk = np.zeros(nlab, dtype=np.int64)
    cnt = np.zeros(nlab, dtype=np.int64)
    for b in range(len(start) - 1):
        i = start[b]
        hi = start[b + 1]
        while i < hi:
            rest = buf[i] >> (kbits + lbits)
            j = i
            while j < hi and buf[j] >> (kbits + lbits) == rest:
                x = buf[j]
                lb = x & lmask
                if cnt[lb] == 0:
                    firstk[lb] = (x >> lbits) & kmask  # k ascends within a run: the first is the first seen
                cnt[lb] += 1
                j += 1
            marks[(buf[i] >> lbits) & kmask, 0] = j - i  # the same row as its label's first: one cache line
            for lb in range(nlab):
                if cnt[lb] > 0 and marks.shape[1] > 1:
                    marks[firstk[lb], 1] = cnt[lb]
                cnt[lb] = 0
            i = j


@numba.njit(cache=True, nogil=True)
def _ngram_hash(ids, i, n):  # pragma: no cover - compiled
    h = np.uint64(14695981039346656037)
    for j in range(n):
        h = (h ^ np.uint64(ids[i + j])) * np.uint64(1099511628211)
    return _mix(h)


@numba.njit(cache=True, nogil=True)
def _ngram_ids(ids, off, n, table, first, gid, r0, k, nv):  # pragma: no cover - compiled
    """Dense ids, in first-seen order, of the n-grams of rows r0.. (n-gram v is ids[first[v]:first[v]+n]);
    gid[k] gets n-gram k's id. Returns (r, k, nv) as `_tokenise_rows` does: r short of the last row when the
    index `table` (kept at most 7/10 full) must grow before row r is done again."""
    mask = len(table) - 1
    for r in range(r0, len(off) - 1):
        k0 = k
        for i in range(off[r], off[r + 1] - n + 1):
            slot = np.int64(_ngram_hash(ids, i, n) & np.uint64(mask))
            while True:
                v = table[slot]
                if v < 0:
                    if 10 * (nv + 1) > 7 * len(table):
                        return r, k0, nv
                    table[slot] = nv
                    first[nv] = i
                    gid[k] = nv
                    nv += 1
                    break
                f = first[v]
                same = True
                for j in range(n):
                    if ids[f + j] != ids[i + j]:
                        same = False
                        break
                if same:
                    gid[k] = v
                    break
                slot = (slot + 1) & mask
            k += 1
    return len(off) - 1, k, nv


@numba.njit(cache=True, nogil=True)
def _rehash_ngrams(ids, first, nv, n, size):  # pragma: no cover - compiled
    table = np.full(size, -1, dtype=np.int32)
    mask = size - 1
    for w in range(nv):
        sl = np.int64(_ngram_hash(ids, first[w], n) & np.uint64(mask))
        while table[sl] >= 0:
            sl = (sl + 1) & mask
        table[sl] = w
    return table


@numba.njit(cache=True, nogil=True)
def _marks_from_ids(gid, off, lab, label, n, counts, marks, col):  # pragma: no cover - compiled
    """Marks of the rows whose lab is `label` (every row when < 0) into marks[:, col], from the n-grams' ids."""
    counts[:] = 0
    k = 0
    for r in range(len(off) - 1):
        m = off[r + 1] - off[r] - n + 1
        if m > 0:
            if label < 0 or lab[r] == label:
                for q in range(k, k + m):
                    counts[gid[q]] += 1
            k += m
    k = 0
    for r in range(len(off) - 1):
        m = off[r + 1] - off[r] - n + 1
        if m > 0:
            if label < 0 or lab[r] == label:
                for q in range(k, k + m):
                    v = gid[q]
                    if counts[v] > 0:
                        marks[q, col] = counts[v]
                        counts[v] = 0
            k += m


def _ngram_marks(off: np.ndarray, ids: np.ndarray, lab: np.ndarray, n: int, per_label: bool) -> np.ndarray:
    """Marks, one row per n-gram: column 0 for every row, column 1 (when per_label) for each label's rows.

    Sorted packed keys when they fit 63 bits (one sort, or one per first token), else a hash table. The keys
    are made and sorted for a range of first tokens at a time, about `_PART_KEYS` of them."""
    count = int(np.maximum(np.diff(off) - (n - 1), 0).sum())
    marks = np.zeros((count, 2 if per_label else 1), dtype=np.int32 if count < 2**31 else np.int64)
    if count == 0:
        return marks
    base = max(int(ids.max()) + 1, 1)
    kbits = max((count - 1).bit_length(), 1)
    nlab = int(lab.max()) + 1 if per_label and len(lab) else 1
    labs = lab if per_label else np.zeros(len(lab), dtype=np.int8)
    lbits = (nlab - 1).bit_length()
    full, rest = (base**n - 1).bit_length(), (base ** (n - 1) - 1).bit_length()
    if min(full, rest) + kbits + lbits <= _KEY_BITS:
        by_first = full + kbits + lbits > _KEY_BITS
        start = _first_token_starts(ids, off, n, base)
        t0 = 0
        while t0 < base:  # first tokens t0..t1-1: at least one, as many as fit _PART_KEYS keys
            t1 = max(int(np.searchsorted(start, start[t0] + _PART_KEYS, side="right")) - 1, t0 + 1)
            buf = np.empty(int(start[t1] - start[t0]), dtype=np.int64)
            _bucket_keys(ids, off, labs, n, by_first, base, kbits, lbits, start, t0, t1, buf)
            if by_first:  # runs stay inside a first token's bucket: sort each
                bounds = start[t0 : t1 + 1] - start[t0]
                for b in np.flatnonzero(np.diff(bounds) >= _NUMPY_SORT).tolist():  # numpy's SIMD sort
                    buf[bounds[b] : bounds[b + 1]].sort()
                _sort_small_buckets(buf, bounds, _NUMPY_SORT)
            else:  # the keys hold the first token too: one sort
                buf.sort()
                bounds = np.array([0, len(buf)], dtype=np.int64)
            _marks_from_sorted(buf, bounds, kbits, lbits, nlab, marks)
            del buf
            t0 = t1
        return marks
    gid = np.empty(count, dtype=np.int32)
    first = np.empty(count, dtype=np.int32 if len(ids) < 2**31 else np.int64)
    table = np.full(1024, -1, dtype=np.int32)
    r, k, nv = 0, 0, 0
    while True:
        r, k, nv = _ngram_ids(ids, off, n, table, first, gid, r, k, nv)
        if r == len(off) - 1:
            break
        table = _rehash_ngrams(ids, first, nv, n, 2 * len(table))
    del table, first
    counts = np.empty(nv, dtype=np.int64)
    _marks_from_ids(gid, off, lab, -1, n, counts, marks, 0)
    for label in range(nlab if per_label else 0):
        _marks_from_ids(gid, off, lab, label, n, counts, marks, 1)
    return marks


@numba.njit(cache=True, nogil=True)
def _mark_histograms(marks, off, lab, labels, n, dense):  # pragma: no cover - compiled
    """dense[s, c] = how many distinct n-grams of selection s occur c times (c < dense.shape[1]); returns the
    larger counts as (selection, count) columns. Selection s: the rows whose lab is labels[s] (every row when
    it is < 0), read from marks[:, 0] (every row) or marks[:, 1] (a label's rows)."""
    dense[:] = 0
    big_s = np.empty(16, dtype=np.int64)
    big_c = np.empty(16, dtype=np.int64)
    nbig = 0
    k = 0
    for r in range(len(off) - 1):
        m = off[r + 1] - off[r] - n + 1
        if m <= 0:
            continue
        for s in range(len(labels)):
            if labels[s] >= 0 and lab[r] != labels[s]:
                continue
            col = 0 if labels[s] < 0 else 1
            for q in range(k, k + m):
                c = marks[q, col]
                if c >= dense.shape[1]:
                    if nbig == len(big_c):
                        grown_s = np.empty(2 * nbig, dtype=np.int64)
                        grown_s[:nbig] = big_s
                        big_s = grown_s
                        grown_c = np.empty(2 * nbig, dtype=np.int64)
                        grown_c[:nbig] = big_c
                        big_c = grown_c
                    big_s[nbig] = s
                    big_c[nbig] = c
                    nbig += 1
                elif c > 0:
                    dense[s, c] += 1
        k += m
    return big_s[:nbig].copy(), big_c[:nbig].copy()


@numba.njit(cache=True, nogil=True)
def _add(f, comp, x, neumaier):  # pragma: no cover - compiled
    """One step of CPython's builtin sum() over floats: Neumaier's compensated sum from 3.12, plain before."""
    if not neumaier:
        return f + x, comp
    t = f + x
    if abs(f) >= abs(x):
        comp += (f - t) + x
    else:
        comp += (x - t) + f
    return t, comp


@numba.njit(cache=True, nogil=True)
def _first_seen_sums(marks, off, lab, labels, n, tdense, bigc, bigt, bigoff, neumaier):  # pragma: no cover
    """Per selection (as in `_mark_histograms`): the sum of its distinct n-grams' terms in first-seen order,
    added as CPython's sum() adds. The term of count c: tdense[s, c], or bigt at c's place in bigc[bigoff[s]:
    bigoff[s + 1]]."""
    nsel = len(labels)
    f = np.zeros(nsel)
    comp = np.zeros(nsel)
    k = 0
    for r in range(len(off) - 1):
        m = off[r + 1] - off[r] - n + 1
        if m <= 0:
            continue
        for s in range(nsel):
            if labels[s] >= 0 and lab[r] != labels[s]:
                continue
            col = 0 if labels[s] < 0 else 1
            for q in range(k, k + m):
                c = marks[q, col]
                if c > 0:
                    if c < tdense.shape[1]:
                        x = tdense[s, c]
                    else:
                        x = bigt[bigoff[s] + np.searchsorted(bigc[bigoff[s] : bigoff[s + 1]], c)]
                    f[s], comp[s] = _add(f[s], comp[s], x, neumaier)
        k += m
    for s in range(nsel):
        if neumaier and comp[s] != 0.0 and math.isfinite(comp[s]):
            f[s] += comp[s]
    return f


def _entropies(off: np.ndarray, ids: np.ndarray, lab: np.ndarray, labels: list[int], n: int
               ) -> list[float | None]:
    """n-gram entropy of the rows whose lab is each of `labels` (-1: every row), n-grams inside rows.

    The previous code's very arithmetic: a term c/total * math.log2(c/total) per distinct n-gram (computed
    here once per distinct count c), added in first-seen (Counter) order by CPython's own sum() algorithm."""
    marks = _ngram_marks(off, ids, lab, n, any(label >= 0 for label in labels))
    sel = np.array(labels, dtype=np.int64)
    dense = np.empty((len(labels), _HIST), dtype=np.int64)
    big_s, big_c = _mark_histograms(marks, off, lab, sel, n, dense)
    tdense = np.zeros((len(labels), _HIST), dtype=np.float64)
    bigc, bigt, bigoff, totals = [], [], [0], []
    for s in range(len(labels)):
        cs = np.flatnonzero(dense[s])
        mine = np.unique(big_c[big_s == s])
        total = int((cs * dense[s, cs]).sum()) + int(big_c[big_s == s].sum())
        totals.append(total)
        if total:
            tdense[s, cs] = [c / total * math.log2(c / total) for c in cs.tolist()]
        bigc += mine.tolist()
        bigt += [c / total * math.log2(c / total) for c in mine.tolist()]
        bigoff.append(len(bigc))
    sums = _first_seen_sums(marks, off, lab, sel, n, tdense, np.array(bigc, dtype=np.int64),
                            np.array(bigt, dtype=np.float64), np.array(bigoff, dtype=np.int64), _NEUMAIER)
    return [-float(sums[s]) if totals[s] else None for s in range(len(labels))]


# ------------------------------------------------------------------------------------------------------- MSTTR
@numba.njit(cache=True, nogil=True)
def _segment_types(ids, off, lab, labels, vocab, segment, out):  # pragma: no cover - compiled
    """Distinct ids in each full segment of the row-order stream of the rows whose lab is labels[s] (every row
    when it is < 0), into out[s]; returns the number of full segments of each selection s."""
    nsel = len(labels)
    stamp = np.full((nsel, max(vocab, 1)), -1, dtype=np.int32)
    pos = np.zeros(nsel, dtype=np.int64)
    seg = np.zeros(nsel, dtype=np.int64)
    types = np.zeros(nsel, dtype=np.int64)
    for r in range(len(off) - 1):
        for s in range(nsel):
            if labels[s] >= 0 and lab[r] != labels[s]:
                continue
            for i in range(off[r], off[r + 1]):
                t = ids[i]
                if stamp[s, t] != seg[s]:
                    stamp[s, t] = seg[s]
                    types[s] += 1
                pos[s] += 1
                if pos[s] == segment:
                    out[s, seg[s]] = types[s]
                    seg[s] += 1
                    pos[s] = 0
                    types[s] = 0
    return seg


def _msttrs(off: np.ndarray, ids: np.ndarray, vocab: int, lab: np.ndarray, labels: list[int],
            segment: int = MSTTR_SEGMENT) -> list[float | None]:
    """MSTTR (x100) of the rows whose lab is each of `labels` (-1: every row), tokens in row order."""
    out = np.zeros((len(labels), len(ids) // segment + 1), dtype=np.int64)
    seg = _segment_types(ids, off, lab, np.array(labels, dtype=np.int64), vocab, segment, out)
    res: list[float | None] = []
    for s in range(len(labels)):
        n_seg = int(seg[s])
        # the previous code's very operations: len(set) / segment per segment, builtin sum in segment order
        res.append(100.0 * sum((out[s, :n_seg] / segment).tolist()) / n_seg if n_seg else None)
    return res


# ----------------------------------------------------------------------------------------------------- Jaccard
def _pair_jaccard(soff, sids, toff, tids, vocab: int) -> np.ndarray:
    """lexical.token_jaccard per row, by its own kernel over the two token streams laid end to end."""
    n = len(soff) - 1
    off = np.concatenate([soff, toff[1:] + soff[-1]]).astype(np.int64)
    ids = np.concatenate([sids, tids]).astype(np.int64)
    rows = np.arange(n, dtype=np.int64)
    return _jaccard_kernel(off, ids, rows, rows + n, max(1, vocab))


# ------------------------------------------------------------------------------------------ list-based helpers
def ngram_entropy(token_lists: Sequence[Sequence[str]], n: int) -> float | None:
    """Entropy (bits) of the distribution of n-grams over all token lists (n-grams stay inside one list)."""
    off, ids, _ = _encode_token_lists(token_lists)
    return _entropies(off, ids, np.zeros(len(token_lists), dtype=np.int8), [-1], n)[0]


def msttr(token_lists: Sequence[Sequence[str]], segment: int = MSTTR_SEGMENT) -> float | None:
    """Mean segmental type-token ratio (x100) over the concatenated tokens; None without a full segment."""
    off, ids, vocab = _encode_token_lists(token_lists)
    return _msttrs(off, ids, vocab, np.zeros(len(token_lists), dtype=np.int8), [-1], segment)[0]


# ------------------------------------------------------------------------------------------------ the operator
def _mean(series: pl.Series, scale: float) -> float | None:
    s = series.cast(pl.Float64).fill_nan(None).drop_nulls()
    if s.len() == 0:
        return None
    return float(s.mean()) * scale


@numba.njit(cache=True, nogil=True)
def _take_rows(off, ids, rows):  # pragma: no cover - compiled
    """The CSR rows `rows` of (off, ids), in that order."""
    new_off = np.zeros(len(rows) + 1, dtype=np.int64)
    for i in range(len(rows)):
        new_off[i + 1] = new_off[i] + off[rows[i] + 1] - off[rows[i]]
    out = np.empty(new_off[-1], dtype=ids.dtype)
    for i in range(len(rows)):
        out[new_off[i] : new_off[i + 1]] = ids[off[rows[i]] : off[rows[i] + 1]]
    return new_off, out


def _encode_rows(vocab: _Vocab, texts: pl.Series, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    off, ids = vocab.encode(texts)
    return (off, ids) if rows is None else _take_rows(off, ids, rows)


def _metrics(texts: pl.DataFrame, rows: np.ndarray | None, frame: pl.DataFrame, lab: np.ndarray,
             report: dict[str, int]) -> dict[str, dict]:
    """Metrics of the selections in `report` (name -> label: the rows whose lab is it; -1: every row).

    `frame` holds the per-pair score columns, `lab` a label per frame row; frame row i is the pair in row rows[i]
    of `texts` (source_id, source, paraphrase), or in row i when rows is None."""
    for col in ("source_id", "source", "paraphrase"):
        if col not in texts.columns:
            raise ValueError(f"corpus_metrics needs a {col!r} column")
    light = frame.drop("source", "paraphrase", strict=False)  # the per-selection frames never copy the texts
    out, masks, parts = {}, {}, {}
    for name, label in report.items():
        mask = None if label < 0 else lab == label
        part = light if mask is None else light.filter(pl.Series(mask))
        if part.height == 0:
            sources = 0
        elif rows is None:
            sources = (texts["source_id"] if mask is None else texts["source_id"].filter(pl.Series(mask))).n_unique()
        else:  # the distinct source ids of the selection's text rows (their order does not matter)
            chosen = np.zeros(texts.height, dtype=bool)
            chosen[rows if mask is None else rows[mask]] = True
            sources = texts["source_id"].filter(pl.Series(chosen)).n_unique()
        out[name] = {**dict.fromkeys(_METRICS), "pairs": part.height, "sources": sources,
                     "pairs_per_source": part.height / sources if sources else 0.0}
        masks[name], parts[name] = mask, part
    todo = [name for name, part in parts.items() if part.height]
    if not todo:
        return out
    labels = [report[name] for name in todo]
    vocab = _Vocab()
    off, ids = _encode_rows(vocab, texts["paraphrase"], rows)
    h2 = _entropies(off, ids, lab, labels, 2)
    h3 = _entropies(off, ids, lab, labels, 3)
    mst = _msttrs(off, ids, vocab.size, lab, labels)
    jac = None
    if "jaccard" not in light.columns:
        soff, sids = _encode_rows(vocab, texts["source"], rows)
        jac = _pair_jaccard(soff, sids, off, ids, vocab.size)
        del soff, sids
    del off, ids
    for j, name in enumerate(todo):
        part, row, mask = parts[name], out[name], masks[name]
        row["h2"], row["h3"], row["msttr"] = h2[j], h3[j], mst[j]
        if jac is None:
            row["jaccard"] = _mean(part["jaccard"], 100.0)
        else:
            row["jaccard"] = _mean(pl.Series(jac if mask is None else jac[mask]), 100.0)
        for key, (col, scale) in _MEAN_COLUMNS.items():
            if col in part.columns:
                row[key] = _mean(part[col], scale)
    return out


def corpus_metrics(df: pl.DataFrame) -> dict:
    """Method B's dataset-quality columns for a table of pairs (see the module docstring)."""
    return _metrics(df, None, df, np.zeros(df.height, dtype=np.int8), {"all": -1})["all"]


def corpus_metrics_split(df: pl.DataFrame, kept: pl.Series | Sequence[bool | None], texts: pl.DataFrame | None = None,
                         rows: pl.Series | Sequence[int] | None = None) -> dict[str, dict]:
    """`corpus_metrics` of all rows, of the kept rows and of the dropped rows, from one tokenisation.

    `kept` is aligned with `df`'s rows; a null is in neither kept nor dropped (as `df.filter(kept)` and
    `df.filter(~kept)` would have it). Returns {"all": ..., "kept": ..., "dropped": ...}.

    With `texts` (source_id, source, paraphrase), `df` holds only the per-pair score columns and row i's pair is
    row rows[i] of `texts`: scores joined to their pairs by row number, without copying the texts. Each text is
    tokenised once in `texts`' order and read in `rows`' order (which is the order MSTTR's stream follows).
    """
    kept = kept.cast(pl.Boolean) if isinstance(kept, pl.Series) else pl.Series(kept, dtype=pl.Boolean)
    if kept.len() != df.height:
        raise ValueError(f"kept has {kept.len()} values for {df.height} rows")
    lab = kept.cast(pl.Int8).fill_null(2).to_numpy().astype(np.int8)  # 0 dropped, 1 kept, 2 neither
    report = {"all": -1, "kept": 1, "dropped": 0}
    if texts is None:
        return _metrics(df, None, df, lab, report)
    if rows is None:
        raise ValueError("texts needs rows: the row of texts that holds each row's pair")
    at = pl.Series(rows).cast(pl.Int64).to_numpy()
    if len(at) != df.height or (len(at) and (at.min() < 0 or at.max() >= texts.height)):
        raise ValueError(f"rows must give a row of texts (0..{texts.height - 1}) for each of the {df.height} rows")
    return _metrics(texts, at, df, lab, report)
