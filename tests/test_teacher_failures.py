"""OpenAI-compatible servers that are not OpenAI, and runs whose teacher requests failed, through the CLI.

A llama.cpp-like server (tests/openai_server.py, `llama_cpp=True`: json_schema -> HTTP 500 naming
response_format, `n` ignored, only `max_tokens` honoured) must still give every source its paraphrases, with the
fallbacks recorded in the manifest. A server that is down, dies mid-run or answers 5xx must end the run with exit 9,
one line with the count and the real cause, nothing curated; a rerun once the server is back completes every source.
"""

import json
import socket
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from schemas.recipe import ChatTeacherConfig
from tests.conftest import REPO, cli, error_line
from tests.openai_server import FakeOpenAI

SENTENCES = [ln for ln in (REPO / "pipelines/data/demo_sources.txt").read_text().splitlines() if ln]
FAST = "timeout_s: 2, max_retries: 1, backoff_s: 0.01, backoff_max_s: 0.05"


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs none


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(tmp: Path, name: str, url: str, n_sources: int, teacher: str, curate: bool = True) -> Path:
    """The README's list recipe (prompt paraphrase-list, structured_output auto) against `url`."""
    (tmp / f"{name}.txt").write_text("\n".join(SENTENCES[:n_sources]) + "\n")
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\nworkdir: {tmp / name}\nsources: [{name}.txt]\n"
                    f"teacher: {{kind: openai, model: llama-3.2-1b, base_url: '{url}', {teacher}}}\n"
                    + ("filter: {rules: []}\nembed: {model: __no_such_model__}\n" if curate else ""))
    return path


def _gens(wd: Path) -> pl.DataFrame:
    return pl.read_parquet(wd / "tables/generations/*.parquet").filter(pl.col("request_id").is_not_null())


def _fails(wd: Path) -> pl.DataFrame:
    return pl.read_parquet(wd / "tables/request_failures/*.parquet")


def _manifests(wd: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in (wd / "runs").glob("*/manifest.json")),
                  key=lambda m: m["started_at"])


def _stop_after(srv: FakeOpenAI, k: int) -> threading.Thread:
    """Stop the server (as a kill would) once it has seen `k` requests, from a thread."""
    def stop() -> None:
        deadline = time.monotonic() + 60
        while len(srv.log) < k and time.monotonic() < deadline:
            time.sleep(0.002)
        srv.stop()

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread


def _teacher_stage(wd: Path) -> dict:
    """The teacher stats of the last run that sent requests."""
    return next(m["stages"]["generate"] for m in reversed(_manifests(wd))
                if m["stages"].get("generate", {}).get("to_send"))


# --- 1. OpenAI-compatible servers that are not OpenAI -------------------------------------------------------


def test_llama_cpp_list_recipe_falls_back_once_and_honours_the_cap(tmp_path):
    with FakeOpenAI(llama_cpp=True) as srv:
        recipe = _recipe(tmp_path, "llama", srv.url, 24,
                         f"prompt: paraphrase-list, n: 5, structured_output: auto, concurrency: 4, {FAST}",
                         curate=False)
        proc = cli("run", str(recipe))
        assert proc.returncode == 0, proc.stderr
        assert "note: the server refused response_format, so this run used the list parser" in proc.stdout
        posts = len(srv.log)
        # the cap: only max_tokens is honoured by this server
        capped = _recipe(tmp_path, "capped", srv.url, 6, f"n: 5, max_new_tokens: 12, {FAST}", curate=False)
        cli("run", str(capped), check=True)
    gens = _gens(tmp_path / "llama")
    assert gens.height == 24 and gens["source_id"].n_unique() == 24  # every source generated
    assert (gens["items"].list.len() == 5).all() and gens["parse_error"].is_null().all()
    # found out once: at most one wave of structured requests (concurrency 4), not 2 retries x 24 requests
    assert posts <= 24 + 4, posts
    stage = _teacher_stage(tmp_path / "llama")
    assert "response_format" in stage["structured_output_fallback"]
    assert "Input should be 'text' or 'json_object'" in stage["structured_output_fallback"]  # the whole message
    assert stage["structured_output"] is False and stage["failed"] == 0
    assert "max_tokens" in stage["max_tokens_fields"]
    cut = _gens(tmp_path / "capped")
    assert (cut["completion_tokens"] <= 12).all() and (cut["finish_reason"] == "length").all()


def test_llama_cpp_ignores_n_so_n_requests_of_one_are_sent_and_a_rerun_pays_nothing(tmp_path):
    teacher = f"prompt: paraphrase-single, n: 3, temperature: 1.0, seed: 7, sampling: n, concurrency: 2, {FAST}"
    with FakeOpenAI(llama_cpp=True) as srv:
        recipe = _recipe(tmp_path, "single", srv.url, 10, teacher, curate=False)
        first = cli("run", str(recipe), check=True)
        assert "note: the server returned fewer choices than n, so this run sent n requests of one" in first.stdout
        sent = [e["client_request_id"] for e in srv.log]
        srv.log.clear()
        cli("run", str(recipe), check=True)  # every sample is stored: nothing is asked again
        again = len(srv.log)
    gens = _gens(tmp_path / "single")
    per_source = gens.group_by("source_id").agg(pl.col("sample_index").sort(), pl.col("items").list.len().sum())
    assert per_source.height == 10 and (per_source["items"] == 3).all()  # n paraphrases per source
    assert per_source["sample_index"].to_list() == [[0, 1, 2]] * 10
    assert len(sent) == len(set(sent)) == 30 and again == 0
    stage = _teacher_stage(tmp_path / "single")
    assert stage["samples_added"] == 20 and "1 choice(s) for n=3" in stage["sampling_fallback"]


def test_structured_output_off_unquoted_in_yaml(tmp_path):
    with FakeOpenAI(llama_cpp=True) as srv:
        recipe = _recipe(tmp_path, "plain", srv.url, 3, f"structured_output: off, {FAST}", curate=False)
        proc = cli("run", str(recipe))
        posts = len(srv.log)
    assert proc.returncode == 0, proc.stderr
    assert posts == 3  # no response_format asked: no 500 to fall back from
    assert ChatTeacherConfig(kind="openai", model="m", structured_output=True).structured_output == "on"


# --- 2. a run whose requests failed says so -----------------------------------------------------------------


def test_server_down_exits_9_before_curation_and_a_rerun_completes(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    recipe = _recipe(tmp_path, "down", url, 12, FAST)
    proc = cli("run", str(recipe))
    line = error_line(proc)
    assert proc.returncode == 9, proc.stderr
    assert "12 of 12 teacher request(s) failed" in line and "connection refused" in line
    assert "Connect call failed" in line and "stopped before curation" in line
    wd = tmp_path / "down"
    assert not any("embed" in m["stages"] for m in _manifests(wd))  # nothing was curated
    fails = _fails(wd)
    assert set(fails["failure_kind"]) == {"connection_refused"}
    assert fails["error"].str.contains("Connect call failed").all()
    assert _manifests(wd)[-1]["status"] == "requests-failed"
    with FakeOpenAI(port=port) as srv:
        proc = cli("generate", "-r", str(recipe))
        assert proc.returncode == 0, proc.stderr
        assert len(srv.log) == 12
    assert _gens(wd)["source_id"].n_unique() == 12


def test_server_killed_mid_run_exits_9_and_a_rerun_sends_only_the_rest(tmp_path):
    port = _free_port()
    srv = FakeOpenAI(port=port, latency_s=0.02).start()
    recipe = _recipe(tmp_path, "killed", srv.url, 40, f"concurrency: 2, {FAST}", curate=False)

    wd = tmp_path / "killed"
    cli("ingest", str(tmp_path / "killed.txt"), "-w", str(wd), check=True)

    killer = _stop_after(srv, 10)
    proc = cli("generate", "-r", str(recipe))
    killer.join(70)
    line = error_line(proc)
    done = _gens(wd).height
    assert proc.returncode == 9 and 0 < done < 40
    assert f"{40 - done} of 40 teacher request(s) failed" in line
    assert "candidates were built from the" in line
    assert pl.read_parquet(wd / "tables/candidates/*.parquet")["request_id"].n_unique() == done
    with FakeOpenAI(port=port) as srv2:
        cli("generate", "-r", str(recipe), check=True)
        assert len(srv2.log) == 40 - done  # only what failed is sent again
    assert _gens(wd)["source_id"].n_unique() == 40


def test_server_errors_are_stored_whole_and_on_failures_continue_curates_what_succeeded(tmp_path):
    with FakeOpenAI(faults={"500": 1.0}) as srv:
        recipe = _recipe(tmp_path, "five", srv.url, 4, FAST)
        proc = cli("run", str(recipe))
        line = error_line(proc)
        assert proc.returncode == 9 and "4 of 4" in line and "server error (HTTP 500: The server had an error" in line
        fails = _fails(tmp_path / "five")
        assert set(fails["failure_kind"]) == {"server_error"} and (fails["status_code"] == 500).all()
        # go on with what there is: nothing succeeded, so curation says why there is nothing to curate
        (tmp_path / "five.yaml").write_text(recipe.read_text().replace(FAST, FAST + ", on_failures: continue"))
        proc = cli("run", str(recipe))
    line = error_line(proc)
    assert proc.returncode == 9 and "no candidate pairs to curate: 4 teacher request(s) failed" in line
    assert "server error" in line


def test_rejected_key_is_one_line_and_stops_before_curation(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with FakeOpenAI(api_key="sk-right") as srv:
        recipe = _recipe(tmp_path, "key", srv.url, 5, FAST)
        proc = cli("run", str(recipe))
    assert proc.returncode == 4 and "rejected the API key" in error_line(proc)
    assert not any("embed" in m["stages"] for m in _manifests(tmp_path / "key"))


def test_generate_with_no_sources_says_how_to_ingest(tmp_path):
    wd = tmp_path / "empty"
    (tmp_path / "e.txt").write_text("One sentence.\n")
    cli("ingest", str(tmp_path / "e.txt"), "-w", str(wd), check=True)
    for p in (wd / "tables/sources").glob("*.parquet"):
        p.unlink()
    proc = cli("generate", "-w", str(wd))
    assert proc.returncode == 5
    assert "no sources to generate from; ingest some first: paradistill ingest FILE -w" in error_line(proc)


def test_failure_causes_are_classified_from_the_transport_error():
    import asyncio

    from curation.teachers.openai_chat import describe_failure, make_client

    async def post(url: str):
        client = make_client(url, "k", 1.0, 1)
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "Hi."}]}
            await client.post("/chat/completions", body=body, cast_to=__import__("httpx2").Response)
        except Exception as e:  # noqa: BLE001 - what the teacher sees
            return e
        finally:
            await client.close()

    kind, cause = describe_failure(asyncio.run(post(f"http://127.0.0.1:{_free_port()}/v1")))
    assert kind == "connection_refused" and "Connect call failed" in cause and "timed out" not in cause
    with FakeOpenAI(faults={"timeout": 1.0}) as srv:
        assert describe_failure(asyncio.run(post(srv.url)))[0] == "timeout"
        srv.set_faults({"disconnect": 1.0})
        assert describe_failure(asyncio.run(post(srv.url)))[0] == "disconnected"
        srv.set_faults({"429": 1.0})
        assert describe_failure(asyncio.run(post(srv.url)))[0] == "rate_limit"


def test_n_fallback_interrupted_a_rerun_sends_exactly_the_missing_samples(tmp_path):
    port = _free_port()
    srv = FakeOpenAI(port=port, llama_cpp=True, latency_s=0.02).start()
    teacher = f"prompt: paraphrase-single, n: 3, temperature: 1.0, seed: 3, sampling: n, concurrency: 2, {FAST}"
    recipe = _recipe(tmp_path, "cut", srv.url, 12, teacher, curate=False)
    wd = tmp_path / "cut"
    cli("ingest", str(tmp_path / "cut.txt"), "-w", str(wd), check=True)

    killer = _stop_after(srv, 8)
    proc = cli("generate", "-r", str(recipe))
    killer.join(70)
    assert proc.returncode == 9, proc.stderr
    before = set(_gens(wd)["request_id"])
    assert 0 < len(before) < 36
    with FakeOpenAI(port=port, llama_cpp=True) as srv2:
        cli("generate", "-r", str(recipe), check=True)
        sent = [e["client_request_id"] for e in srv2.log]
    gens = _gens(wd)
    per_source = gens.group_by("source_id").agg(pl.col("sample_index").sort())
    assert per_source.height == 12 and per_source["sample_index"].to_list() == [[0, 1, 2]] * 12
    assert gens["request_id"].n_unique() == gens.height == 36
    assert len(sent) == len(set(sent)) == 36 - len(before) and not set(sent) & before  # nothing paid twice


def test_a_server_refusing_both_token_fields_gets_max_completion_tokens_only(tmp_path):
    with FakeOpenAI(one_token_field=True) as srv:
        recipe = _recipe(tmp_path, "strict", srv.url, 6, f"n: 2, max_new_tokens: 12, concurrency: 1, {FAST}",
                         curate=False)
        proc = cli("run", str(recipe))
        posts = len(srv.log)
    assert proc.returncode == 0, proc.stderr
    assert "note: the server refused max_tokens, so this run sent only max_completion_tokens" in proc.stdout
    assert _gens(tmp_path / "strict").height == 6 and posts == 7  # one refused post, then every request once
    stage = _teacher_stage(tmp_path / "strict")
    assert stage["max_tokens_fields"] == ["max_completion_tokens"] and stage["failed"] == 0
    assert "at the same time is not supported" in stage["max_tokens_fallback"]


def test_a_key_echoed_by_a_server_is_never_stored():
    from curation.teachers.openai_chat import ChatTeacher

    teacher = ChatTeacher.__new__(ChatTeacher)
    teacher._key = "sk-secret-123"
    assert teacher._redact(("client_error", "HTTP 403: bad key sk-secret-123 for /v1")) == (
        "client_error", "HTTP 403: bad key *** for /v1")


def test_the_most_common_cause_counts_one_cause_whatever_ids_it_names():
    from pipelines.steps.chat import FailureTally

    tally = FailureTally()
    for i in range(5):
        tally.add("server_error", f"HTTP 500: The server had an error. Request ID req_{i:04x}abcd in your message")
    tally.add("timeout", "APITimeoutError: Request timed out.")
    top = tally.stats()["top_failure"]
    assert top["kind"] == "server_error" and top["count"] == 5 and "req_0000abcd" in top["error"]
