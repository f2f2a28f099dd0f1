"""What the CLI prints: user data exactly as given (never rich markup or emoji), Ctrl-C, logs without a terminal,
and counts that say what happened rather than what this run added."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, error_line

ODD_NAMES = ["notes[/b].txt", "data/[bold]report.txt", "smile:x:.txt", "q[/i] [red]x[/red].txt"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_missing_file_named_exactly(tmp_path: Path, name: str) -> None:
    proc = cli("ingest", name, "-w", str(tmp_path / "w"), cwd=tmp_path)
    assert proc.returncode == 3
    line = error_line(proc)
    assert f"error: {name}: no such file" in line, line


def test_markup_in_texts_columns_and_file_names(tmp_path: Path) -> None:
    name = "q[i] :smile: [bold].csv"
    (tmp_path / name).write_text('"col[/i]",other\n"a [bold] text [/b] here :smile:",1\n"plain [/] text",2\n',
                                 encoding="utf-8")
    wd = str(tmp_path / "w")
    missing = cli("ingest", name, "--text-column", "q[/i]", "-w", wd, cwd=tmp_path)
    assert missing.returncode == 3
    line = error_line(missing)
    assert "q[/i]" in line and name in line, line
    ok = cli("ingest", name, "--text-column", "col[/i]", "-w", wd, cwd=tmp_path, check=True)
    assert "kept 2" in ok.stdout
    table = cli("sql", "-w", wd, "SELECT text, origin FROM sources ORDER BY text", check=True)
    assert "a [bold] text [/b] here :smile:" in table.stdout
    assert "plain [/] text" in table.stdout
    assert name in table.stdout
    assert "Traceback" not in table.stderr
    as_json = json.loads(cli("sql", "-w", wd, "SELECT text FROM sources ORDER BY text", "-f", "json",
                             check=True).stdout)
    assert [r["text"] for r in as_json] == ["a [bold] text [/b] here :smile:", "plain [/] text"]


def test_csv_writes_list_columns_as_json(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("one two three\n", encoding="utf-8")
    wd = str(tmp_path / "w")
    cli("ingest", "s.txt", "-w", wd, cwd=tmp_path, check=True)
    proc = cli("sql", "-w", wd, "SELECT ['a,b', 'c\"d'] AS items, {'k': 1} AS st, 2 AS n", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()[:2]
    assert header == "items,st,n"
    import csv

    items, st, n = next(csv.reader([row]))
    assert json.loads(items) == ["a,b", 'c"d'] and json.loads(st) == {"k": 1} and n == "2"


def test_ctrl_c_says_how_to_resume() -> None:
    # a real SIGINT while a verb runs, through the real entry point (main -> Typer -> the verb)
    child = ("import sys, time\n"
             "from pipelines import cli\n"
             "@cli.app.command('wait-here')\n"
             "def wait_here() -> None:\n"
             "    print('ready', flush=True)\n"
             "    time.sleep(120)\n"
             "sys.argv = ['paradistill', 'wait-here']\n"
             "cli.main()\n")
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip() == "interrupted; run the same command again to resume (nothing finished is lost)"


def test_plain_progress_lines_without_a_terminal() -> None:
    from pipelines.progress import PlainProgress

    stream = io.StringIO()
    prog = PlainProgress(interval=0.05, stream=stream)
    prog.start()
    task = prog.add_task("ingest notes[/b].txt", total=4, unit="rows")
    gen = prog.add_task("generate", total=None, unit="req", tokens=0, cost=0.0, projected=1.5)
    for i in range(4):
        prog.advance(task)
        prog.update(gen, advance=2, tokens=10 * (i + 1), cost=0.01 * (i + 1))
        time.sleep(0.12)
    prog.stop()
    lines = stream.getvalue().splitlines()
    ingest = [ln for ln in lines if "ingest notes[/b].txt:" in ln]
    assert ingest and "4/4 (100%)" in ingest[-1], lines
    assert sum("4/4 (100%)" in ln for ln in ingest) == 1  # the finished line once, not repeated
    assert len([ln for ln in lines if ln.startswith("[progress")]) >= 4  # periodic, not only at the end
    last_gen = [ln for ln in lines if "generate:" in ln][-1]
    assert "8, " in last_gen and "40 tok" in last_gen and "$0.0400 of ~$1.50" in last_gen


def test_cli_prints_progress_lines_into_a_log(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("".join(f"sentence number {i} here\n" for i in range(50)), encoding="utf-8")
    proc = cli("ingest", "s.txt", "-w", str(tmp_path / "w"), cwd=tmp_path, check=True)
    assert "ingest s.txt: 50/50 (100%)" in proc.stderr  # stderr is a pipe here, as in `| tee` or CI
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log


def test_candidates_up_to_date_and_sources_counted_on_rerun(tmp_path: Path) -> None:
    (tmp_path / "pairs.jsonl").write_text(
        "".join(json.dumps({"source": f"the source sentence {i}", "paraphrase": f"a rewrite of sentence {i}"}) + "\n"
                for i in range(6)), encoding="utf-8")
    (tmp_path / "r.yaml").write_text(
        "name: rerun\nworkdir: w\nsources: [{path: pairs.jsonl, text_column: source}]\n"
        "teacher: {kind: import, path: pairs.jsonl}\n", encoding="utf-8")
    first = cli("run", "r.yaml", cwd=tmp_path, check=True)
    assert "sources 6 in the workdir (6 new this run" in first.stdout, first.stdout
    again = cli("run", "r.yaml", cwd=tmp_path, check=True)
    assert "sources 6 in the workdir (inputs already ingested; nothing new)" in again.stdout, again.stdout
    cand = cli("candidates", "-w", str(tmp_path / "w"), check=True)
    assert "candidates are up to date: 6 pair(s) from 6 generation(s)" in cand.stdout, cand.stdout



def test_candidates_without_generations_says_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("one two three\n", encoding="utf-8")
    wd = tmp_path / "my work"
    cli("ingest", "s.txt", "-w", str(wd), cwd=tmp_path, check=True)
    proc = cli("candidates", "-w", str(wd))
    assert proc.returncode == 5
    assert f"no generations yet, so no candidates to build; run `paradistill generate -w '{wd}'`" in error_line(proc)


def test_plain_line_rate_and_eta_for_steps_that_advance_in_batches() -> None:
    from pipelines.progress import PlainProgress, plain_line

    prog = PlainProgress(interval=60, stream=io.StringIO())
    task = prog.add_task("generate", total=100, unit="req")
    time.sleep(0.2)
    prog.update(task, advance=20)  # one batch: rich has a single sample and no speed of its own yet
    line = plain_line(prog.tasks[0])
    assert "20/100 (20%)" in line and "- req/s" not in line and "eta -" not in line, line
