"""Offline tiktoken encodings (built from quicktok's vocabularies), chat prompt token estimates, teacher prices."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import quicktok
import tiktoken
import tiktoken.load
import tiktoken.registry
import tiktoken_ext.openai_public as openai_public

from curation.teachers import costs, tokens
from curation.teachers.costs import Price, cost_usd, load_prices
from schemas.errors import RecipeError

ENCODINGS = ("o200k_base", "cl100k_base")


class _Captured(Exception):
    """Raised by the stand-in loader once it has seen what tiktoken would download."""


def _tiktoken_blob(encoding: str) -> tuple[str, str]:
    """(URL, sha256) that tiktoken's own constructor asks load_tiktoken_bpe for, captured without downloading."""
    seen: dict[str, str] = {}

    def capture(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.update(url=url, sha256=expected_hash or "")
        raise _Captured

    mp = pytest.MonkeyPatch()
    mp.setattr(openai_public, "load_tiktoken_bpe", capture)
    try:
        with pytest.raises(_Captured):
            openai_public.ENCODING_CONSTRUCTORS[encoding]()
    finally:
        mp.undo()
    return seen["url"], seen["sha256"]


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """An empty tiktoken cache in tmp_path, no encodings loaded yet, and any download attempt failing."""
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_network(blobpath: str) -> bytes:  # what requests raises offline is an OSError too
        raise ConnectionError(f"test is offline: tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    tokens.clear_caches()
    yield cache
    tokens.clear_caches()


# ------------------------------------------------------------------------------------------------ offline vocab


@pytest.mark.parametrize("name", ENCODINGS)
def test_offline_file_is_tiktokens_own_file(offline, name):
    assert not offline.exists()
    url, sha256 = _tiktoken_blob(name)
    enc = tokens.get_encoding(name)
    assert enc.name == name
    path = tokens.cache_path_for(name)
    assert path is not None and path.parent == offline
    assert path.name == hashlib.sha1(url.encode()).hexdigest()  # tiktoken's cache key
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256  # byte-exact conversion
    assert not list(offline.glob("*.tmp"))


def test_unmodified_tiktoken_works_offline_after_ensure(offline):
    for name in ENCODINGS:
        assert tokens.ensure_offline(name) is not None
    assert tiktoken.encoding_for_model("gpt-4o").name == "o200k_base"
    assert tiktoken.get_encoding("cl100k_base").name == "cl100k_base"
    assert tiktoken.get_encoding("o200k_harmony").encode_ordinary("hi there") == \
        tiktoken.get_encoding("o200k_base").encode_ordinary("hi there")


def test_corrupt_cache_file_is_rewritten(offline):
    path = tokens.cache_path_for("o200k_base")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a vocabulary\n")
    assert tokens.ensure_offline("o200k_base") == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == _tiktoken_blob("o200k_base")[1]
    mtime = path.stat().st_mtime_ns
    tokens.ensure_offline("o200k_base")  # already right: left alone
    assert path.stat().st_mtime_ns == mtime


def test_default_cache_dir_mirrors_tiktoken(monkeypatch, tmp_path):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "gym"))
    assert tokens.tiktoken_cache_dir() == str(tmp_path / "gym")
    monkeypatch.delenv("DATA_GYM_CACHE_DIR")
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    assert tokens.tiktoken_cache_dir() == str(tmp_path / "data-gym-cache")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tokens.tiktoken_cache_dir() is None and tokens.ensure_offline("o200k_base") is None


def test_unknown_encoding_is_a_recipe_error(offline):
    with pytest.raises(RecipeError, match="r50k_base.*test is offline"):
        tokens.get_encoding("r50k_base")
    with pytest.raises(RecipeError, match="no offline vocabulary"):
        tokens.cache_path_for("p50k_base")


def _varied_strings(n: int = 200) -> list[str]:
    """Strings that stress pre-tokenisation: unicode scripts, digit runs, whitespace runs, contractions, specials."""
    fixed = [
        "", " ", "  ", "\n", "\n\n\n", "\t\t x", "   leading", "trailing   ", "a\r\nb", "hello world",
        "Hello, World!", "I'm sure they'll say we'd've DONE IT'S fine", "1234567890", "3.14159 2,718 1e-9 0x1F",
        "<|endoftext|>", "text <|endoftext|> more", "<|endofprompt|><|fim_prefix|>", "naïve café résumé",
        "Ünïcödé ÅNGSTRÖM", "日本語のテキストです。", "中文文本，包含标点。", "한국어 문장입니다", "Привет, мир!",
        "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "🙂🚀👩‍👩‍👧 emoji", "ﬁ ligature", "tab\tseparated\tvalues",
        "CamelCaseIdentifierName snake_case_name", "http://example.com/a/b?c=d&e=f", "e-mail@example.org",
        "{\"json\": [1, 2, 3], \"key\": null}", "def f(x):\n    return x ** 2\n", "    \n    \n", "x" * 300,
        "a" + " " * 50 + "b", "1" * 40, "Mr. O'Neil's 2nd-floor apartment (No. 42)", "¿Qué tal? ¡Bien!",
    ]
    rng = random.Random(1234)
    alphabet = ("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"-()[]{} \n\t"
                "éèçàüößøåñ 日本中文한국 ДЖЯ ω∑∂ 🙂🚀 ")
    while len(fixed) < n:
        fixed.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))))
    return fixed


@pytest.mark.parametrize("name", ENCODINGS)
def test_tiktoken_matches_quicktok(offline, name):
    """Two independent BPE implementations over the same vocabulary agree token for token."""
    enc = tokens.get_encoding(name)
    reference = quicktok.get_encoding(name)
    texts = _varied_strings()
    assert len(texts) >= 200
    for text in texts:
        assert enc.encode_ordinary(text) == list(reference.encode_ordinary(text)), text
    assert enc.encode_ordinary("hello world") == list(reference.encode("hello world"))


# ------------------------------------------------------------------------------------------------- token counts


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"), ("chatgpt-4o-latest", "o200k_base"),
    ("gpt-4.1-nano", "o200k_base"), ("gpt-4.5-preview", "o200k_base"), ("gpt-5", "o200k_base"),
    ("gpt-5-mini", "o200k_base"), ("o1", "o200k_base"), ("o3-mini", "o200k_base"), ("o4-mini", "o200k_base"),
    ("openai/gpt-4o", "o200k_base"), ("azure/gpt-4.1", "o200k_base"), ("gpt-oss:20b", "o200k_base"),
    ("gpt-oss-120b", "o200k_base"), ("gpt-4", "cl100k_base"), ("gpt-4-turbo", "cl100k_base"),
    ("gpt-3.5-turbo-0125", "cl100k_base"), ("text-embedding-3-small", "cl100k_base"),
    ("meta-llama/Llama-3.1-8B-Instruct", "cl100k_base"), ("llama3.2:3b", "cl100k_base"),
    ("davinci", "cl100k_base"), ("", "cl100k_base"),
])
def test_encoding_name_for(model, expected):
    assert tokens.encoding_name_for(model) == expected


def test_chat_estimate_is_openais_documented_count(offline):
    enc = tokens.get_encoding("o200k_base")
    messages = [
        {"role": "system", "content": "You paraphrase sentences."},
        {"role": "user", "content": "Say it <|endoftext|> differently: 42 cats.", "name": "alice"},
    ]
    n = lambda s: len(enc.encode_ordinary(s))  # noqa: E731
    expected = (3 + n("system") + n("You paraphrase sentences.")
                + 3 + n("user") + n("Say it <|endoftext|> differently: 42 cats.") + n("alice") + 1
                + 3)
    assert tokens.estimate_chat_prompt_tokens(messages, "gpt-4o") == expected
    without_name = [messages[0], {"role": "user", "content": messages[1]["content"]}]
    assert tokens.estimate_chat_prompt_tokens(without_name, "gpt-4o") == expected - n("alice") - 1
    assert tokens.count_text("a <|endoftext|> b", "gpt-4o") == n("a <|endoftext|> b")
    assert tokens.estimate_chat_prompt_tokens([], "gpt-4o") == 3


def test_content_parts_and_unknown_models(offline):
    cl = tokens.get_encoding("cl100k_base")
    parts = [{"role": "user", "content": [{"type": "text", "text": "first part"},
                                          {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                                          {"type": "text", "text": "second"}]}]
    expected = 3 + len(cl.encode_ordinary("user")) + len(cl.encode_ordinary("first part")) \
        + len(cl.encode_ordinary("second")) + 3
    assert tokens.estimate_chat_prompt_tokens(parts, "my-local-model") == expected  # cl100k approximation
    with pytest.raises(RecipeError, match="chat message 1"):
        tokens.estimate_chat_prompt_tokens([{"role": "user", "content": "x"}, "not a message"], "gpt-4o")


def test_estimate_many_encodes_each_distinct_string_once(offline, monkeypatch):
    enc = tokens.get_encoding("o200k_base")
    calls: list[str] = []
    real = enc.encode_ordinary

    def counting(text: str) -> list[int]:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(enc, "encode_ordinary", counting)
    shots = [{"role": "system", "content": "Rewrite the sentence."},
             {"role": "user", "content": "The cat sat."}, {"role": "assistant", "content": "A cat was sitting."}]
    requests = [[*shots, {"role": "user", "content": f"Sentence {'very ' * (i % 7)}number {i} to rewrite."}]
                for i in range(50)]
    many = tokens.estimate_many(requests, "gpt-4o")
    distinct = {"system", "user", "assistant", "Rewrite the sentence.", "The cat sat.", "A cat was sitting.",
                *(r[-1]["content"] for r in requests)}
    assert sorted(calls) == sorted(distinct)
    calls.clear()
    assert tokens.estimate_many(iter(requests), "gpt-4o-mini") == many  # same encoding: all from the cache
    assert calls == []
    assert many == [tokens.estimate_chat_prompt_tokens(r, "gpt-4o") for r in requests]
    assert len(set(many)) > 1


# -------------------------------------------------------------------------------------------------------- prices


def test_shipped_prices_cover_the_teachers():
    table = load_prices()
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-3.5-turbo",
                  "o4-mini", "o3-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"):
        price = table.price_for(model)
        assert price is not None and price.input_per_m > 0 and price.output_per_m >= price.input_per_m, model
    assert table.batch_discount == 0.5 and table.as_of and table.source


def test_price_lookup_by_longest_prefix():
    table = load_prices()
    assert table.price_for("gpt-4o-mini-2024-07-18") == table.price_for("gpt-4o-mini")
    assert table.price_for("gpt-4o-mini-2024-07-18") != table.price_for("gpt-4o")
    assert table.price_for("gpt-4o-2024-08-06") == table.price_for("gpt-4o")
    assert table.price_for("openai/gpt-4.1-nano") == table.price_for("gpt-4.1-nano")
    assert table.price_for("GPT-4o") == table.price_for("gpt-4o")
    for unknown in ("llama3.2:3b", "meta-llama/Llama-3.1-8B", "gpt-4o1", "smollm2"):
        assert table.price_for(unknown) is None, unknown
        assert table.cost(unknown, 1000, 100) is None


def test_override_file_then_inline(tmp_path):
    override = tmp_path / "my-prices.yaml"
    override.write_text("as_of: 2031-01-01\nbatch_discount: 0.25\nmodels:\n"
                        "  gpt-4o: {input: 1.0, output: 2.0}\n  my-vllm-model: {input: 0.01, output: 0.02}\n")
    table = load_prices(override)
    assert table.price_for("gpt-4o") == Price(1.0, 2.0, None)  # replaced whole: no stale cached price
    assert table.price_for("my-vllm-model") == Price(0.01, 0.02, None)
    assert table.price_for("gpt-4o-mini") == load_prices().price_for("gpt-4o-mini")  # untouched
    assert table.batch_discount == 0.25 and table.as_of == "2031-01-01"
    both = load_prices(override, inline={"gpt-4o": {"input": 3.0, "output": 4.0, "cached_input": 1.5}})
    assert both.price_for("gpt-4o") == Price(3.0, 4.0, 1.5)
    assert both.price_for("my-vllm-model") == Price(0.01, 0.02, None)
    assert both.layers[1:] == (str(override), "recipe prices")
    assert len({load_prices().fingerprint(), table.fingerprint(), both.fingerprint()}) == 3
    assert load_prices().fingerprint() == load_prices().fingerprint()


@pytest.mark.parametrize(("text", "field"), [
    ("models:\n  gpt-4o: {input: cheap, output: 2}\n", "models.gpt-4o.input"),
    ("models:\n  gpt-4o: {input: 1}\n", "models.gpt-4o.output"),
    ("models:\n  gpt-4o: {input: 1, output: -2}\n", "models.gpt-4o.output"),
    ("models:\n  gpt-4o: {input: 1, output: 2, cache: 0.5}\n", "models.gpt-4o.cache"),
    ("models:\n  gpt-4o: 2.5\n", "models.gpt-4o"),
    ("batch_discount: 2\n", "batch_discount"),
    ("gpt-4o: {input: 1, output: 2}\n", "gpt-4o"),
    ("- gpt-4o\n", "mapping"),
    ("models: {gpt-4o: [1, 2\n", "line"),
])
def test_bad_override_names_file_and_field(tmp_path, text, field):
    bad = tmp_path / "bad-prices.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_prices(bad)
    message = str(err.value)
    assert str(bad) in message and field in message and "\n" not in message


def test_missing_override_and_bad_inline(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_prices(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match=r"recipe prices: gpt-4o\.output"):
        load_prices(inline={"gpt-4o": {"input": 1}})


def test_costs_with_cache_and_batch():
    price = Price(input_per_m=2.0, output_per_m=8.0, cached_input_per_m=0.5)
    assert cost_usd(price, 1_000_000, 0) == pytest.approx(2.0)
    assert cost_usd(price, 1_000_000, 500_000, cached_tokens=400_000) == pytest.approx(1.2 + 0.2 + 4.0)
    assert cost_usd(Price(2.0, 8.0), 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(2.0)
    full = cost_usd(price, 12_345, 678)
    assert cost_usd(price, 12_345, 678, batch=True) == pytest.approx(full / 2)
    table = load_prices()
    assert table.cost("gpt-4o-mini", 10_000, 2_000, batch=True) == pytest.approx(
        table.cost("gpt-4o-mini", 10_000, 2_000) / 2)
    with pytest.raises(ValueError):
        cost_usd(price, 10, 0, cached_tokens=11)


def test_shipped_table_is_package_data():
    assert (Path(costs.__file__).parent / costs.SHIPPED_PRICES).is_file()
