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


# -- issue 12: inputs that crashed or were described wrongly ----------------------------------------------
def _cli_sql(wd, query: str) -> list[dict]:
    proc = cli("sql", "-w", str(wd), query, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _sql(wd, query: str) -> list[dict]:
    con = duckdb.connect(str(wd / "catalog.duckdb"), read_only=True)
    try:
        return con.sql(query).pl().to_dicts()
    finally:
        con.close()


def _quarantine(wd) -> dict[int, dict]:
    rows = _sql(wd, "SELECT origin_row, field, reason, raw FROM quarantine ORDER BY origin_row")
    return {r["origin_row"]: r for r in rows}


def _ingest_ok(path, wd, summary: str, *extra: str):
    proc = cli("ingest", str(path), "-w", str(wd), *extra)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert summary in proc.stdout, proc.stdout
    return proc


@pytest.fixture
def good_workdir(tmp_path):
    """A workdir holding one good ingest; every bad input below goes into it and must leave it answering the same."""
    good = tmp_path / "good.txt"
    good.write_text("The cat sat on the mat.\nIt rained all day.\n")
    wd = tmp_path / "wd"
    _ingest_ok(good, wd, "read 2, kept 2")
    query = "SELECT source_id, text, origin_row FROM sources WHERE origin LIKE '%good.txt' ORDER BY origin_row"
    before = _cli_sql(wd, query)
    yield wd
    assert _cli_sql(wd, query) == before


def test_lone_surrogate_in_jsonl_is_quarantined_naming_the_field(tmp_path, good_workdir):
    src = tmp_path / "données d'entrée.jsonl"
    src.write_text('{"text": "A fine sentence."}\n{"text": "bad \\ud800 here"}\n'
                   '{"text": "An emoji \\ud83d\\ude00 pair is fine."}\n', encoding="utf-8")
    _ingest_ok(src, good_workdir, "read 3, kept 2, duplicates 0, quarantined 1")
    q = _quarantine(good_workdir)
    assert q[2]["field"] == "text"
    assert q[2]["reason"].startswith("field 'text' holds a lone surrogate \\ud800 at character 5")
    assert q[2]["raw"] == "bad \\ud800 here"
    texts = [r["text"] for r in _sql(good_workdir, "SELECT text FROM sources ORDER BY origin, origin_row")]
    assert "An emoji \U0001F600 pair is fine." in texts


def test_lone_surrogate_in_imported_pairs_is_quarantined_naming_the_column(tmp_path):
    src = tmp_path / "pairs.jsonl"
    rows = ['{"s": "Keep this one.", "p": "This one is kept."}',
            '{"s": "Bad source \\udfff.", "p": "x"}',
            '{"s": "Good source.", "p": ["fine", "bad \\ud800 item"]}']
    src.write_text("\n".join(rows) + "\n")
    wd = tmp_path / "wd"
    proc = cli("ingest-pairs", str(src), "--source-column", "s", "--paraphrase-column", "p", "-w", str(wd))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    q = _quarantine(wd)
    assert sorted(q) == [2, 3]
    assert q[2]["field"] == "s" and "field 's' holds a lone surrogate \\udfff" in q[2]["reason"]
    assert q[3]["field"] == "p" and "field 'p' holds a lone surrogate \\ud800" in q[3]["reason"]


def test_whitespace_only_file_quarantines_every_line(tmp_path, good_workdir):
    src = tmp_path / "blank lines.txt"
    src.write_text("   \n\t\n \u00a0 \n")
    _ingest_ok(src, good_workdir, "read 3, kept 0, duplicates 0, quarantined 3")
    assert [r["reason"] for r in _quarantine(good_workdir).values()] == ["empty line"] * 3
    jl = tmp_path / "blank.jsonl"
    jl.write_text("\n  \n")
    _ingest_ok(jl, good_workdir, "read 2, kept 0, duplicates 0, quarantined 2")


@pytest.mark.parametrize(("name", "body", "needle"), [
    ("zero.txt", b"", "file is empty (0 bytes)"),
    ("blank.csv", b"  \n\t\n", "holds only whitespace (no header row)"),
])
def test_empty_and_whitespace_csv_say_which(tmp_path, good_workdir, name, body, needle):
    (tmp_path / name).write_bytes(body)
    proc = cli("ingest", name, "-w", str(good_workdir), cwd=tmp_path)
    assert proc.returncode == 3
    assert error_line(proc) == f"error: {name}: {needle}; nothing to ingest"


def test_utf16_text_is_decoded_like_its_utf8_twin(tmp_path, good_workdir):
    text = "The cat sat on the mat.\r\nCafé au lait, s'il vous plaît.\r\n"
    for codec in ("utf-16", "utf-16-le"):  # with a BOM (Notepad, PowerShell), and without one
        src = tmp_path / f"u {codec}.txt"
        src.write_bytes(text.encode(codec))
        _ingest_ok(src, good_workdir, "read 2, kept")
    rows = _sql(good_workdir, "SELECT origin, text, source_id FROM sources ORDER BY origin, origin_row")
    texts = {r["text"]: r["source_id"] for r in rows}
    assert texts["Café au lait, s'il vous plaît."] == text_id("Café au lait, s'il vous plaît.")
    assert texts["The cat sat on the mat."] == text_id("The cat sat on the mat.")
    dups = _sql(good_workdir, "SELECT count(*) AS n FROM source_duplicates")
    assert dups == [{"n": 3}]  # the cat twice more, the café line once more: same ids as UTF-8 text


def test_broken_utf16_names_utf16_and_iconv(tmp_path, good_workdir):
    name = "export (utf16).txt"
    (tmp_path / name).write_bytes("hello\n".encode("utf-16") + b"\x00\xd8")  # ends in a lone high surrogate
    proc = cli("ingest", name, "-w", str(good_workdir), cwd=tmp_path)
    assert proc.returncode == 3
    line = error_line(proc)
    assert line.startswith(f"error: {name}: is UTF-16 text but does not decode at byte")
    assert f"iconv -f UTF-16 -t UTF-8 {name} > {name}.utf8.txt" in line
    assert "binary" not in line


def test_csv_with_a_ragged_row_quarantines_that_row(tmp_path, good_workdir):
    src = tmp_path / "ragged.csv"
    src.write_text('text,id\nFirst row.,1\nSecond, with a comma,2\n"Third,\nover two lines",3\nFourth,4,x\n'
                   'Fifth.,5\n')
    _ingest_ok(src, good_workdir, "read 5, kept 3, duplicates 0, quarantined 2")
    q = _quarantine(good_workdir)
    assert q[2]["reason"] == "record has 3 fields, the header has 2 (line 3); quote the field that holds the separator"
    assert q[2]["raw"] == "Second, with a comma,2"
    assert q[4]["reason"].startswith("record has 3 fields, the header has 2 (line 6)")
    kept = _sql(good_workdir, "SELECT origin_row, text FROM sources WHERE origin LIKE '%ragged.csv' ORDER BY 1")
    assert kept == [{"origin_row": 1, "text": "First row."}, {"origin_row": 3, "text": "Third, over two lines"},
                    {"origin_row": 5, "text": "Fifth."}]


def test_csv_ragged_row_in_imported_pairs_is_quarantined(tmp_path):
    src = tmp_path / "pairs.csv"
    src.write_text("s,p\nA source.,A paraphrase.\nB source,has,too many\nC source.,C paraphrase.\n")
    wd = tmp_path / "wd"
    proc = cli("ingest-pairs", str(src), "--source-column", "s", "--paraphrase-column", "p", "-w", str(wd))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    q = _quarantine(wd)
    assert list(q) == [2] and q[2]["reason"].startswith("record has 3 fields, the header has 2 (line 3)")
    assert _sql(wd, "SELECT count(*) AS n FROM generations") == [{"n": 2}]


def test_invalid_json_reason_reads_once(tmp_path, good_workdir):
    src = tmp_path / "broken.jsonl"
    src.write_text('{"text": "unterminated}\n{"text": "ok"} x\n')
    _ingest_ok(src, good_workdir, "read 2, kept 0, duplicates 0, quarantined 2")
    q = _quarantine(good_workdir)
    assert q[1]["reason"] == "invalid JSON (Unterminated string starting at column 10)"
    assert q[2]["reason"] == "invalid JSON (Extra data at column 16)"


def test_nul_byte_inside_a_line_is_quarantined_not_stored(tmp_path, good_workdir):
    txt = tmp_path / "nul.txt"
    txt.write_bytes(b"Before the NUL.\nwor\x00ld\nAfter the NUL.\n")
    _ingest_ok(txt, good_workdir, "read 3, kept 2, duplicates 0, quarantined 1")
    jl = tmp_path / "nul.jsonl"
    jl.write_text('{"text": "nul \\u0000 inside"}\n{"text": "escape \\u001b[31m red"}\n{"text": "tab\\tis fine"}\n')
    _ingest_ok(jl, good_workdir, "read 3, kept 1, duplicates 0, quarantined 2")
    reasons = [r["reason"] for r in _sql(good_workdir, "SELECT reason FROM quarantine ORDER BY origin, origin_row")]
    assert reasons == [
        "contains a NUL byte (U+0000) at character 5; remove it or fix the export that wrote it",
        "contains a control character (U+001B) at character 8; remove it or fix the export that wrote it",
        "contains a NUL byte (U+0000) at character 4; remove it or fix the export that wrote it",
    ]
    assert _sql(good_workdir, "SELECT count(*) AS n FROM sources WHERE contains(text, chr(0))") == [{"n": 0}]
    assert _sql(good_workdir, "SELECT text FROM sources WHERE origin LIKE '%nul.jsonl'") == [{"text": "tab is fine"}]
