"""The curation quality report: JSON numbers, self-contained and escaped HTML, edge cases, atomic writes."""

from __future__ import annotations

import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from pipelines.report import build_report, render_html, write_report
from schemas.errors import InputError

METRICS = ["cos_sim", "rouge_l", "ted", "nli_min", "numbers_ok"]
REASONS = ["rouge_l>0.75", "nli<0.75", "ted<12", "length_ratio", "new_number"]
EVIL = "<script>alert('x')</script> & \"quoted\""


def make_pairs(n: int = 300, seed: int = 1, all_kept: bool = False) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kept = True if all_kept else rng.random() < 0.55
        reasons = [] if kept else sorted(set(rng.sample(REASONS, rng.randint(1, 2))))
        rows.append({
            "pair_id": f"p{i:05d}",
            "source_id": f"s{i // 5:04d}",
            "source": f"Source sentence number {i}.",
            "paraphrase": EVIL if i == 7 else f"A paraphrase of sentence {i}.",
            "kept": kept,
            "reasons": reasons,
            "cos_sim": None if rng.random() < 0.1 else rng.uniform(0.4, 1.0),
            "rouge_l": rng.uniform(0.0, 1.0),
            "ted": float(rng.randint(0, 40)),
            "nli_min": None,  # scorer not run
            "numbers_ok": None if rng.random() < 0.05 else rng.random() < 0.8,
        })
    schema = {"pair_id": pl.String, "source_id": pl.String, "source": pl.String, "paraphrase": pl.String,
              "kept": pl.Boolean, "reasons": pl.List(pl.String), "cos_sim": pl.Float64, "rouge_l": pl.Float64,
              "ted": pl.Float64, "nli_min": pl.Float64, "numbers_ok": pl.Boolean}
    return pl.DataFrame(rows, schema=schema)


def make_funnel(pairs: pl.DataFrame) -> pl.DataFrame:
    n = pairs.height
    steps, n_in = [], n
    for i, (rule, drop) in enumerate([("nli>=0.75", 40), ("rouge_l<=0.75", 30), ("ted>=12", 25), ("dedup", 0)]):
        drop = min(drop, n_in)
        steps.append({"step": i + 1, "rule": rule, "in": n_in, "dropped": drop, "out": n_in - drop})
        n_in -= drop
    schema = {"step": pl.Int64, "rule": pl.String, "in": pl.Int64, "dropped": pl.Int64, "out": pl.Int64}
    return pl.DataFrame(steps, schema=schema)


def make_corpus(pairs: pl.DataFrame) -> list[dict]:
    kept = int(pairs["kept"].sum()) if pairs.height else 0
    return [
        {"selection": "all", "cos_sim": 85.12, "h2": 17.5, "h3": 21.4, "msttr": 46.2, "jaccard": 43.4,
         "ted_3": 4.04, "ted_f": 17.41, "wpd": 0.21, "ld": 0.43, "pairs": pairs.height, "sources": 60,
         "pairs_per_source": 5.0},
        {"selection": "kept", "cos_sim": 87.68, "h2": 17.75, "h3": 22.46, "msttr": 53.08, "jaccard": 43.62,
         "ted_3": 5.02, "ted_f": 29.84, "wpd": 0.3, "ld": 0.5, "pairs": kept, "sources": 55, "pairs_per_source": None},
        {"selection": "dropped", "cos_sim": None, "h2": None, "h3": None, "msttr": None, "jaccard": None,
         "ted_3": None, "ted_f": None, "wpd": None, "ld": None, "pairs": pairs.height - kept, "sources": 40,
         "pairs_per_source": float("nan")},
    ]


LINEAGE = {"workdir": "/tmp/wd", "recipe": "dimple-small", "recipe_hash": "ab12cd34", "teacher": "smollm2-135m",
           "embed_model": "all-MiniLM-L6-v2", "created": "2026-05-09T10:00:00Z"}


def build(pairs: pl.DataFrame, **kw) -> dict:
    return build_report(pairs, make_funnel(pairs), make_corpus(pairs), METRICS, LINEAGE, **kw)


@pytest.fixture(scope="module")
def pairs() -> pl.DataFrame:
    return make_pairs()


@pytest.fixture(scope="module")
def report(pairs) -> dict:
    return build(pairs)


# -- JSON numbers ----------------------------------------------------------------------------------------------------
def test_report_is_plain_json(report):
    text = json.dumps(report, allow_nan=False)  # NaN in the corpus rows became null
    assert json.loads(text) == report
    assert report["corpus"][2]["pairs_per_source"] is None


def test_totals(report, pairs):
    kept = int(pairs["kept"].sum())
    assert report["totals"]["pairs"] == 300
    assert report["totals"]["kept"] == kept
    assert report["totals"]["dropped"] == 300 - kept
    assert report["totals"]["kept_share"] == pytest.approx(kept / 300)
    assert report["totals"]["sources"] == 60
    assert report["title"] == "Curation quality report: dimple-small"
    assert report["lineage"] == LINEAGE


def test_funnel_rows_preserved(report, pairs):
    funnel = make_funnel(pairs)
    rows = [{k: r[k] for k in ("step", "rule", "in", "dropped", "out")} for r in report["funnel"]]
    assert rows == funnel.to_dicts()
    assert report["funnel"][0]["dropped_share"] == pytest.approx(40 / 300)
    assert report["funnel"][-1]["dropped_share"] == 0


@pytest.mark.parametrize("metric", ["cos_sim", "rouge_l", "ted"])
def test_float_histograms_add_up(report, pairs, metric):
    hist = report["histograms"][metric]
    assert hist["kind"] == "float"
    assert len(hist["edges"]) == 21 and len(hist["kept"]) == 20 and len(hist["dropped"]) == 20
    assert hist["edges"] == sorted(hist["edges"])
    for side, mask in (("kept", pairs["kept"]), ("dropped", ~pairs["kept"])):
        col = pairs.filter(mask)[metric]
        assert sum(hist[side]) == col.len() - col.null_count() == hist["n"][side]
        assert hist["nulls"][side] == col.null_count()
        assert hist["stats"][side]["mean"] == pytest.approx(col.mean())
    values = pairs[metric].drop_nulls()
    assert hist["edges"][0] == pytest.approx(values.min()) and hist["edges"][-1] == pytest.approx(values.max())


def test_histogram_bins_match_a_reference_count(report, pairs):
    hist = report["histograms"]["rouge_l"]
    edges = hist["edges"]
    kept_values = pairs.filter(pl.col("kept"))["rouge_l"].to_list()
    expected = [0] * 20
    for v in kept_values:
        i = next(i for i in range(20) if edges[i] <= v < edges[i + 1] or (i == 19 and v == edges[20]))
        expected[i] += 1
    assert hist["kept"] == expected


def test_bool_histogram(report, pairs):
    hist = report["histograms"]["numbers_ok"]
    assert hist["kind"] == "bool" and hist["labels"] == ["false", "true"]
    for side, mask in (("kept", pairs["kept"]), ("dropped", ~pairs["kept"])):
        col = pairs.filter(mask)["numbers_ok"]
        assert hist[side] == [int((~col).sum()), int(col.sum())]
        assert sum(hist[side]) + hist["nulls"][side] == col.len()


def test_all_null_metric_is_skipped_with_a_note(report):
    hist = report["histograms"]["nli_min"]
    assert hist["kind"] == "empty" and "null" in hist["note"]
    assert any(n.startswith("nli_min:") for n in report["notes"])
    assert list(report["histograms"]) == METRICS


def test_reasons_counted_per_pair_and_sorted(report, pairs):
    dropped = pairs.filter(~pl.col("kept"))
    expected = {r: sum(r in rs for rs in dropped["reasons"].to_list()) for r in REASONS}
    got = {r["reason"]: r["pairs"] for r in report["reasons"]}
    assert got == {r: c for r, c in expected.items() if c}
    counts = [r["pairs"] for r in report["reasons"]]
    assert counts == sorted(counts, reverse=True)
    assert report["reasons"][0]["share_of_dropped"] == pytest.approx(counts[0] / dropped.height)


def test_duplicate_and_missing_reasons():
    pairs = make_pairs(10, all_kept=True).with_columns(
        kept=pl.Series([False, False, True] + [True] * 7),
        reasons=pl.Series([["a", "a"], [], []] + [[]] * 7, dtype=pl.List(pl.String)))
    report = build(pairs)
    assert report["reasons"] == [
        {"reason": "(no reason recorded)", "pairs": 1, "share_of_dropped": 0.5},
        {"reason": "a", "pairs": 1, "share_of_dropped": 0.5},
    ]


def test_samples_deterministic_and_from_the_right_side(report, pairs):
    kept_ids = set(pairs.filter(pl.col("kept"))["pair_id"])
    dropped_ids = set(pairs.filter(~pl.col("kept"))["pair_id"])
    samples = report["samples"]
    assert len(samples["kept"]) == 8 and len(samples["dropped"]) == 8
    assert {s["pair_id"] for s in samples["kept"]} <= kept_ids
    assert {s["pair_id"] for s in samples["dropped"]} <= dropped_ids
    assert len({s["pair_id"] for s in samples["kept"]}) == 8
    by_id = {r["pair_id"]: r for r in pairs.to_dicts()}
    for s in samples["kept"] + samples["dropped"]:
        row = by_id[s["pair_id"]]
        assert s["reasons"] == row["reasons"] and s["paraphrase"] == row["paraphrase"]
        assert set(s["metrics"]) == set(METRICS)
        assert s["metrics"]["rouge_l"] == row["rouge_l"]
    assert all(s["reasons"] for s in samples["dropped"])
    # same seed, shuffled input order: same samples; another seed: other samples
    again = build(pairs.sample(fraction=1.0, shuffle=True, seed=5))
    assert again["samples"] == samples
    other = build(pairs, seed=1)
    assert [s["pair_id"] for s in other["samples"]["kept"]] != [s["pair_id"] for s in samples["kept"]]
    assert len(build(pairs, samples=3)["samples"]["dropped"]) == 3


def test_bins_parameter_constant_and_integer_metrics():
    pairs = make_pairs(50).with_columns(ted=pl.lit(7.5), cos_sim=pl.Series([float(i % 4) for i in range(50)]))
    report = build(pairs, bins=5)
    hist = report["histograms"]["ted"]
    assert len(hist["edges"]) == 6 and hist["edges"][0] < 7.5 < hist["edges"][-1]
    assert sum(hist["kept"]) + sum(hist["dropped"]) == 50
    assert len(report["histograms"]["rouge_l"]["kept"]) == 5
    ints = report["histograms"]["cos_sim"]  # values 0..3: one unit bin per integer
    assert ints["edges"] == [-0.5, 0.5, 1.5, 2.5, 3.5]
    total = [k + d for k, d in zip(ints["kept"], ints["dropped"], strict=True)]
    assert total == [13, 13, 12, 12]
    # the 0..40 integer TED of the main fixture spans more than `bins` values: equal-width bins
    assert len(build(make_pairs(50), bins=5)["histograms"]["ted"]["edges"]) == 6


def test_nan_and_inf_count_as_missing():
    pairs = make_pairs(20).with_columns(rouge_l=pl.Series([float("nan"), float("inf")] + [0.5] * 18))
    hist = build(pairs)["histograms"]["rouge_l"]
    assert hist["n"]["kept"] + hist["n"]["dropped"] == 18
    assert hist["nulls"]["kept"] + hist["nulls"]["dropped"] == 2


def test_missing_column_is_a_clear_input_error(pairs):
    with pytest.raises(InputError, match="reasons"):
        build_report(pairs.drop("reasons"), make_funnel(pairs), [], METRICS, LINEAGE)
    with pytest.raises(InputError, match="dropped"):
        build_report(pairs, make_funnel(pairs).drop("dropped"), [], METRICS, LINEAGE)


# -- HTML -------------------------------------------------------------------------------------------------------------
class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Collector:
    c = _Collector()
    c.feed(html)
    return c


def assert_self_contained(html: str) -> None:
    low = html.lower()
    assert "http://" not in low and "https://" not in low
    assert "<script" not in low and "<link" not in low and "@import" not in low and "url(" not in low
    for tag, attrs in parse(html).tags:
        assert tag not in ("script", "img", "iframe", "link", "object", "embed"), tag
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)


def test_html_self_contained_and_escaped(pairs):
    report = build(pairs, samples=1000)  # every pair is shown, the malicious one (p00007) among them
    html = render_html(report)
    assert html.startswith("<!DOCTYPE html>")
    assert_self_contained(html)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in html
    # the page text read back by a parser shows the paraphrase literally, and the lineage
    text = "".join(parse(html).text)
    assert EVIL in text and "dimple-small" in text and "ab12cd34" in text


def test_malicious_text_everywhere_is_escaped(pairs):
    evil_pairs = pairs.with_columns(paraphrase=pl.lit(EVIL), source=pl.lit(EVIL),
                                    reasons=pl.when(pl.col("kept")).then(pl.col("reasons"))
                                    .otherwise(pl.lit([EVIL], dtype=pl.List(pl.String))))
    evil_funnel = make_funnel(pairs).with_columns(rule=pl.lit(EVIL))
    lineage = {**LINEAGE, "recipe": EVIL, EVIL: "key"}
    corpus = [{**make_corpus(pairs)[0], "selection": EVIL}]
    report = build_report(evil_pairs, evil_funnel, corpus, METRICS, lineage)
    html = render_html(report)
    assert_self_contained(html)
    assert "<script>" not in html and "&lt;script&gt;" in html
    text = "".join(parse(html).text)
    assert text.count(EVIL) >= 2 * 8 + 4  # every sample's source+paraphrase, funnel rules, reason, lineage


def test_one_svg_per_charted_metric(report):
    html = render_html(report)
    charts = [a for t, a in parse(html).tags if t == "svg" and a.get("class") == "hist"]
    labels = [a["aria-label"] for a in charts]
    assert labels == ["histogram of cos_sim", "histogram of rouge_l", "histogram of ted", "histogram of numbers_ok"]
    assert "Skipped: all values null" in html
    funnel_bars = [a for t, a in parse(html).tags if t == "svg" and a.get("aria-label", "").startswith("in ")]
    assert len(funnel_bars) == 4
    # every bar's count is visible in its tooltip
    nonzero = sum(c > 0 for h in ("cos_sim", "rouge_l", "ted", "numbers_ok") for c in report["histograms"][h]["kept"])
    assert len(re.findall(r"<rect [^>]*><title>kept ", html)) == nonzero


def test_html_shows_corpus_funnel_and_reason_numbers(report):
    html = render_html(report)
    for header in ("cos-sim", "H2", "H3", "MSTTR", "Jaccard", "TED-3", "TED-F", "WPD", "LD", "pairs/source"):
        assert f">{header}" in html
    assert "87.68" in html and "29.84" in html and "lower = more diverse" in html
    text = "".join(parse(html).text)
    for r in report["reasons"]:
        assert r["reason"] in text
    assert "rouge_l&lt;=0.75" in html or "rouge_l<=0.75" in text


def test_zero_dropped_pairs():
    pairs = make_pairs(40, all_kept=True)
    report = build(pairs)
    assert report["totals"]["dropped"] == 0 and report["reasons"] == [] and report["samples"]["dropped"] == []
    for m in ("cos_sim", "rouge_l", "ted"):
        assert sum(report["histograms"][m]["dropped"]) == 0 and report["histograms"][m]["stats"]["dropped"]["mean"] \
            is None
    html = render_html(report)
    assert_self_contained(html)
    assert "No dropped pairs" in html
    json.dumps(report, allow_nan=False)


def test_zero_pairs():
    pairs = make_pairs(0)
    report = build_report(pairs, make_funnel(pairs).clear(), make_corpus(pairs), METRICS, LINEAGE)
    assert report["totals"] == {"pairs": 0, "kept": 0, "dropped": 0, "kept_share": None, "sources": 0}
    assert all(h["kind"] == "empty" and h["note"] == "no pairs" for h in report["histograms"].values())
    assert report["samples"] == {"kept": [], "dropped": []} and report["reasons"] == [] and report["funnel"] == []
    html = render_html(report)
    assert_self_contained(html)
    assert "<svg class=\"hist\"" not in html and "No funnel steps recorded" in html
    json.dumps(report, allow_nan=False)


# -- writing ----------------------------------------------------------------------------------------------------------
def test_write_report_atomic_pair(tmp_path: Path, report):
    html_path, json_path = write_report(report, tmp_path / "reports", stem="v1")
    assert html_path == tmp_path / "reports" / "v1.html" and json_path == tmp_path / "reports" / "v1.json"
    assert json.loads(json_path.read_text(encoding="utf-8")) == report
    assert html_path.read_text(encoding="utf-8") == render_html(report)
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["v1.html", "v1.json"]  # no temp leftovers
    write_report(report, tmp_path / "reports", stem="v1")  # overwrite in place
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["v1.html", "v1.json"]
