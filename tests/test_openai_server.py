"""The fake OpenAI server (tests/openai_server.py), driven through the real `openai` client over 127.0.0.1."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import quicktok

from curation.parsing import parse_paraphrases
from tests.openai_server import FakeOpenAI, count_prompt_tokens, go_duration

MODEL = "gpt-4o-mini"
PROMPT = ("Write 3 different paraphrases of this sentence, each changing the wording and structure but keeping the "
          "meaning. Show them as a numbered list.\nThe meeting was postponed because the manager was ill.")
MESSAGES = [{"role": "system", "content": "You rewrite sentences."}, {"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def srv() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(batch_delay_s=0.05) as server:
        yield server


@pytest.fixture()
def client(srv: FakeOpenAI) -> Iterator[openai.OpenAI]:
    srv.set_faults({})
    with _client(srv.url) as c:
        yield c
    srv.set_faults({})


def _client(url: str, api_key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=5)


def _chat(client: openai.OpenAI, **kw):
    return client.chat.completions.create(model=kw.pop("model", MODEL), messages=kw.pop("messages", MESSAGES), **kw)


# --- chat completions ---------------------------------------------------------------------------------------------

def test_round_trip_content_usage_headers_and_log(client, srv):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, extra_headers={"X-Client-Request-Id": "cid-1"})
    resp = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    for kind in ("requests", "tokens"):
        assert int(raw.headers[f"x-ratelimit-limit-{kind}"]) > int(raw.headers[f"x-ratelimit-remaining-{kind}"]) > 0
        assert raw.headers[f"x-ratelimit-reset-{kind}"].endswith("s")
    assert resp.object == "chat.completion" and resp.model == MODEL
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant" and choice.message.refusal is None
    items, error = parse_paraphrases(choice.message.content, "list")
    assert error is None and len(items) == 3, choice.message.content
    assert all("meeting" in it.lower() or "gathering" in it.lower() for it in items)
    u = resp.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    entry = srv.log[-1]
    assert entry["client_request_id"] == "cid-1" and entry["status"] == 200 and entry["fault"] is None
    assert entry["prompt_tokens"] == u.prompt_tokens and len(entry["body_hash"]) == 64


def test_prompt_tokens_follow_chatml_counting(client):
    # <|im_start|> user <sep> hello <|im_end|> = 5, plus 3 for the assistant priming (what the API reports).
    assert _chat(client, messages=[{"role": "user", "content": "hello"}]).usage.prompt_tokens == 8
    named = [{"role": "user", "content": "hello", "name": "bob"}]
    assert _chat(client, messages=named).usage.prompt_tokens == 10
    # cl100k for older models, o200k for the 4o family: a text where the two encodings disagree
    text = [{"role": "user", "content": "Ünïcödé tëxt: 東京都の天気は晴れです"}]
    assert count_prompt_tokens(text, "gpt-4") != count_prompt_tokens(text, "gpt-4o")
    assert _chat(client, model="gpt-4", messages=text).usage.prompt_tokens == count_prompt_tokens(text, "gpt-4")


def test_same_request_same_answer_and_n_choices_differ(client):
    a, b = _chat(client, temperature=1.0, seed=7), _chat(client, temperature=1.0, seed=7)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id
    assert _chat(client, temperature=1.0, seed=8).choices[0].message.content != a.choices[0].message.content
    single = [{"role": "user", "content": "Rewrite this sentence:\nI think the big car is really fast."}]
    resp = _chat(client, messages=single, n=3)
    contents = [c.message.content for c in resp.choices]
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len(set(contents)) == 3 and all("\n" not in c for c in contents), contents
    enc = quicktok.get_encoding("o200k_base")
    assert resp.usage.completion_tokens == sum(len(enc.encode(c)) for c in contents)
    assert _chat(client, messages=single, n=3).choices[2].message.content == contents[2]


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema", "json_schema": {"name": "paraphrases", "strict": True, "schema": {
        "type": "object", "properties": {"paraphrases": {"type": "array", "items": {"type": "string"}}},
        "required": ["paraphrases"], "additionalProperties": False}}},
    {"type": "json_object"},
])
def test_structured_output(client, srv, fmt):
    content = _chat(client, response_format=fmt).choices[0].message.content
    items = json.loads(content)["paraphrases"]
    assert len(items) == 3 and len(set(items)) == 3
    srv.structured_output = False
    try:
        with pytest.raises(openai.BadRequestError) as exc:
            _chat(client, response_format=fmt)
    finally:
        srv.structured_output = True
    assert exc.value.body["param"] == "response_format"
    assert exc.value.body["message"] == f"response_format {fmt['type']} is not supported"


def test_max_tokens_truncates_with_finish_reason_length(client):
    full = _chat(client)
    cut = _chat(client, max_tokens=5)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 5
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    assert _chat(client, max_completion_tokens=500).choices[0].finish_reason == "stop"


def test_invalid_requests_get_openai_errors(client, srv):
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, messages=[])
    assert exc.value.body["param"] == "messages"
    req = urllib.request.Request(f"{srv.url}/no/such/route", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=5)
    assert http.value.code == 404
    assert json.loads(http.value.read())["error"]["message"] == "Invalid URL (POST /v1/no/such/route)"


# --- faults -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault, error", [("429", openai.RateLimitError), ("500", openai.InternalServerError),
                                          ("503", openai.InternalServerError),
                                          ("disconnect", openai.APIConnectionError)])
def test_error_faults(client, srv, fault, error):
    srv.set_faults({fault: 1.0})
    with pytest.raises(error) as exc:
        _chat(client)
    assert srv.log[-1]["fault"] == fault
    if fault == "disconnect":
        assert srv.log[-1]["status"] == 0
        return
    assert exc.value.status_code == int(fault) == srv.log[-1]["status"]
    assert exc.value.body["message"]
    if fault == "429":
        assert exc.value.response.headers["retry-after"] == "0.05"
        assert exc.value.response.headers["retry-after-ms"] == "50"
        assert exc.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert exc.value.code == "rate_limit_exceeded"


def test_malformed_fault(client, srv):
    srv.set_faults({"malformed": 1.0})
    with pytest.raises((openai.APIError, json.JSONDecodeError)):
        _chat(client)
    assert srv.log[-1]["fault"] == "malformed" and srv.log[-1]["status"] == 200


def test_refusal_and_length_faults(client, srv):
    full = _chat(client).choices[0].message.content
    srv.set_faults({"refusal": 1.0})
    msg = _chat(client).choices[0]
    assert msg.message.content is None and msg.message.refusal == "I can't help with that."
    assert msg.finish_reason == "stop"
    srv.set_faults({"length": 1.0})
    cut = _chat(client).choices[0]
    assert cut.finish_reason == "length" and 0 < len(cut.message.content) < len(full)
    assert full.startswith(cut.message.content)


def test_timeout_fault(client, srv):
    srv.set_faults({"timeout": 1.0})
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _chat(client, timeout=0.5)
    assert time.monotonic() - t0 < 5
    srv.set_faults({})
    assert _chat(client).choices[0].message.content  # the server is still fine
    assert [e["fault"] for e in srv.log[-2:]] == ["timeout", None]


def test_fault_draws_are_seeded():
    def statuses(seed: int) -> list[int]:
        with FakeOpenAI(faults={"500": 0.3, "503": 0.2}, seed=seed) as s, _client(s.url) as c:
            for _ in range(30):
                try:
                    _chat(c, max_tokens=1)
                except openai.InternalServerError:
                    pass
            return [e["status"] for e in s.log]

    first = statuses(1)
    assert first == statuses(1) and first != statuses(2)
    assert {200, 500, 503} <= set(first)


# --- rate limits and auth -----------------------------------------------------------------------------------------

def test_rate_limit_rpm():
    with FakeOpenAI(rate_limit={"rpm": 5, "tpm": 100_000}) as s, _client(s.url) as c:
        remaining = []
        for _ in range(5):
            raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
            assert raw.headers["x-ratelimit-limit-requests"] == "5"
        assert remaining == [4, 3, 2, 1, 0]
        assert 55 < _seconds(raw.headers["x-ratelimit-reset-requests"]) <= 60  # a full bucket takes 60 s
        with pytest.raises(openai.RateLimitError) as exc:
            _chat(c)
        headers = exc.value.response.headers
        assert 0 < float(headers["retry-after"]) <= 12 and int(headers["retry-after-ms"]) > 0
        assert exc.value.body["type"] == "requests" and exc.value.code == "rate_limit_exceeded"
        assert [e["status"] for e in s.log] == [200] * 5 + [429]


def test_rate_limit_tpm():
    with FakeOpenAI(rate_limit={"tpm": 100}) as s, _client(s.url) as c:
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=40)
        used = raw.parse().usage.prompt_tokens + 40
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 100 - used
        with pytest.raises(openai.RateLimitError) as exc:
            _chat(c, max_tokens=40)
        assert exc.value.body["type"] == "tokens"


def _seconds(duration: str) -> float:
    """Parse a Go duration ("1m0s", "250ms") back to seconds."""
    total, num = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    i = 0
    while i < len(duration):
        ch = duration[i]
        if ch.isdigit() or ch == ".":
            num += ch
            i += 1
            continue
        unit = "ms" if duration.startswith("ms", i) else ch
        total += float(num) * units[unit]
        num, i = "", i + len(unit)
    return total


def test_go_duration_format():
    assert [go_duration(x) for x in (0, 0.25, 1, 1.5, 360, 3723)] == ["0s", "250ms", "1s", "1.5s", "6m0s", "1h2m3s"]
    assert _seconds("1m30.5s") == 90.5 and _seconds("17ms") == 0.017


def test_api_key_required():
    with FakeOpenAI(api_key="sk-right") as s, _client(s.url, "sk-wrong-key") as wrong, _client(s.url, "sk-right") as ok:
        with pytest.raises(openai.AuthenticationError) as exc:
            _chat(wrong)
        assert exc.value.code == "invalid_api_key" and "sk-wrong-key" not in exc.value.message
        assert _chat(ok).choices
        assert s.log[-1]["status"] == 200 and len(s.log) == 1  # the 401 never reached the handler


# --- files, batches, moderations, models --------------------------------------------------------------------------

def _wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        b = client.batches.retrieve(batch_id)
        seen.append(b.status)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b, seen
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} stuck: {seen[-5:]}")


def _jsonl(lines: list) -> bytes:
    return b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n" for ln in lines)


def test_files_round_trip(client):
    f = client.files.create(file=("notes.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    assert f.id.startswith("file-") and f.bytes == 9 and f.filename == "notes.jsonl" and f.status == "processed"
    assert client.files.retrieve(f.id).purpose == "batch"
    assert client.files.content(f.id).content == b'{"a": 1}\n'
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_batch_round_trip_matches_sync_endpoint(client, srv):
    bodies = {f"req-{i}": {"model": MODEL, "messages": [{"role": "user", "content": f"Give {i + 1}: A fast car {i}."}]}
              for i in range(3)}
    lines = [{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": b}
             for cid, b in bodies.items()]
    lines += [b"{not json", {"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}},
              {"custom_id": "bad-body", "method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL}}]
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"run": "t1"})
    assert batch.id.startswith("batch_") and batch.status == "validating" and batch.output_file_id is None
    done, seen = _wait_batch(client, batch.id)
    assert "in_progress" in seen and done.status == "completed" and done.completed_at
    assert done.metadata == {"run": "t1"}
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 3, 3)
    out = [json.loads(ln) for ln in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(bodies)
    for o in out:
        assert o["error"] is None and o["response"]["status_code"] == 200 and o["id"].startswith("batch_req_")
        sync = client.chat.completions.create(**bodies[o["custom_id"]])
        assert o["response"]["body"]["choices"][0]["message"]["content"] == sync.choices[0].message.content
        assert o["response"]["body"]["usage"]["prompt_tokens"] == sync.usage.prompt_tokens
    errs = {json.loads(ln)["custom_id"]: json.loads(ln) for ln in client.files.content(done.error_file_id).text
            .splitlines()}
    assert set(errs) == {None, "bad-url", "bad-body"}
    assert errs[None]["error"]["code"] == "invalid_json_line" and errs[None]["response"] is None
    assert errs["bad-body"]["response"]["status_code"] == 400
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert batch.id in [b.id for b in client.batches.list(limit=100)]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_batch_item_error_fault_and_validation(client, srv):
    srv.set_faults({"batch_item_error": 1.0})
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}} for i in range(2)]
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
    done, _ = _wait_batch(client, client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                        completion_window="24h").id)
    assert done.output_file_id is None and done.request_counts.failed == 2
    errs = [json.loads(ln) for ln in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["error"]["code"] for e in errs] == ["batch_item_error"] * 2
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")


def test_batch_list_pagination_and_cancel(client):
    f = client.files.create(file=("in.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    ids = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
           for _ in range(3)]
    cancelled = client.batches.cancel(ids[-1])
    assert cancelled.status == "cancelling"
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == [ids[2], ids[1]] and page.has_more
    assert client.batches.list(limit=1, after=ids[1]).data[0].id == ids[0]
    assert _wait_batch(client, ids[-1])[0].status == "cancelled"


def test_moderations_and_models(client):
    res = client.moderations.create(input=["I will kill you", "hello", "I hate this"]).results
    assert res[0].flagged and res[0].categories.violence and not res[0].categories.hate
    assert not res[1].flagged and not any(res[1].categories.model_dump().values())
    assert res[2].flagged and res[2].categories.hate
    assert res[0].category_scores.violence > 0.5 > res[1].category_scores.violence
    assert not client.moderations.create(input="skill and hatet").results[0].flagged  # whole words only
    assert [m.id for m in client.models.list()] == [MODEL]


def test_runs_as_a_script():
    script = Path(__file__).with_name("openai_server.py")
    cmd = [sys.executable, str(script), "--port", "0", "--latency-ms", "1", "--faults", "500=0.0"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("URL http://127.0.0.1:") and line.endswith("/v1")
            with _client(line.split()[1]) as c:
                assert _chat(c).choices[0].message.content
        finally:
            proc.terminate()
            assert proc.wait(10) == 0


def test_llama_cpp_mode_refuses_json_schema_with_500_ignores_n_and_max_completion_tokens():
    with FakeOpenAI(llama_cpp=True) as srv, _client(srv.url) as c:
        with pytest.raises(openai.InternalServerError) as e:
            _chat(c, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
        assert e.value.status_code == 500 and "response_format" in e.value.body["message"].splitlines()[1]
        assert _chat(c, response_format={"type": "json_object"}).choices[0].message.content.startswith("{")
        assert len(_chat(c, n=3).choices) == 1
        free = _chat(c, max_completion_tokens=5).choices[0]
        assert free.finish_reason == "stop" and len(quicktok.get_encoding("o200k_base").encode_ordinary(
            free.message.content)) > 5
        capped = _chat(c, max_tokens=5)
        assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens <= 5
