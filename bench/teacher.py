"""Chat-teacher throughput against the loopback OpenAI-compatible server, and resume time of a large workdir.

    make bench-teacher      # or: .venv/bin/python bench/teacher.py [--latency-ms 50] [--waves 12] [--resume 100000]

The server (tests/openai_server.py) runs in its own process and answers every chat request after a fixed latency,
so the ideal throughput at F requests in flight is F / latency. For F in 64, 256 and 512 the table shows the whole
`generate` step (plan, send, parse, journal, compact; a fresh workdir each time) and, as a reference measured in the
same run, a bare aiohttp client firing the same requests with no parsing or storage. Resume: a workdir holding N
finished requests, timed from `generate` start to "nothing to send".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENAI_API_KEY", "sk-bench")

import polars as pl  # noqa: E402

from pipelines import runner  # noqa: E402
from pipelines.store import Workdir  # noqa: E402
from schemas.recipe import ChatTeacherConfig  # noqa: E402

TARGET_AT_256 = 0.9


def start_server(latency_ms: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/openai_server.py"), "--port", "0", "--latency-ms",
                             str(latency_ms)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("URL "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split()[1]


def sources_file(folder: Path, n: int) -> Path:
    demo = [ln for ln in (ROOT / "pipelines/data/demo_sources.txt").read_text().splitlines() if ln]
    path = folder / f"sources-{n}.txt"
    path.write_text("\n".join(f"{demo[i % len(demo)]} (case {i})" for i in range(n)) + "\n")
    return path


def teacher(url: str, in_flight: int) -> ChatTeacherConfig:
    return ChatTeacherConfig(kind="openai", model="gpt-4o-mini", base_url=url, concurrency=in_flight, n=3,
                             timeout_s=30, structured_output="off")


def run_generate(url: str, folder: Path, in_flight: int, n: int) -> float:
    """Requests/s of the whole generate step over n fresh requests."""
    wd = folder / f"wd-{in_flight}"
    runner.ingest([str(sources_file(folder, n))], wd, progress=False)
    s = runner.generate(wd, teacher(url, in_flight), progress=False)
    assert s["generated"] == n and s["failed"] == 0, s
    return n / s["seconds"]


async def _raw(url: str, in_flight: int, n: int, body: dict) -> float:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=in_flight)
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    data = json.dumps(body)
    sem = asyncio.Semaphore(in_flight)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def one() -> None:
            async with sem, session.post(f"{url}/chat/completions", data=data, headers=headers) as r:
                await r.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


def run_raw(url: str, in_flight: int, n: int) -> float:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Give 3 paraphrases of: The cat sat."}]}
    return asyncio.run(_raw(url, in_flight, n, body))


def resume_time(url: str, folder: Path, n: int) -> tuple[float, float]:
    """(seconds to find nothing left to send in a workdir of n finished requests, seconds to build it)."""
    from curation.prompt_templates import load_template
    from pipelines.steps.chat import base_columns, plan

    wd_path = folder / "wd-resume"
    runner.ingest([str(sources_file(folder, n))], wd_path, progress=False)
    cfg = teacher(url, 64)
    t0 = time.perf_counter()
    wd = Workdir(wd_path)
    template = load_template(cfg.prompt)
    sources = wd.read("sources").select("source_id", "text").sort("source_id")
    reqs = plan(sources, cfg, template, "openai")
    base = base_columns(cfg, template, "openai", "bench")
    rows = pl.DataFrame({"request_id": [r.request_id for r in reqs], "source_id": [r.source_id for r in reqs],
                         "sample_index": [r.sample_index for r in reqs]}).with_columns(
        **{k: pl.lit(v) for k, v in base.items()}, raw_output=pl.lit("1. A.\n2. B.\n3. C."),
        items=pl.lit(["A.", "B.", "C."]), parse_error=pl.lit(None, pl.String), prompt_tokens=pl.lit(60),
        completion_tokens=pl.lit(30), finish_reason=pl.lit("stop"), latency_s=pl.lit(0.05),
        cost_usd=pl.lit(0.00003), attempts=pl.lit(1), batch_id=pl.lit(None, pl.String),
        refusal=pl.lit(None, pl.String))
    for start in range(0, rows.height, 20_000):  # shards as the journal compaction leaves them
        wd.append("generations", rows.slice(start, 20_000))
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = runner.generate(wd_path, cfg, progress=False)
    took = time.perf_counter() - t0
    assert s["to_send"] == 0 and s["already_done"] == n, s
    return took, built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--waves", type=int, default=12, help="requests per run = waves x in-flight")
    ap.add_argument("--resume", type=int, default=100_000, help="finished requests in the resume workdir")
    ap.add_argument("--in-flight", default="64,256,512")
    args = ap.parse_args()
    proc, url = start_server(args.latency_ms)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            run_raw(url, 64, 256)  # warm up connections and the server
            from curation.teachers.tokens import encoding_name_for, get_encoding

            get_encoding(encoding_name_for("gpt-4o-mini"))  # the tokenizer loads once per process (~1.5 s)
            for f in (int(x) for x in args.in_flight.split(",")):
                n = f * args.waves
                ideal = f / (args.latency_ms / 1000)
                raw = run_raw(url, f, n)
                ours = run_generate(url, folder, f, n)
                rows.append((f, n, ideal, raw, ours))
            resume, built = resume_time(url, folder, args.resume)
    finally:
        proc.terminate()
        proc.wait()
    print(f"\nchat teacher vs loopback server ({args.latency_ms} ms latency; {os.cpu_count()} cores shared by "
          "server and client)\n")
    print(f"{'in flight':>9} {'requests':>9} {'ideal req/s':>12} {'bare aiohttp':>13} {'x ideal':>8} "
          f"{'generate':>10} {'x ideal':>8} {'x bare':>7}")
    for f, n, ideal, raw, ours in rows:
        print(f"{f:>9} {n:>9} {ideal:>12,.0f} {raw:>13,.0f} {raw / ideal:>8.2f} {ours:>10,.0f} {ours / ideal:>8.2f} "
              f"{ours / raw:>7.2f}")
    at256 = next((o / i for f, _, i, _, o in rows if f == 256), None)
    if at256 is not None:
        verdict = "met" if at256 >= TARGET_AT_256 else "NOT met"
        print(f"\ntarget: generate >= {TARGET_AT_256}x ideal at 256 in flight: {at256:.2f}x ({verdict})")
    print(f"resume: {args.resume:,} finished requests -> nothing to send in {resume:.2f} s "
          f"(workdir built in {built:.1f} s)")


if __name__ == "__main__":
    main()
