"""Synthetic but realistic paraphrase corpora for the scale benchmark: N (source, paraphrase) pairs as parquet.

    .venv/bin/python bench/synthetic.py OUT.parquet --pairs 1m [--seed 0]

Deterministic for a seed (and this file's GENERATOR_VERSION). Streams to parquet in chunks of sources, so memory
stays bounded whatever N is; 1M pairs take seconds.

- Sources: English sentences of 8-30 words, capitalised, ending in punctuation, each with a past-tense verb per
  clause (so the spaCy parser does realistic work): one to three clauses joined by conjunctions ("..., and ...",
  "... because ..."), noun phrases with determiners and adjectives, prepositional phrases, adverbs. Words come
  from hand-written lists of common English nouns, verbs, adjectives and adverbs, a few thousand generated proper
  names, and the demo sources (pipelines/data/demo_sources.txt), about one in seven sources opening with one of
  its sentences. The space of sentences is huge, so unique texts grow with the corpus.
- Paraphrases: 2-5 per source (mean about 3.5), word-level rewrites of their source: synonym swaps from a small
  table, clause reordering ("A because B." -> "Because B, A."), passive voice ("X fixed the car" -> "the car was
  fixed by X"), a fronted phrase ("In the morning, ..."), a split sentence ("A, but B." -> "A. However, B."), a
  dropped adjective/adverb, an inserted adverb.
- Planted duplicates (rates below): copies of the source; exact duplicates of a recent paraphrase of another
  source; near duplicates (one word changed) of a recent paraphrase of another source and of a sibling paraphrase.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

GENERATOR_VERSION = 1
MIN_WORDS, MAX_WORDS = 8, 30
PARAPHRASES = (2, 3, 4, 5)
PARAPHRASE_WEIGHTS = (0.15, 0.35, 0.30, 0.20)  # mean 3.55
P_COPY = 0.03           # the paraphrase is the source itself
P_EXACT_ACROSS = 0.02   # an exact copy of a recent paraphrase of another source
P_NEAR_ACROSS = 0.02    # one word changed from a recent paraphrase of another source
P_NEAR_WITHIN = 0.04    # one word changed from an earlier paraphrase of the same source
RING = 2048             # recent paraphrases the planted duplicates are drawn from
CHUNK_SOURCES = 20_000  # sources per parquet row group
DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "demo_sources.txt"

NOUNS = """
actor airport album analyst apartment apple archive artist assistant athlete audience author bakery balcony bank
barn basket battery beach bicycle bird blanket boat book bottle box bridge brother budget building bus cabin
cafe camera candle captain car carpet castle cat chair chef child church cinema city classroom client clock coach
coat committee company computer concert contract cook cottage council county courier cousin crew customer
daughter dentist designer desk diary director doctor dog door drawer driver editor engineer engine envelope
factory farmer farm father festival file film firm fisherman flat forest fountain friend garage garden gate
guest guide guitar hall harbour hospital hotel house island jacket journalist judge kitchen ladder lake lamp
landlord lawyer letter library lighthouse manager map market mayor meal mechanic message meeting minister mirror
model mother mountain museum musician neighbour nephew newspaper nurse office officer orchard painter painting
palace parcel park passenger patient phone photographer piano pilot plan planet player poem poet police porch
post printer professor project publisher puppy question radio railway recipe reporter report restaurant river
road roof room sailor school scientist sculpture secretary shed ship shop singer sister soldier song station
statue street student studio suitcase supplier surgeon table teacher team telescope tenant theatre ticket tourist
tower town tractor train tram truck tunnel uncle umbrella van village violin visitor volunteer wagon wall
warehouse window witness worker writer yard
"""
VERBS = """
accepted adjusted admired approved arranged assembled attended avoided borrowed bought brought built called
carried caught changed chose cleaned closed collected completed copied covered crossed delivered described
designed discovered discussed displayed dropped emptied entered examined expected explained filled finished
fixed followed found gathered greeted guarded handled heard helped hid held hired inspected invited joined kept
left lifted liked loaded locked lost loved made mended met missed moved needed noticed opened ordered organised
packed painted passed photographed picked planned played prepared printed protected pulled pushed reached read
received recorded repaired replaced reported rescued returned sold sent shared showed signed sold started stored
studied supported tested thanked told took touched tracked translated unlocked updated used visited wanted
washed watched welcomed wrapped wrote
"""
ADJECTIVES = """
angry anxious beautiful big bitter blue bright broad broken brown busy calm careful cheap clean clever cold
comfortable cosy crowded curious damp dark deep distant dry dusty eager early easy empty enormous expensive
famous fast favourite fierce fine flat foggy fragile free fresh friendly frozen funny gentle glad golden green
grey happy hard heavy helpful honest hot huge hungry icy important kind large late lazy light little local
lonely long loud lovely lucky modern narrow nervous new noisy odd old open orange pale patient plain polite
poor popular precious proud quick quiet rare ready red rich rough round rusty sad safe shallow sharp shiny short
shy silent silver simple slow small smooth soft solid sour spare steep sticky strange strict strong sunny sweet
tall tidy tiny tired tough empty warm weak wet white wide wild wise wooden worried yellow young
"""
ADVERBS = """
anxiously boldly briefly calmly carefully cheerfully clearly closely eagerly easily finally firmly gently gladly
gracefully happily honestly immediately kindly loudly neatly nervously openly patiently politely promptly
properly proudly quickly quietly rapidly rarely readily recently regularly silently slowly smoothly softly
suddenly swiftly thoroughly warmly wisely
"""
INSERTS = "also really just quietly finally carefully already still actually quickly".split()
PREPOSITIONS = "in at near behind beside inside outside above below across through along past opposite".split()
TIMES = ["in the morning", "in the evening", "at night", "at noon", "after lunch", "before dinner", "on Monday",
         "on Friday", "at the weekend", "last week", "last year", "in the spring", "in the autumn", "in winter",
         "before sunrise", "after midnight", "during the storm", "after the meeting", "before the holidays"]
DETS = ["the", "the", "the", "a", "my", "our", "their", "his", "her", "this", "that", "every"]
SUBORDINATE = ["because", "while", "after", "before", "although", "when", "since", "until"]
COORDINATE = ["and", "and", "but", "so", "yet"]
PRONOUNS = ["she", "he", "they", "we", "I", "someone", "everyone", "nobody"]
OBJECT_PRONOUNS = {"she": "her", "he": "him", "they": "them", "we": "us", "I": "me"}
PARTICIPLES = {"chose": "chosen", "hid": "hidden", "showed": "shown", "took": "taken", "wrote": "written",
               "began": "begun"}
SPLITS = {"and": [], "but": [("however", "X"), (",", "P")], "so": [("as", "X"), ("a", "X"), ("result", "X"),
                                                                    (",", "P")], "yet": [("still", "X"), (",", "P")]}
SYNONYM_PAIRS = """
big:large small:little quick:fast angry:upset happy:glad quiet:silent tired:weary old:ancient lovely:beautiful
hard:difficult empty:vacant cheap:inexpensive famous:renowned odd:strange tidy:neat damp:wet huge:enormous
shop:store car:vehicle film:movie house:home road:street city:town child:kid doctor:physician meal:dinner
lawyer:attorney boat:ship fixed:repaired mended:patched found:discovered bought:purchased
began:started helped:assisted finished:completed chose:selected showed:displayed wanted:needed told:informed
liked:enjoyed kept:retained moved:shifted quickly:rapidly slowly:gradually quietly:silently finally:eventually
because:since while:whereas although:though carefully:cautiously gently:softly
actor:performer author:writer bicycle:bike coat:jacket company:firm factory:plant friend:companion garden:yard
guest:visitor hall:corridor hotel:inn journalist:reporter letter:note market:bazaar meeting:gathering office:bureau
painting:picture parcel:package pilot:aviator professor:lecturer student:pupil teacher:tutor truck:lorry
worker:labourer chef:cook phone:telephone arranged:organised assembled:gathered avoided:evaded brought:carried
built:constructed called:phoned changed:altered cleaned:washed copied:duplicated described:depicted
designed:created examined:inspected explained:clarified followed:tracked guarded:protected handled:managed
hired:employed lifted:raised locked:secured loved:adored noticed:spotted pushed:shoved sold:traded
supported:backed tested:checked watched:observed welcomed:greeted wrote:penned anxious:nervous bright:vivid
broad:wide busy:hectic calm:peaceful careful:cautious clean:spotless clever:smart cold:chilly comfortable:cosy
curious:inquisitive dark:dim distant:remote eager:keen easy:simple expensive:costly fierce:ferocious
friendly:amiable funny:amusing honest:truthful hungry:starving important:significant kind:generous
lonely:solitary loud:noisy lucky:fortunate modern:contemporary narrow:slim polite:courteous rare:uncommon
rich:wealthy rough:coarse sad:unhappy safe:secure shiny:glossy shy:timid slow:sluggish smooth:sleek
strong:sturdy tiny:minuscule tough:rugged warm:balmy weak:feeble wild:untamed wise:sensible worried:concerned
young:youthful anxiously:nervously boldly:bravely briefly:shortly calmly:serenely cheerfully:merrily
clearly:plainly closely:attentively eagerly:keenly easily:effortlessly firmly:solidly gladly:willingly
happily:joyfully honestly:truthfully immediately:instantly loudly:noisily neatly:tidily openly:publicly
politely:courteously promptly:punctually properly:correctly rarely:seldom recently:lately regularly:routinely
suddenly:abruptly swiftly:speedily thoroughly:completely wisely:sensibly
"""

_VOWELS = set("aeiou")
_NAME_ONSETS = "b br c d dr f g gr h j k l m n p r s st t tr v w z".split()
_NAME_VOWELS = "a e i o u ai ea io".split()
_NAME_CODAS = ["", "n", "l", "r", "s", "th", "nd", "rk", "ll", "m", "ck", "nt"]
_NAME_ENDS = ["", "a", "o", "en", "in", "ia", "on", "wick", "ford", "ton", "by", "ley", "mere", "stead"]


def _words(block: str) -> list[str]:
    return list(dict.fromkeys(block.split()))


def _names(count: int = 3000) -> list[str]:
    """Proper names (people and places) from syllables, always the same list (its own fixed seed)."""
    rng, out, seen = random.Random(1234), [], set()
    while len(out) < count:
        name = rng.choice(_NAME_ONSETS) + rng.choice(_NAME_VOWELS) + rng.choice(_NAME_CODAS)
        if rng.random() < 0.6:
            name += rng.choice(_NAME_ONSETS[:12]) + rng.choice(_NAME_VOWELS)
        name += rng.choice(_NAME_ENDS)
        if 4 <= len(name) <= 11 and name not in seen:
            seen.add(name)
            out.append(name.capitalize())
    return out


def _demo_clauses() -> list[list[tuple[str, str]]]:
    """Demo sentences ending in a plain full stop, as a first clause (their own capitals kept)."""
    out = []
    for line in DEMO.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        words = line[:-1].split()
        if not line.endswith(".") or not words or "." in words[-1] or len(words) > MAX_WORDS - 4:
            continue
        out.append([(w, "X") for w in words])
    return out


class Vocabulary:
    """Word lists by part of speech, the synonym table and the demo clauses (built once per process)."""

    def __init__(self) -> None:
        self.nouns = _words(NOUNS)
        self.verbs = _words(VERBS)
        self.adjectives = _words(ADJECTIVES)
        self.adverbs = _words(ADVERBS)
        self.names = _names()
        self.demo = _demo_clauses()
        self.synonyms: dict[str, str] = {}
        for pair in SYNONYM_PAIRS.split():
            a, b = pair.split(":")
            self.synonyms.setdefault(a, b)
            self.synonyms.setdefault(b, a)
        # both words of every synonym pair are in the lists, so swaps happen as often as the words occur
        for word, tag in ((w, t) for w in self.synonyms for t in ("N", "V", "A", "R") if self._has(t, w)):
            self._add(tag, self.synonyms[word])
        self.by_tag = {"N": self.nouns, "V": self.verbs, "A": self.adjectives, "R": self.adverbs,
                       "M": self.names}

    def _list(self, tag: str) -> list[str]:
        return {"N": self.nouns, "V": self.verbs, "A": self.adjectives, "R": self.adverbs}[tag]

    def _has(self, tag: str, word: str) -> bool:
        return word in self._list(tag)

    def _add(self, tag: str, word: str) -> None:
        if word not in self._list(tag):
            self._list(tag).append(word)

    def size(self) -> int:
        words = set(self.nouns + self.verbs + self.adjectives + self.adverbs + self.names)
        words |= {w.lower() for clause in self.demo for w, _ in clause}
        return len(words)


Token = tuple[str, str]  # (word, tag): N noun, V verb, A adjective, R adverb, M name, D determiner, X other,
#                          C conjunction, P punctuation attached to the previous word
Clause = tuple[list[Token], list[Token], list[Token], list[Token], list[Token], list[Token]]
Source = tuple[list[Clause], list[list[Token]], bool, str]


def _flat(clause: Clause) -> list[Token]:
    return [t for part in clause for t in part]


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.v = _VOCAB
        self.ring: list[tuple[list[Token], str, int]] = []
        self.ring_pos = 0

    # ---- sources
    def _np(self) -> list[Token]:
        r, v = self.rng.random(), self.v
        if r < 0.18:
            return [(self.rng.choice(v.names), "M")]
        det = self.rng.choice(DETS)
        adj = [(self.rng.choice(v.adjectives), "A")] if self.rng.random() < 0.55 else []
        noun = (self.rng.choice(v.nouns), "N")
        toks: list[Token] = [(det, "D"), *adj, noun]
        if self.rng.random() < 0.1:
            toks += [("of", "X"), (self.rng.choice(v.names), "M")]
        return toks

    def _pp(self) -> list[Token]:
        if self.rng.random() < 0.35:
            return [(w, "X") for w in self.rng.choice(TIMES).split()]
        det = self.rng.choice(("the", "the", "a", "our", "their"))
        noun = self.rng.choice(self.v.nouns)
        return [(self.rng.choice(PREPOSITIONS), "X"), (det, "D"), (noun, "N")]

    def _clause(self, subject_pronoun: bool) -> Clause:
        """(subject, adverb before the verb, verb, object, prepositional phrase, adverb after)."""
        rng, v = self.rng, self.v
        subj = [(rng.choice(PRONOUNS), "X")] if subject_pronoun and rng.random() < 0.4 else self._np()
        pre = [(rng.choice(v.adverbs), "R")] if rng.random() < 0.2 else []
        verb = [(rng.choice(v.verbs), "V")]
        obj = self._np()
        pp = self._pp() if rng.random() < 0.6 else []
        post = [(rng.choice(v.adverbs), "R")] if rng.random() < 0.2 else []
        return subj, pre, verb, obj, pp, post

    def source(self) -> Source:
        """(clauses, connectors between them, reorderable, final punctuation), 8-30 words."""
        rng = self.rng
        while True:
            demo = rng.random() < 0.14
            first: Clause = (list(rng.choice(self.v.demo)), [], [], [], [], []) if demo else self._clause(False)
            clauses = [first]
            n = max(rng.choices((1, 2, 3), (0.35, 0.45, 0.2))[0], 2 if demo else 1)  # a demo line gets a clause
            conns: list[list[Token]] = []
            words = _count(_flat(first))
            while len(clauses) < n or words < MIN_WORDS:
                if rng.random() < 0.5:
                    conn = [(",", "P"), (rng.choice(COORDINATE), "C")]
                else:
                    conn = [(rng.choice(SUBORDINATE), "C")]
                clause = self._clause(True)
                conns.append(conn)
                clauses.append(clause)
                words += 1 + _count(_flat(clause))
            if words <= MAX_WORDS:
                return clauses, conns, not demo, "!" if rng.random() < 0.03 else "."

    # ---- paraphrases
    def _passive(self, cl: Clause) -> Clause:
        """"X repaired the car" -> "the car was repaired by X" (objects are singular)."""
        subj, pre, verb, obj, pp, post = cl
        by = [(OBJECT_PRONOUNS.get(w, w), t) for w, t in subj]
        participle = [(PARTICIPLES.get(w, w), t) for w, t in verb]
        return obj, [("was", "X"), *pre], participle, [("by", "X"), *by], pp, post

    def _flatten(self, clauses: list[Clause], conns, reorder: bool = False, split: bool = False) -> list[Token]:
        flat = [_flat(c) for c in clauses]
        if reorder and len(flat) >= 2:
            c0, c1 = flat[0], flat[1]
            tail = [t for c, k in zip(conns[1:], flat[2:], strict=True) for t in (*c, *k)]
            word = conns[0][-1][0]
            if word in SUBORDINATE:  # "A because B, C" -> "Because B, A, C"
                return [(word, "C"), *c1, (",", "P"), *c0, *tail]
            if word == "and":  # "A, and B" -> "B, and A"
                return [*c1, (",", "P"), ("and", "C"), *c0, *tail]
        out = list(flat[0])
        for conn, clause in zip(conns, flat[1:], strict=True):
            word = conn[-1][0]
            if split and word in SPLITS:  # "A, but B" -> "A. However, B"
                out += [(".", "P"), *SPLITS[word], *clause]
            else:
                out += conn + clause
        return out

    def _rewrite(self, src: Source) -> list[Token]:
        rng, syn = self.rng, self.v.synonyms
        clauses, conns, reorderable, _ = src
        base = self._flatten(clauses, conns)
        if reorderable:
            clauses = [self._passive(c) if c[2] and rng.random() < 0.3 else c for c in clauses]
            if clauses[0][4] and rng.random() < 0.2:  # "In the morning, X ..."
                subj, pre, verb, obj, pp, post = clauses[0]
                clauses = [(pp + [(",", "P")] + subj, pre, verb, obj, [], post), *clauses[1:]]
        reorder = reorderable and len(clauses) >= 2 and rng.random() < 0.35
        split = not reorder and rng.random() < 0.25
        toks = self._flatten(clauses, conns, reorder, split)
        swap_p = rng.choice((0.3, 0.6, 1.0))
        toks = [(syn[w], t) if t != "P" and w in syn and rng.random() < swap_p else (w, t) for w, t in toks]
        plain = toks
        if rng.random() < 0.3:
            droppable = [i for i, (_, t) in enumerate(toks) if t in "AR"]
            if droppable:
                i = rng.choice(droppable)
                toks = toks[:i] + toks[i + 1:]
        if rng.random() < 0.35:
            verbs = [i for i, (_, t) in enumerate(toks) if t == "V"]
            if verbs:
                i = rng.choice(verbs)
                i -= toks[i - 1][1] == "R" if i else 0  # before an adverb already there
                toks = [*toks[:i], (rng.choice(INSERTS), "R"), *toks[i:]]
        if not MIN_WORDS <= _count(toks) <= MAX_WORDS:
            toks = plain if MIN_WORDS <= _count(plain) <= MAX_WORDS else base
        if toks == base:
            toks = self._one_word(base)
        return toks

    def _one_word(self, toks: list[Token]) -> list[Token]:
        """The same tokens with one content word replaced by another word of its kind (a near duplicate)."""
        rng = self.rng
        slots = [i for i, (_, t) in enumerate(toks) if t in "NVARM"]
        if not slots:
            return toks + []
        i = rng.choice(slots)
        word, tag = toks[i]
        pool = self.v.by_tag[tag]
        new = word
        while new == word:
            new = rng.choice(pool)
        return [*toks[:i], (new, tag), *toks[i + 1:]]

    def _from_ring(self, source_no: int) -> tuple[list[Token], str] | None:
        for _ in range(4):
            if not self.ring:
                return None
            toks, punct, owner = self.ring[self.rng.randrange(len(self.ring))]
            if owner != source_no:
                return toks, punct
        return None

    def _remember(self, toks: list[Token], punct: str, source_no: int) -> None:
        if len(self.ring) < RING:
            self.ring.append((toks, punct, source_no))
        else:
            self.ring[self.ring_pos] = (toks, punct, source_no)
            self.ring_pos = (self.ring_pos + 1) % RING

    def paraphrases(self, src, k: int, source_no: int) -> list[str]:
        rng = self.rng
        punct = src[3]
        src_toks = self._flatten(src[0], src[1])
        made: list[tuple[list[Token], str]] = []
        for _ in range(k):
            u = rng.random()
            toks, p = None, punct
            if u < P_COPY:
                toks = src_toks
            elif u < P_COPY + P_EXACT_ACROSS:
                hit = self._from_ring(source_no)
                if hit:
                    toks, p = hit
            elif u < P_COPY + P_EXACT_ACROSS + P_NEAR_ACROSS:
                hit = self._from_ring(source_no)
                if hit:
                    toks, p = self._one_word(hit[0]), hit[1]
            elif u < P_COPY + P_EXACT_ACROSS + P_NEAR_ACROSS + P_NEAR_WITHIN and made:
                sib, p = made[rng.randrange(len(made))]
                toks = self._one_word(sib)
            if toks is None:
                toks = self._rewrite(src)
                self._remember(toks, punct, source_no)
            made.append((toks, p))
        return [render(t, p) for t, p in made]


def _count(toks: list[Token]) -> int:
    return sum(1 for _, t in toks if t != "P")


def render(toks: list[Token], punct: str) -> str:
    words: list[str] = []
    cap = True
    for k, (w, t) in enumerate(toks):
        if t == "D" and w in ("a", "an") and k + 1 < len(toks):  # a/an after a synonym swap or a drop
            w = "an" if toks[k + 1][0][:1] in _VOWELS else "a"
        if t == "P" and words:
            words[-1] += w
            cap = w == "."
            continue
        if cap:
            w, cap = w[:1].upper() + w[1:], False
        words.append(w)
    words[-1] += punct
    return " ".join(words)


_VOCAB = Vocabulary()


def _counts(rng: random.Random, n_pairs: int) -> Iterator[int]:
    """Paraphrases per source (2-5) adding up to exactly n_pairs (n_pairs >= 2)."""
    left = n_pairs
    while left:
        k = rng.choices(PARAPHRASES, PARAPHRASE_WEIGHTS)[0]
        if k > left:
            k = left
        elif left - k == 1:  # never leave a single pair for the last source
            k = k + 1 if k < max(PARAPHRASES) else k - 1
        left -= k
        yield k


def iter_chunks(n_pairs: int, seed: int = 0, chunk_sources: int = CHUNK_SOURCES
                ) -> Iterator[tuple[list[str], list[str]]]:
    """(sources, paraphrases) columns, one chunk of about `chunk_sources` sources at a time."""
    if n_pairs < 2:
        raise ValueError("a synthetic corpus needs at least 2 pairs (2-5 paraphrases per source)")
    gen = _Generator(seed)
    count_rng = random.Random(seed * 7919 + 17)
    srcs: list[str] = []
    paras: list[str] = []
    for no, k in enumerate(_counts(count_rng, n_pairs)):
        src = gen.source()
        text = render(gen._flatten(src[0], src[1]), src[3])
        srcs += [text] * k
        paras += gen.paraphrases(src, k, no)
        if (no + 1) % chunk_sources == 0:
            yield srcs, paras
            srcs, paras = [], []
    if srcs:
        yield srcs, paras


def generate(path: str | Path, n_pairs: int, seed: int = 0) -> dict:
    """Write the corpus to `path` (parquet, columns source and paraphrase), chunk by chunk; returns counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    schema = pa.schema([("source", pa.string()), ("paraphrase", pa.string())])
    rows = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for srcs, paras in iter_chunks(n_pairs, seed):
            writer.write_table(pa.table({"source": srcs, "paraphrase": paras}, schema=schema))
            rows += len(srcs)
    tmp.replace(path)
    return {"path": str(path), "pairs": rows, "seed": seed, "version": GENERATOR_VERSION,
            "seconds": round(time.perf_counter() - t0, 3)}


def unique_texts(n_texts: int, seed: int = 0) -> list[str]:
    """The first `n_texts` distinct texts (sources and paraphrases, in order of appearance) of a corpus."""
    seen: dict[str, None] = {}
    for srcs, paras in iter_chunks(max(2, n_texts * 2), seed, chunk_sources=2000):
        last = None
        for s, p in zip(srcs, paras, strict=True):
            if s != last:
                seen.setdefault(s)
                last = s
            seen.setdefault(p)
        if len(seen) >= n_texts:
            break
    return list(seen)[:n_texts]


def parse_count(text: str) -> int:
    """'100k' -> 100000, '1m' -> 1000000, '2500' -> 2500."""
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 2000, 100k, 1m)") from None
    if value < 2 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole count of at least 2")
    return int(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the parquet file to write")
    ap.add_argument("--pairs", type=parse_count, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    stats = generate(args.out, args.pairs, args.seed)
    print(f"{stats['pairs']} pairs -> {stats['path']} in {stats['seconds']:.1f} s (vocabulary "
          f"{_VOCAB.size()} words)", file=sys.stderr)


if __name__ == "__main__":
    main()
