"""Ingest through the real CLI: formats, normalisation, duplicates, quarantine, and one-line errors."""

import json

import duckdb
import polars as pl
import pytest

from curation.ingest import prepare_sources, read_txt
from curation.text import normalize, normalize_expr, text_id
from tests.conftest import cli, error_line


def _counts(wd):
    con = duckdb.connect(str(wd / "catalog.duckdb"), read_only=True)
    try:
        return {t: con.execute(f"select count(*) from {t}").fetchall()[0][0]
                for t in ("sources", "quarantine", "source_duplicates")}
    finally:
        con.close()


def test_normalisation_vectorised_equals_scalar():
    texts = ["  a\u00a0b\tc\n", "Cafe\u0301  x", "x\u2003y", "plain", "\u3000lead"]
    vec = pl.DataFrame({"t": texts}).select(normalize_expr("t")).get_column("t").to_list()
    assert vec == [normalize(t) for t in texts]
    assert normalize("Cafe\u0301") == "Caf\u00e9"


def test_txt_every_row_is_kept_duplicate_or_quarantined(tmp_path):
    src = tmp_path / "in.txt"
    long = "word " * 50
    src.write_bytes(b"Hello  world.\nThe cat sat.\n\nHello world.\n" + b"bad \xff byte\n" +
                    long.encode() + b"\r\nCafe\xcc\x81 time.\n")
    wd = tmp_path / "wd"
    proc = cli("ingest", str(src), "-w", str(wd), "--max-chars", "100", check=True)
    assert "read 7, kept 3, duplicates 1, quarantined 3" in proc.stdout
    q = pl.read_parquet(wd / "tables/quarantine/*.parquet").sort("origin_row")
    assert q["origin_row"].to_list() == [3, 5, 6]
    assert q["reason"][0] == "empty line"
    assert q["reason"][1].startswith("undecodable bytes")
    assert "over max_chars=100" in q["reason"][2]
    s = pl.read_parquet(wd / "tables/sources/*.parquet")
    assert "Caf\u00e9 time." in s["text"].to_list()
    assert all(sid == text_id(t) for sid, t in s.select("source_id", "text").iter_rows())
    assert _counts(wd) == {"sources": 3, "quarantine": 3, "source_duplicates": 1}
    # the same file again is recognised and skipped; nothing is written twice
    again = cli("ingest", str(src), "-w", str(wd), "--max-chars", "100", check=True)
    assert "skipped" in again.stdout
    assert _counts(wd) == {"sources": 3, "quarantine": 3, "source_duplicates": 1}


def test_jsonl_broken_lines_are_quarantined_with_reasons(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "First sentence."}\n{"text": broken\n{"other": "x"}\n{"text": 5}\n'
                   '["a list"]\n{"text": "Second sentence."}\n')
    wd = tmp_path / "wd"
    proc = cli("ingest", str(src), "-w", str(wd), check=True)
    assert "read 6, kept 2, duplicates 0, quarantined 4" in proc.stdout
    q = pl.read_parquet(wd / "tables/quarantine/*.parquet").sort("origin_row")
    reasons = dict(zip(q["origin_row"], q["reason"], strict=True))
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == "missing field 'text'"
    assert reasons[4] == "field is int, expected string"
    assert reasons[5] == "expected a JSON object, got list"


def test_csv_parquet_and_hf_dataset_folder(tmp_path):
    import datasets

    rows = {"id": ["1", "2", "3"], "question": ["How old is it?", None, "Where is it?"]}
    pl.DataFrame(rows).write_csv(tmp_path / "q.csv")
    pl.DataFrame(rows).write_parquet(tmp_path / "q.parquet")
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    hub_like = tmp_path / "hub_like" / "data"
    hub_like.mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(hub_like / "train-00000-of-00001.parquet")
    for ref in ("q.csv", "q.parquet", "saved", "hub_like"):
        wd = tmp_path / f"wd-{ref}"
        proc = cli("ingest", str(tmp_path / ref), "-w", str(wd), "--text-column", "question", check=True)
        assert "read 3, kept 2, duplicates 0, quarantined 1" in proc.stdout, (ref, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    ("make", "args", "code", "needle"),
    [
        (lambda p: (p / "empty.txt").write_text(""), ["empty.txt"], 3, "file is empty"),
        (lambda p: (p / "bin.txt").write_bytes(b"\x89PNG\x00\x00\x01"), ["bin.txt"], 3, "binary file"),
        (lambda p: (p / "q.csv").write_text("a,b\n1,2\n"), ["q.csv"], 3, "no column 'text' (columns: a, b)"),
        (lambda p: (p / "d").mkdir(), ["d"], 3, "is a directory with no dataset files"),
        (lambda p: None, ["missing.txt"], 3, "no such file"),
        (lambda p: (p / "x.docx").write_text("hi"), ["x.docx"], 3, "unknown file type '.docx'"),
        (lambda p: (p / "o.jsonl").write_text(json.dumps({"body": "x"}) + "\n"), ["o.jsonl"], 3,
         "no line has field 'text' (fields seen: body)"),
        (lambda p: (p / "n.parquet").write_bytes(b"PAR1 not really"), ["n.parquet"], 3, "not a readable Parquet"),
    ],
)
def test_bad_inputs_end_with_one_clear_line(tmp_path, make, args, code, needle):
    make(tmp_path)
    proc = cli("ingest", *args, "-w", str(tmp_path / "wd"), cwd=tmp_path)
    assert proc.returncode == code
    line = error_line(proc)
    assert needle in line and args[0] in line


def test_prepare_sources_counts_add_up_and_respect_known_ids(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("One.\nTwo.\nOne.\n\n")
    raw = read_txt(p)
    known = {text_id("Two.")}
    src, dup, quar = prepare_sources(raw, 100, known, "i1")
    assert (src.height, dup.height, quar.height) == (1, 2, 1)
    assert src.height + dup.height + quar.height == raw.height
