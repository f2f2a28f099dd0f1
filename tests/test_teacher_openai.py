"""The OpenAI-compatible teachers over real HTTP on 127.0.0.1 (tests/openai_server.py), with the real `openai`
client: faults and retries, kill -9 resume without paying twice, budgets, dry-run estimates, Batch API, moderation."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from pipelines import runner
from pipelines.journal import read_lines
from schemas.errors import BudgetReached, UserError
from schemas.recipe import BatchTeacherConfig, ChatTeacherConfig, ModerationConfig
from tests.conftest import REPO, cli, error_line
from tests.openai_server import FakeOpenAI

KEY = "sk-test-DoNotLeak-7f3a9c2e51"
SENTENCES = [ln for ln in (REPO / "pipelines/data/demo_sources.txt").read_text().splitlines() if ln]
CONTENT_COLS = ["request_id", "source_id", "sample_index", "raw_output", "items", "parse_error", "prompt_tokens",
                "completion_tokens", "finish_reason", "refusal"]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def _workdir(tmp: Path, n: int, name: str = "wd", extra: list[str] | None = None) -> Path:
    src = tmp / f"{name}.txt"
    src.write_text("\n".join(SENTENCES[:n] + (extra or [])) + "\n")
    runner.ingest([str(src)], tmp / name, progress=False)
    return tmp / name


def _chat(srv: FakeOpenAI, **kw) -> ChatTeacherConfig:
    base = dict(kind="openai", model="gpt-4o-mini", base_url=srv.url, timeout_s=2.0, backoff_s=0.02,
                backoff_max_s=0.2, concurrency=16)
    return ChatTeacherConfig(**{**base, **kw})


def _gens(wd: Path) -> pl.DataFrame:
    return pl.read_parquet(wd / "tables/generations/*.parquet").filter(pl.col("request_id").is_not_null())


def _fails(wd: Path) -> pl.DataFrame:
    return pl.read_parquet(wd / "tables/request_failures/*.parquet")


def test_twenty_percent_faults_every_source_ends_generated_or_failed(tmp_path):
    wd = _workdir(tmp_path, 120)
    faults = {"429": 0.04, "500": 0.04, "503": 0.02, "timeout": 0.02, "malformed": 0.03, "disconnect": 0.02,
              "length": 0.02, "refusal": 0.01}
    assert abs(sum(faults.values()) - 0.20) < 1e-9
    with FakeOpenAI(faults=faults, seed=3, api_key=KEY) as srv:
        s = runner.generate(wd, _chat(srv, max_retries=1, timeout_s=0.5, on_failures="continue", concurrency=1),
                            progress=False)  # one at a time: the seeded faults land on the same requests each run
        faulted = {e["fault"] for e in srv.log if e["fault"]}
    assert {"429", "500", "malformed", "disconnect"} <= faulted
    gens, fails = _gens(wd), _fails(wd)
    sources = set(pl.read_parquet(wd / "tables/sources/*.parquet")["source_id"])
    assert s["planned"] == 120 and s["generated"] + s["failed"] == 120
    assert gens.height == s["generated"] and fails.height == s["failed"] and s["retries"] > 0
    assert set(gens["source_id"]) | set(fails["source_id"]) == sources  # every source: generated or failed
    assert not set(gens["request_id"]) & set(fails["request_id"])
    assert s["failed"] > 0 and fails["error"].is_not_null().all() and (fails["attempts"] == 2).all()
    assert set(fails["failure_kind"]) <= {"rate_limit", "server_error", "timeout", "disconnected", "invalid_response"}
    assert sum(s["failures_by_kind"].values()) == s["failed"] and s["top_failure"]["count"] >= 1
    refused = gens.filter(pl.col("refusal").is_not_null())
    assert (refused["parse_error"].str.starts_with("refused")).all()
    cut = gens.filter(pl.col("finish_reason") == "length")
    assert cut.height and (cut["items"].list.len() < 3).all()  # the truncated last item is dropped
    # a rerun sends only what failed, and then everything is generated once
    with FakeOpenAI(seed=4, api_key=KEY) as srv:
        again = runner.generate(wd, _chat(srv), progress=False)
        assert len(srv.log) == s["failed"]
    assert again["to_send"] == s["failed"] and again["failed"] == 0
    assert _gens(wd)["request_id"].n_unique() == _gens(wd).height == 120


def _recipe(tmp: Path, srv: FakeOpenAI, name: str, n: int, teacher: str, export: bool = False) -> Path:
    (tmp / f"{name}.txt").write_text("\n".join(SENTENCES[:n]) + "\n")
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\nworkdir: {tmp / name}\nsources: [{name}.txt]\n"
                    f"teacher: {{kind: openai, model: gpt-4o-mini, base_url: '{srv.url}', {teacher}}}\n"
                    + (f"export: {{name: {name}-para}}\n" if export else ""))
    return path


def _written_ids(wd: Path) -> set[str]:
    """Request ids whose responses are on disk right now (parquet shards and journal lines)."""
    ids = set()
    for p in (wd / "tables/generations").glob("part-*.parquet"):
        ids |= set(pl.read_parquet(p)["request_id"].drop_nulls())
    for p in (wd / "journal/generations").glob("*.jsonl") if (wd / "journal/generations").exists() else []:
        ids |= {r["request_id"] for r in read_lines(p)}
    return ids


def test_sigkill_at_random_moments_loses_nothing_and_never_pays_twice(tmp_path):
    n = 160
    teacher = "concurrency: 8, timeout_s: 5, backoff_s: 0.02"
    with FakeOpenAI(latency_s=0.05, faults={"500": 0.05}, seed=11, api_key=KEY) as srv:
        ref = _recipe(tmp_path, srv, "ref", n, teacher)
        cli("ingest", str(tmp_path / "ref.txt"), "-w", str(tmp_path / "ref"), check=True)
        cli("generate", "-r", str(ref), check=True)
        ref_rows = _gens(tmp_path / "ref").select(CONTENT_COLS).sort("request_id")
        srv.log.clear()
        recipe = _recipe(tmp_path, srv, "killed", n, teacher)
        wd = tmp_path / "killed"
        cli("ingest", str(tmp_path / "killed.txt"), "-w", str(wd), check=True)
        rng = random.Random(5)
        kills, forbidden = 0, []  # (server log position, ids written at that moment)
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        for _ in range(5):
            start = len(srv.log)
            proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "generate", "-r", str(recipe)],
                                    cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            target = start + rng.randint(3, 30)
            deadline = time.time() + 60
            while len(srv.log) < target and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            forbidden.append((len(srv.log), _written_ids(wd)))
        assert kills >= 4
        done_before_final = _written_ids(wd)
        assert 0 < len(done_before_final) < n  # the kills landed mid-run
        cli("generate", "-r", str(recipe), check=True)
        log = list(srv.log)
    rows = _gens(wd).select(CONTENT_COLS).sort("request_id")
    assert rows["request_id"].n_unique() == rows.height == n
    assert rows.equals(ref_rows)
    for pos, written in forbidden:  # a response once written is never asked for again
        again = {e["client_request_id"] for e in log[pos:]} & written
        assert not again, f"{len(again)} request(s) re-sent after their response was written"
    assert not list((wd / "journal/generations").glob("*.jsonl"))


def test_no_api_key_in_any_file_of_the_workdir_or_export(tmp_path):
    with FakeOpenAI(api_key=KEY) as srv:
        recipe = _recipe(tmp_path, srv, "leak", 12, "n: 2", export=True)
        proc = cli("run", str(recipe), check=True)
    assert KEY not in proc.stdout + proc.stderr
    files = [p for p in (tmp_path / "leak").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == "manifest.json" for p in files)
    assert any("exports" in p.parts for p in files)
    for p in files:
        assert KEY.encode() not in p.read_bytes(), f"API key found in {p}"


def test_dry_run_estimate_is_within_five_percent_of_what_the_server_counted(tmp_path):
    wd = _workdir(tmp_path, 150)
    with FakeOpenAI(api_key=KEY) as srv:
        for prompt in ("paraphrase-list", "paraphrase-list-fewshot"):
            cfg = _chat(srv, prompt=prompt)
            dry = runner.generate(wd, cfg, progress=False, dry_run=True)
            assert dry["dry_run"] and dry["generated"] == 0
            assert not srv.log  # spends nothing
            runner.generate(wd, cfg, progress=False)
            served = _gens(wd).filter(pl.col("prompt_version").str.starts_with(prompt + "@"))["prompt_tokens"].sum()
            assert abs(dry["estimate"]["prompt_tokens"] - served) / served <= 0.05, (prompt, dry, served)
            srv.log.clear()


def test_dry_run_cli_prints_requests_tokens_and_dollars(tmp_path):
    with FakeOpenAI(api_key=KEY) as srv:
        recipe = _recipe(tmp_path, srv, "dry", 10, "n: 3")
        proc = cli("run", str(recipe), "--dry-run", check=True)
        assert not srv.log
    assert "to send 10" in proc.stdout and "prompt tokens" in proc.stdout and "$" in proc.stdout
    assert "nothing was sent" in proc.stdout


def test_max_cost_stops_cleanly_and_a_rerun_goes_on(tmp_path):
    wd = _workdir(tmp_path, 100)
    with FakeOpenAI(api_key=KEY) as srv:
        full = runner.generate(wd, _chat(srv), progress=False, dry_run=True)["estimate"]["cost_usd_est"]
        with pytest.raises(BudgetReached):
            runner.generate(wd, _chat(srv, max_cost=full / 3), progress=False)
        first = _gens(wd)
        assert 0 < first.height < 100 and first["cost_usd"].sum() <= full / 3
        runner.generate(wd, _chat(srv, max_cost=full * 3), progress=False)
        ids = [e["client_request_id"] for e in srv.log]
    assert _gens(wd).height == 100 and len(ids) == len(set(ids)) == 100
    manifests = [json.loads(p.read_text()) for p in (wd / "runs").glob("*/manifest.json")]
    assert "stopped-at-budget" in {m["status"] for m in manifests}


def test_max_cost_exit_code_and_unknown_price(tmp_path):
    with FakeOpenAI(api_key=KEY) as srv:
        recipe = _recipe(tmp_path, srv, "budget", 30, "max_cost: 0.000001")
        proc = cli("run", str(recipe))
        assert proc.returncode == 7 and "max_cost" in error_line(proc)
        recipe = _recipe(tmp_path, srv, "noprice", 5, "max_cost: 1.0").read_text().replace("gpt-4o-mini", "my-llama")
        (tmp_path / "noprice.yaml").write_text(recipe)
        proc = cli("run", str(tmp_path / "noprice.yaml"))
        assert proc.returncode == 4 and "no price known for model 'my-llama'" in error_line(proc)


def test_structured_output_falls_back_to_the_list_parser(tmp_path):
    wd = _workdir(tmp_path, 20)
    with FakeOpenAI(structured_output=False, api_key=KEY) as srv:
        s = runner.generate(wd, _chat(srv, n=3), progress=False)
    assert s["structured_output"] is False and "response_format" in s["structured_output_fallback"]
    gens = _gens(wd)
    assert gens.height == 20 and gens["parse_error"].is_null().all() and (gens["items"].list.len() == 3).all()
    with FakeOpenAI(api_key=KEY) as srv:
        wd2 = _workdir(tmp_path, 20, "wd2")
        s = runner.generate(wd2, _chat(srv, n=3), progress=False)
    assert s["structured_output"] is True and _gens(wd2)["raw_output"].str.starts_with("{").all()


def test_single_prompt_with_n_choices_or_n_requests(tmp_path):
    with FakeOpenAI(api_key=KEY) as srv:
        wd = _workdir(tmp_path, 10)
        runner.generate(wd, _chat(srv, prompt="paraphrase-single", n=3, temperature=1.0), progress=False)
        g = _gens(wd)
        assert g.height == 10 and (g["items"].list.len() == 3).all()
        wd2 = _workdir(tmp_path, 10, "wd2")
        runner.generate(wd2, _chat(srv, prompt="paraphrase-single", n=3, sampling="requests", seed=1),
                        progress=False)
        g2 = _gens(wd2)
        assert g2.height == 30 and sorted(set(g2["sample_index"])) == [0, 1, 2]


def test_rate_limits_are_respected(tmp_path):
    wd = _workdir(tmp_path, 64)
    with FakeOpenAI(rate_limit={"rpm": 60}, api_key=KEY) as srv:  # a 60-request bucket, then one per second
        t0 = time.monotonic()
        s = runner.generate(wd, _chat(srv, concurrency=8, max_retries=20, max_new_tokens=64), progress=False)
        took = time.monotonic() - t0
        throttled = sum(1 for e in srv.log if e["status"] == 429)
    assert s["generated"] == 64 and s["failed"] == 0 and s["throttled"] == throttled
    assert throttled <= 8  # one wave of in-flight requests at most: then the client waits as the headers say
    assert took >= 3.0  # the last 4 requests had to wait for the bucket to refill


def test_wrong_api_key_is_one_line(tmp_path):
    with FakeOpenAI(api_key="sk-other") as srv:
        recipe = _recipe(tmp_path, srv, "auth", 5, "n: 2")
        proc = cli("run", str(recipe))
    assert proc.returncode == 4 and "rejected the API key" in error_line(proc)
    assert "Traceback" not in proc.stderr


def test_missing_key_for_openai_is_a_recipe_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    wd = _workdir(tmp_path, 3)
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set"):
        runner.generate(wd, ChatTeacherConfig(kind="openai", model="gpt-4o-mini"), progress=False)


def _batch(srv: FakeOpenAI, **kw) -> BatchTeacherConfig:
    base = dict(kind="openai-batch", model="gpt-4o-mini", base_url=srv.url, poll_s=0.05)
    return BatchTeacherConfig(**{**base, **kw})


def test_batch_api_end_to_end_split_and_discount(tmp_path):
    wd = _workdir(tmp_path, 25)
    with FakeOpenAI(batch_delay_s=0.05, faults={"batch_item_error": 0.1}, seed=2, api_key=KEY) as srv:
        s = runner.generate(wd, _batch(srv, max_requests_per_file=10, on_failures="continue"), progress=False)
        assert len(srv.batches) == 3  # 25 requests, at most 10 per file
    gens, fails = _gens(wd), _fails(wd)
    assert s["generated"] + s["failed"] == 25 and gens.height == s["generated"] and fails.height == s["failed"]
    assert s["failed"] > 0 and fails["batch_id"].is_not_null().all()
    assert gens["batch_id"].n_unique() == 3
    batches = pl.read_parquet(wd / "tables/batches/*.parquet")
    assert set(batches.filter(pl.col("status") == "collected")["batch_id"]) == set(gens["batch_id"])
    # cost at the batch discount: half of what the same tokens cost on the sync API
    from curation.teachers.costs import cost_usd, load_prices

    price = load_prices().price_for("gpt-4o-mini")
    sync = sum(cost_usd(price, p, c) for p, c in gens.select("prompt_tokens", "completion_tokens").iter_rows())
    assert gens["cost_usd"].sum() == pytest.approx(sync / 2, abs=1e-8 * gens.height)
    # a rerun resubmits only the failed items, in one new batch
    with FakeOpenAI(api_key=KEY) as srv:
        again = runner.generate(wd, _batch(srv), progress=False)
        assert len(srv.batches) == 1 and again["submitted"] == s["failed"]
    assert _gens(wd).height == 25


def test_batch_crash_after_submit_collects_instead_of_resubmitting(tmp_path, monkeypatch):
    import pipelines.steps.batch as step

    wd = _workdir(tmp_path, 12)
    with FakeOpenAI(batch_delay_s=0.05, api_key=KEY) as srv:
        real = step._record

        def crash(*a, **k):
            raise KeyboardInterrupt  # killed between creating the batch and recording its id

        monkeypatch.setattr(step, "_record", crash)
        with pytest.raises(KeyboardInterrupt):
            runner.generate(wd, _batch(srv), progress=False)
        assert len(srv.batches) == 1
        monkeypatch.setattr(step, "_record", real)
        s = runner.generate(wd, _batch(srv, wait=False), progress=False)  # finds it by metadata, no new batch
        assert len(srv.batches) == 1 and s["batches_found_on_server"] == 1 and s["submitted"] == 0
        s = runner.generate(wd, _batch(srv), progress=False)  # collects it
        assert len(srv.batches) == 1 and s["to_submit"] == 0
        files_uploaded = sum(1 for f in srv.files.values() if f["purpose"] == "batch")
    assert files_uploaded == 1 and _gens(wd).height == 12
    assert _gens(wd)["request_id"].n_unique() == 12


def test_moderation_quarantines_flagged_sources_and_outputs(tmp_path):
    extra = ["I will kill the process before lunch.", "They hate waiting in long lines."]
    wd = _workdir(tmp_path, 8, extra=extra)
    with FakeOpenAI(api_key=KEY) as srv:
        cfg = _chat(srv, moderation=ModerationConfig(sources=True, outputs=True))
        runner.generate(wd, cfg, progress=False)
    q = pl.read_parquet(wd / "tables/quarantine/*.parquet").filter(pl.col("stage") == "moderation")
    assert set(q["reason"]) == {"moderation flagged: violence", "moderation flagged: hate"}
    assert _gens(wd).height == 8  # the flagged sources never reached the teacher
    mod = pl.read_parquet(wd / "tables/moderation/*.parquet")
    assert mod.filter(pl.col("role") == "source").height == 10
    assert mod.filter(pl.col("role") == "output").height > 0


def test_dry_run_with_a_local_teacher_is_one_line_and_runs_nothing(tmp_path):
    (tmp_path / "s.txt").write_text("One sentence here.\n")
    (tmp_path / "r.yaml").write_text(f"name: r\nworkdir: {tmp_path / 'wd'}\nsources: [s.txt]\n")
    proc = cli("run", str(tmp_path / "r.yaml"), "--dry-run")
    assert proc.returncode == 4 and "--dry-run estimates what an API teacher costs" in error_line(proc)
    assert not list((tmp_path / "wd/tables/generations").glob("part-1*.parquet"))
