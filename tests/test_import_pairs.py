"""Import of teacher corpora made elsewhere (`teacher.kind: import`): layouts, quarantine, ids, idempotence."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest

from curation.import_pairs import parse_paraphrase_value
from curation.text import normalize, request_id, text_id
from pipelines.manifest import RunManifest
from pipelines.steps.candidates import build_candidates
from pipelines.steps.import_pairs import import_pairs
from pipelines.store import Workdir
from schemas.errors import InputError
from schemas.recipe import ImportTeacherConfig


def _import(wd_path, max_chars=2000, progress=None, **cfg):
    cfg = ImportTeacherConfig(kind="import", **cfg)
    wd = Workdir(wd_path)
    with wd:
        manifest = RunManifest(wd, "ingest-pairs")
        stats = import_pairs(wd, cfg, max_chars, manifest, progress)
        manifest.finish()
    return wd, stats, manifest


def _counts(wd: Workdir) -> dict[str, int]:
    return {t: wd.count(t) for t in ("sources", "generations", "quarantine", "candidates")}


def _quarantine(wd: Workdir) -> dict[int, tuple[str, str]]:
    q = wd.read("quarantine").filter(pl.col("stage") == "import").sort("origin_row")
    return {r: (f, reason) for r, f, reason in q.select("origin_row", "field", "reason").iter_rows()}


def _write_jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))


# -- the parser --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "strategy", "items", "problem"),
    [
        ("Plain paraphrase.", "single", ["Plain paraphrase."], None),
        ('["a", "b"]', "list", ["a", "b"], None),
        (str(["What's up?", "How's it going?"]), "list", ["What's up?", "How's it going?"], None),  # mixed quotes
        ("[sic] that is what he said", "single", ["[sic] that is what he said"], None),
        ("[sic]", "single", ["[sic]"], None),
        ("[laughs] Sure, why not.", "single", ["[laughs] Sure, why not."], None),
        ("['quoted'] is what he said", "single", ["['quoted'] is what he said"], None),
        (["x", None, ""], "list", ["x", "", ""], None),
        (("x", "y"), "list", ["x", "y"], None),
        ("['a', 'b'", "list", None, "unparseable paraphrase list"),
        ("['a', 'b', 'c]", "list", None, "unparseable paraphrase list"),
        ("[]", "list", None, "empty paraphrase list"),
        ([], "list", None, "empty paraphrase list"),
        ("[1, 2]", "list", None, "paraphrase list item 1 is int, expected string"),
        (["a", ["b"]], "list", None, "paraphrase list item 2 is list, expected string"),
        (None, "single", None, "empty paraphrase (null)"),
        ("   ", "single", None, "empty paraphrase"),
        (7, "single", None, "paraphrase is int, expected a string or a list of strings"),
        ({"p": "x"}, "single", None, "paraphrase is dict, expected a string or a list of strings"),
    ],
)
def test_parse_paraphrase_value(value, strategy, items, problem):
    parsed = parse_paraphrase_value(value)
    assert parsed.strategy == strategy
    assert parsed.items == items
    if problem is None:
        assert parsed.problem is None
    else:
        assert parsed.problem is not None and parsed.problem.startswith(problem), parsed.problem


def test_python_literal_is_parsed_without_eval():
    # an expression that eval() would run (and that ast.literal_eval refuses) is never a list of paraphrases
    parsed = parse_paraphrase_value("[__import__('os').getcwd()]")
    assert parsed.items != [__import__("os").getcwd()]
    assert parsed.strategy == "single" or parsed.problem


# -- layout (a): one pair per row -------------------------------------------------------------------------
def test_pairs_jsonl_grouped_by_source_with_quarantine_and_candidates(tmp_path):
    src = tmp_path / "pairs.jsonl"
    _write_jsonl(src, [
        {"source": "How are you?", "paraphrase": "How do you do?"},  # 1
        {"source": "How  are\tyou?", "paraphrase": "How are you doing?"},  # 2: same source after normalising
        {"source": "What is AI?", "paraphrase": " What is  AI? "},  # 3: a copy of its source
        {"source": "What is AI?", "paraphrase": "[citation needed] AI is what?"},  # 4: ordinary string with [
        '{"source": "broken", ',  # 5: invalid JSON
        {"source": 5, "paraphrase": "five"},  # 6
        {"paraphrase": "orphan"},  # 7: no source field
        {"source": "Ok then.", "paraphrase": None},  # 8
        {"source": "Ok then.", "paraphrase": "   "},  # 9
        {"source": "  ", "paraphrase": "x"},  # 10
        {"source": "Fine.", "paraphrase": "Good."},  # 11
        ["not", "an", "object"],  # 12
    ])
    wd, stats, manifest = _import(tmp_path / "wd", path=str(src))
    assert stats["rows"] == 12
    assert stats["generations"] == 5 and stats["quarantined"] == 7
    assert stats["generations"] + stats["quarantined"] == stats["rows"]
    assert stats["items"] == 5 and stats["single_rows"] == 5 and stats["list_rows"] == 0
    assert stats["sources_new"] == 3 and stats["skipped"] is False

    q = _quarantine(wd)
    assert sorted(q) == [5, 6, 7, 8, 9, 10, 12]
    assert q[5][0] == "row" and q[5][1].startswith("invalid JSON")
    assert q[6] == ("source", "source is int, expected string")
    assert q[7] == ("source", "missing field 'source'")
    assert q[8] == ("paraphrase", "empty paraphrase (null)")
    assert q[9] == ("paraphrase", "empty paraphrase")
    assert q[10] == ("source", "empty source")
    assert q[12][1] == "expected a JSON object, got list"

    sources = wd.read("sources").sort("origin_row")
    assert sources.select("text", "origin_row").rows() == [("How are you?", 1), ("What is AI?", 3), ("Fine.", 11)]
    assert all(sid == text_id(t) for sid, t in sources.select("source_id", "text").iter_rows())

    gens = wd.read("generations")
    assert gens.height == 5
    assert set(gens["teacher_kind"]) == {"import"} and set(gens["model"]) == {"imported"}
    assert set(gens["strategy"]) == {"single"} and set(gens["finish_reason"]) == {"imported"}
    assert gens["temperature"].null_count() == 5 and gens["parse_error"].null_count() == 5
    assert set(gens["sample_index"]) == {0} and set(gens["n_requested"]) == {1}
    version = stats["prompt_version"]
    assert version.startswith("import@") and set(gens["prompt_version"]) == {version}
    how = text_id("How are you?")
    assert gens.filter(pl.col("source_id") == how).height == 2  # grouped under one source
    expected_ids = {request_id("import", "imported", version, {}, how, 1),
                    request_id("import", "imported", version, {}, how, 2)}
    assert set(gens.filter(pl.col("source_id") == how)["request_id"]) == expected_ids
    row4 = gens.filter(pl.col("raw_output") == "[citation needed] AI is what?")
    assert row4["items"].to_list() == [["[citation needed] AI is what?"]]
    assert gens["run_id"].unique().to_list() == [manifest.run_id]
    assert manifest.data["inputs"][0]["sha256"]

    with wd:
        c = build_candidates(wd)
    assert c["pairs"] == 5 and c["source_copies"] == 1
    cands = wd.read("candidates")
    copies = cands.filter(pl.col("is_source_copy"))
    assert copies["paraphrase"].to_list() == ["What is AI?"]
    assert cands.filter(~pl.col("is_source_copy")).height == 4


# -- layout (b): one source with a list per row ------------------------------------------------------------
def test_humarin_like_csv_with_python_literal_lists(tmp_path):
    long = "word " * 20
    rows = [
        ("How can I be a good geologist?",
         str(["What should I do to be a great geologist?", "How can I become a good geologist?",
              "What's the way to become a geologist?"])),  # 1: Python literal, mixed quotes
        ("Is it raining?", json.dumps(["Does it rain?", "", "Is rain falling?"])),  # 2: JSON, one empty item
        ("Why?", "['unterminated', 'list'"),  # 3
        ("Who?", "[]"),  # 4
        ("Where?", "[1, 2]"),  # 5
        ("When?", "[laughs] Whenever you like."),  # 6: not a list literal: one paraphrase
        (long, str(["too long a source"])),  # 7
        ("What?", str(["", "  "])),  # 8
        ("How can I be a good geologist?", str(["How can I be a good geologist?"])),  # 9: copy, same source
    ]
    df = pl.DataFrame({"text": [r[0] for r in rows], "paraphrases": [r[1] for r in rows],
                       "category": ["question"] * len(rows), "source": ["quora"] * len(rows)})
    path = tmp_path / "humarin.csv"
    df.write_csv(path)
    wd, stats, _ = _import(tmp_path / "wd", max_chars=60, path=str(path), source_column="text",
                           paraphrase_column="paraphrases", teacher="gpt-3.5-turbo")
    assert (stats["rows"], stats["generations"], stats["quarantined"]) == (9, 4, 5)
    assert stats["items"] == 3 + 2 + 1 + 1 and stats["empty_items"] == 1
    assert stats["list_rows"] == 3 and stats["single_rows"] == 1
    q = _quarantine(wd)
    assert sorted(q) == [3, 4, 5, 7, 8]
    assert q[3][0] == "paraphrases" and q[3][1].startswith("unparseable paraphrase list")
    assert q[4][1] == "empty paraphrase list"
    assert q[5][1] == "paraphrase list item 1 is int, expected string"
    assert q[7][0] == "text" and "over max_chars=60" in q[7][1]
    assert q[8][1] == "every paraphrase in the list is empty"
    raw3 = wd.read("quarantine").filter(pl.col("origin_row") == 3)["raw"][0]
    assert raw3 == "['unterminated', 'list'"

    sources = wd.read("sources")
    assert "quora" not in sources["text"].to_list()  # the text column, not humarin's `source` column
    assert sorted(sources["text"]) == sorted(["How can I be a good geologist?", "Is it raining?", "When?"])
    gens = wd.read("generations")
    assert set(gens["model"]) == {"gpt-3.5-turbo"}
    g1 = gens.filter(pl.col("n_requested") == 3).sort("strategy")
    assert g1.height == 2  # rows 1 and 2 asked for three each
    rain = gens.filter(pl.col("source_id") == text_id("Is it raining?"))
    assert rain["items"].to_list() == [["Does it rain?", "Is rain falling?"]]
    assert rain["raw_output"][0] == rows[1][1] and rain["strategy"][0] == "list"
    when = gens.filter(pl.col("source_id") == text_id("When?"))
    assert when["strategy"][0] == "single" and when["items"].to_list() == [["[laughs] Whenever you like."]]

    with wd:
        c = build_candidates(wd)
    assert c["pairs"] == 7 and c["source_copies"] == 1
    geo = wd.read("candidates").filter(pl.col("source_id") == text_id("How can I be a good geologist?"))
    assert geo.height == 4 and geo["is_source_copy"].sum() == 1


def test_parquet_real_list_column_and_hf_save_to_disk_folder(tmp_path):
    import datasets

    data = {"question": ["Is it cold?", "Can I go?", "Who is it?", "Why not?"],
            "answers": [["Is it chilly?", "Is the weather cold?"], ["May I go?", None, " "], [], None]}
    pl.DataFrame(data).write_parquet(tmp_path / "lists.parquet")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({k: v[:1] for k, v in data.items()}),
                               "test": datasets.Dataset.from_dict(data)})
    dd.save_to_disk(str(tmp_path / "saved"))
    for ref, split in (("lists.parquet", "train"), ("saved", "test")):
        wd, stats, _ = _import(tmp_path / f"wd-{ref}", path=str(tmp_path / ref), source_column="question",
                               paraphrase_column="answers", split=split)
        assert (stats["rows"], stats["generations"], stats["quarantined"]) == (4, 2, 2), ref
        assert stats["items"] == 3 and stats["empty_items"] == 2, ref
        assert _quarantine(wd) == {3: ("answers", "empty paraphrase list"), 4: ("answers", "empty paraphrase (null)")}
        gens = wd.read("generations").sort("n_requested")
        assert gens["strategy"].to_list() == ["list", "list"]
        assert gens["n_requested"].to_list() == [2, 3]
        assert gens["items"].to_list() == [["Is it chilly?", "Is the weather cold?"], ["May I go?"]]
        assert json.loads(gens["raw_output"][0]) == ["Is it chilly?", "Is the weather cold?"]
        with wd:
            assert build_candidates(wd)["pairs"] == 3


# -- idempotence, resume, limit, progress ------------------------------------------------------------------
def _pairs_file(tmp_path, n=12):
    path = tmp_path / "pairs.jsonl"
    lines = []
    for i in range(n):
        lines.append({"source": f"Sentence number {i // 2}.", "paraphrase": f"Paraphrase {i}."})
    lines[5] = {"source": "", "paraphrase": "no source"}
    _write_jsonl(path, lines)
    return path


def test_reimport_writes_nothing_and_a_killed_import_resumes_without_duplicates(tmp_path):
    path = _pairs_file(tmp_path)
    wd, first, _ = _import(tmp_path / "wd", path=str(path))
    assert first["written"] == {"generations": 11, "quarantine": 1, "sources": 6}
    counts = _counts(wd)
    assert counts == {"sources": 6, "generations": 11, "quarantine": 1, "candidates": 0}
    shards = {t: set(wd.shards(t)) for t in ("sources", "generations", "quarantine")}

    _, again, _ = _import(tmp_path / "wd", path=str(path))
    assert again["skipped"] is True and again["written"] == {"generations": 0, "quarantine": 0, "sources": 0}
    assert again["generations"] == 11 and again["prompt_version"] == first["prompt_version"]
    assert _counts(wd) == counts

    # a kill after the sources and generations appends, before quarantine and the stage marker
    for marker in (wd.root / "state").glob("import-*.json"):
        marker.unlink()
    for shard in set(wd.shards("quarantine")) - {p for p in wd.shards("quarantine") if "schema" in p.name}:
        assert shard in shards["quarantine"]
        shard.unlink()
    _, resumed, _ = _import(tmp_path / "wd", path=str(path))
    assert resumed["skipped"] is False
    assert resumed["written"] == {"generations": 0, "quarantine": 1, "sources": 0}
    assert _counts(wd) == counts


def test_limit_then_full_import_adds_only_the_rest(tmp_path):
    from rich.console import Console
    from rich.progress import Progress

    path = _pairs_file(tmp_path)
    wd, part, _ = _import(tmp_path / "wd", path=str(path), limit=7)  # row 6 (empty source) is quarantined
    assert (part["rows"], part["generations"], part["quarantined"], part["sources_new"]) == (7, 6, 1, 4)
    progress = Progress(console=Console(file=io.StringIO(), force_terminal=False))
    _, full, _ = _import(tmp_path / "wd", path=str(path), progress=progress)
    assert full["written"] == {"generations": 5, "quarantine": 0, "sources": 2}
    assert (full["rows"], full["generations"], full["quarantined"]) == (12, 11, 1)
    assert _counts(wd) == {"sources": 6, "generations": 11, "quarantine": 1, "candidates": 0}
    assert progress.tasks[0].completed == progress.tasks[0].total == 12
    ref_wd, _, _ = _import(tmp_path / "ref", path=str(path))
    assert sorted(wd.read("generations")["request_id"]) == sorted(ref_wd.read("generations")["request_id"])
    # a changed file is a new import (new prompt version), not a silent skip
    path.write_text(path.read_text() + json.dumps({"source": "New one.", "paraphrase": "A new one."}) + "\n")
    _, changed, _ = _import(tmp_path / "wd", path=str(path))
    assert changed["skipped"] is False and changed["prompt_version"] != full["prompt_version"]
    assert changed["rows"] == 13 and changed["sources_new"] == 1


def test_normalised_items_and_sources_match_the_text_helpers(tmp_path):
    path = tmp_path / "p.jsonl"
    _write_jsonl(path, [{"source": "Cafe\u0301\u00a0time.", "paraphrase": ["  Coffee\ttime. ", "Cafe\u0301 hour."]}])
    wd, stats, _ = _import(tmp_path / "wd", path=str(path))
    assert stats["list_rows"] == 1
    assert wd.read("sources")["text"].to_list() == [normalize("Cafe\u0301\u00a0time.")] == ["Caf\u00e9 time."]
    assert wd.read("generations")["items"].to_list() == [["Coffee time.", "Caf\u00e9 hour."]]


# -- user mistakes -----------------------------------------------------------------------------------------
def _csv(p):
    pl.DataFrame({"text": ["a"], "paraphrases": ["b"], "category": ["c"]}).write_csv(p / "x.csv")
    return "x.csv"


def _parquet(p):
    pl.DataFrame({"text": ["a"], "paraphrases": [["b"]], "category": ["c"]}).write_parquet(p / "x.parquet")
    return "x.parquet"


def _hf(p):
    import datasets

    datasets.Dataset.from_dict({"text": ["a"], "paraphrases": [["b"]], "category": ["c"]}).save_to_disk(str(p / "ds"))
    return "ds"


@pytest.mark.parametrize("make", [_csv, _parquet, _hf])
def test_missing_column_names_it_and_lists_the_available_ones(tmp_path, make):
    ref = str(tmp_path / make(tmp_path))
    with pytest.raises(InputError) as err:  # default source_column is "source", which these files lack
        _import(tmp_path / "wd", path=ref, paraphrase_column="paraphrases")
    msg = str(err.value)
    assert "\n" not in msg and ref in msg
    assert "no column 'source'" in msg and "(columns: text, paraphrases, category)" in msg
    assert "--source-column" in msg
    with pytest.raises(InputError, match=r"no column 'paraphrase' \(columns: text, paraphrases, category\)"):
        _import(tmp_path / "wd", path=ref, source_column="text")


@pytest.mark.parametrize(
    ("make", "cfg", "needle"),
    [
        (lambda p: (p / "o.jsonl").write_text(json.dumps({"body": "x", "paraphrase": "y"}) + "\n"), {"path": "o.jsonl"},
         "no line has field 'source' (fields seen: body, paraphrase)"),
        (lambda p: None, {"path": "missing.csv"}, "no such file"),
        (lambda p: (p / "a.txt").write_text("hello\n"), {"path": "a.txt"}, "a .txt file has no columns"),
        (lambda p: (p / "n.parquet").write_bytes(b"PAR1 nope"), {"path": "n.parquet"}, "not a readable Parquet"),
        (lambda p: (p / "x.docx").write_text("hi"), {"path": "x.docx"}, "unknown file type '.docx'"),
        (lambda p: pl.DataFrame({"source": [1, 2], "paraphrase": ["a", "b"]}).write_parquet(p / "i.parquet"),
         {"path": "i.parquet"}, "source column 'source' holds Int64, not text"),
        (lambda p: pl.DataFrame({"s": ["a"]}).write_csv(p / "same.csv"),
         {"path": "same.csv", "source_column": "s", "paraphrase_column": "s"}, "are both 's'"),
        (lambda p: None, {"path": "nobody-here/no-such-dataset"}, "nobody-here/no-such-dataset"),
    ],
)
def test_bad_inputs_raise_one_line_input_errors(tmp_path, make, cfg, needle):
    make(tmp_path)
    cfg = {**cfg, "path": str(tmp_path / cfg["path"]) if "/" not in cfg["path"] else cfg["path"]}
    with pytest.raises(InputError) as err:
        _import(tmp_path / "wd", **cfg)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg
    assert cfg["path"] in msg


def test_an_import_in_slices_writes_what_one_slice_writes(tmp_path, monkeypatch):
    """Large inputs are turned into rows a slice at a time; a source repeated across slices, a source copy and
    quarantined rows in every slice end exactly as in one pass (tables and counts)."""
    import pipelines.steps.import_pairs as step

    lines = [{"source": f"Sentence number {i % 7}.", "paraphrase": f"Rewrite {i} of it."} for i in range(40)]
    lines[5] = {"source": "Sentence number 5.", "paraphrase": "sentence number 5."}  # a copy of its source
    lines[9] = '{"source": "broken", '  # invalid JSON
    lines[23] = {"source": 3, "paraphrase": "x"}
    path = tmp_path / "pairs.jsonl"
    _write_jsonl(path, lines)
    _, one, _ = _import(tmp_path / "one", path=str(path))
    monkeypatch.setattr(step, "IMPORT_SLICE", 3)
    wd, sliced, _ = _import(tmp_path / "sliced", path=str(path))
    assert len(wd.shards("generations")) > 10  # it did run in slices
    drop = ("seconds", "run_id")
    assert {k: v for k, v in sliced.items() if k not in drop} == {k: v for k, v in one.items() if k not in drop}
    assert sliced["sources"] == 7 and sliced["sources_new"] == 7 and sliced["quarantined"] == 2
    first = Workdir(tmp_path / "one")
    for table, key in (("sources", "source_id"), ("generations", "request_id"), ("quarantine", "origin_row")):
        a, b = (w.read(table).drop("run_id", strict=False).sort(key) for w in (first, wd))
        assert a.equals(b), table
