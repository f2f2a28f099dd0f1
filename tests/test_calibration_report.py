"""The calibrated quality score explained: the report's "Calibrated quality" section (summary, coefficients, AUCs,
the cross-validated precision/recall curve as inline SVG with each precision target's chosen point), dropped
samples with their quality and the features that pulled it down, the JSON that holds the same numbers, and the
dataset card's "Quality calibration" section. Built through the CLI on synthetic pairs and labels (real embedder,
real scikit-learn fit, real DuckDB/parquet store); user text (a rule name, a label file name) is HTML-looking and
must come out escaped.
"""

from __future__ import annotations

import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from markdown_it import MarkdownIt

from curation.calibration import fit, quality_expr, threshold_for, why
from curation.export import calibration_card, calibration_card_info, md_text
from pipelines.report import build_report, render_html
from schemas.recipe import CalibrateConfig
from tests.conftest import cli

RULE = "<b>meaning</b>-kept"  # an HTML-looking rule name: it reaches the funnel, the chart, the table and the card
LABEL_FILE = "<img src=x onerror=alert(1)>.csv"  # an HTML-looking label file name (no slash: it is a file)
NOUNS = ("river mountain city garden window teacher market engine letter forest winter station music harbour "
         "bridge kitchen student doctor village ocean lantern bakery tunnel meadow").split()
VERBS = [("saw", "spotted"), ("found", "discovered"), ("painted", "drew"), ("visited", "went to"),
         ("liked", "enjoyed")]


def _sentence(rng: random.Random) -> tuple[str, tuple[str, str]]:
    verb = rng.choice(VERBS)
    return (f"The {rng.choice(NOUNS)} near the {rng.choice(NOUNS)} {verb[0]} a {rng.choice(NOUNS)} "
            f"{rng.choice(['at dawn', 'in spring', 'after the rain', 'last night'])}."), verb


def _write_data(folder: Path, n: int = 100) -> None:
    """Corpus pairs (a light rewrite of the source, or an unrelated sentence) and a label file labelling them all,
    with some label noise so the curve is not a step, plus outside pairs the corpus does not have."""
    rng = random.Random(16)
    pairs, labels = [], []
    for i in range(n):
        src, (verb, synonym) = _sentence(rng)
        good = i % 2 == 0
        para = src.replace(f" {verb} ", f" {synonym} ").replace("The ", "This ", 1) if good else _sentence(rng)[0]
        noisy = i % 9 == 0
        pairs.append({"source": src, "paraphrase": para})
        labels.append({"source": src, "paraphrase": para, "label": "yes" if good != noisy else "no"})
    for i in range(24):
        src, _ = _sentence(rng)
        labels.append({"source": src, "paraphrase": src.replace("The ", "A ", 1) if i % 2 else _sentence(rng)[0],
                       "label": "yes" if i % 2 else "no"})
    pl.DataFrame(pairs).write_csv(folder / "pairs.csv")
    pl.DataFrame(labels).write_csv(folder / LABEL_FILE)


CALIBRATED = """name: calrep
workdir: {wd}
score:
  scorers: [cosine, rouge_l, jaccard, length, quality]
filter:
  rules:
    - {{name: "{rule}", column: quality, min: {{precision: 0.8}}}}
"""
PLAIN = """name: plain
workdir: {wd}
score:
  scorers: [cosine, rouge_l, jaccard, length]
filter:
  rules:
    - {{name: close, column: cosine, min: 0.5}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """One workdir curated with the quality scorer (report + export 0.1.0), then with a recipe without it
    (report + export 0.1.1): labels and calibrations stay in the workdir, but no calibration is in use."""
    folder = tmp_path_factory.mktemp("calrep")
    _write_data(folder)
    wd = folder / "wd"
    cli("ingest-pairs", str(folder / "pairs.csv"), "-w", str(wd), check=True)
    cli("labels", "import", LABEL_FILE, "-w", str(wd), cwd=folder, check=True)  # stored as given: the bare name
    (folder / "cal.yaml").write_text(CALIBRATED.format(wd=wd, rule=RULE))
    cli("curate", "-r", str(folder / "cal.yaml"), check=True)
    cli("report", "-w", str(wd), "--out", str(folder / "cal-report"), "--samples", "50", check=True)
    cli("export", "-w", str(wd), "--name", "para", check=True)
    decisions = pl.read_parquet(wd / "tables" / "decisions" / "*.parquet")  # the calibrated filter's, before PLAIN
    filters = [json.loads(p.read_text()) for p in (wd / "state").glob("filter-*.json")]
    (folder / "plain.yaml").write_text(PLAIN.format(wd=wd))
    cli("curate", "-r", str(folder / "plain.yaml"), check=True)
    cli("report", "-w", str(wd), "--out", str(folder / "plain-report"), check=True)
    cli("export", "-w", str(wd), "--name", "para", check=True)
    [stats] = [f for f in filters if "thresholds" in f]
    return {
        "folder": folder, "wd": wd, "stats": stats, "decisions": decisions,
        "calibration": json.loads((wd / "calibrations" / "v1" / "calibration.json").read_text()),
        "html": (folder / "cal-report" / "report.html").read_text(),
        "json": json.loads((folder / "cal-report" / "report.json").read_text()),
        "plain_html": (folder / "plain-report" / "report.html").read_text(),
        "plain_json": json.loads((folder / "plain-report" / "report.json").read_text()),
        "card": (wd / "exports" / "para" / "0.1.0" / "README.md").read_text(),
        "plain_card": (wd / "exports" / "para" / "0.1.1" / "README.md").read_text(),
    }


def _section(html: str, css_class: str) -> str:
    start = html.index(f'<section class="{css_class}">')
    return html[start:html.index("</section>", start)]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def _tags(html: str) -> set[str]:
    parser = _Tags()
    parser.feed(html)
    return set(parser.tags)


def test_report_has_the_calibrated_quality_section(built):
    cal, [(rule, chosen)] = built["calibration"], built["stats"]["thresholds"].items()
    assert rule == RULE and chosen["target"] == 0.8 and chosen["precision"] >= 0.8
    section = _section(built["html"], "calibration")
    assert "<h2>Calibrated quality</h2>" in section
    assert cal["summary"] in section and f"{cal['cv']['auc']:.3f}" in section  # the summary line and the AUC
    best = cal["cv"]["best_single"]
    assert f"best single column: {best['column']}" in section and f"{best['auc']:.3f}" in section
    for feature in cal["features"]:  # every feature with its standardised coefficient
        coef = cal["coef"][cal["features"].index(feature)]
        assert f'<td>{feature}</td><td class="n">{coef:+.3f}</td>' in section, feature
    # the curve as inline SVG polylines, the chosen point marked with its threshold, precision and recall
    assert section.count("<svg") >= 3 and "<polyline" in section
    [circle] = re.findall(r'<circle class="chosen"[^>]*><title>([^<]*)</title>', section)
    assert f"quality &gt;= {chosen['threshold']:.4f}" in circle and f"precision {chosen['precision']:.3f}" in circle
    # ... listed in the chosen-points table
    row = re.search(r'<table class="chosen">.*?<tbody>(.*?)</tbody>', section).group(1)
    assert f"{chosen['threshold']:.4f}" in row and f"{chosen['recall']:.3f}" in row and "v1" in row
    # the polyline plots (recall, precision) of every stored curve point inside the plot area
    points = re.search(r'<polyline[^>]*points="([^"]*)"><title>precision vs recall', section).group(1).split()
    assert len(points) == len(cal["cv"]["curve"])
    assert "<script" not in built["html"].lower()


def test_report_json_holds_the_curve_thresholds_and_quality_split(built):
    data, cal, stats = built["json"]["calibration"], built["calibration"], built["stats"]
    assert data["curve"] == cal["cv"]["curve"] and len(data["curve"]) > 2
    assert [q["threshold"] for q in data["curve"]] == sorted(q["threshold"] for q in data["curve"])
    [rule] = data["rules"]
    assert rule == {"rule": RULE, **stats["thresholds"][RULE]}
    assert data["cv"]["auc"] == cal["cv"]["auc"] and data["cv"]["best_single"] == cal["cv"]["best_single"]
    assert data["labels"]["count"] == cal["labels"]["count"] == 124 and data["labels"]["files"] == [LABEL_FILE]
    assert data["labels"]["by_origin"] == {"human": 124} and data["labels"]["in_corpus"] == 100
    assert {f["feature"] for f in data["features"]} == set(cal["features"])
    assert [abs(f["coef"]) for f in data["features"]] == sorted((abs(c) for c in cal["coef"]), reverse=True)
    dist = data["distribution"]
    totals = built["json"]["totals"]
    assert sum(dist["kept"]) == totals["kept"] and sum(dist["dropped"]) == totals["dropped"]
    assert dist["edges"][0] == 0.0 and dist["edges"][-1] == 1.0
    # every pair the quality rule kept is at or above the threshold: nothing kept in the bins below it
    below = [i for i, hi in enumerate(dist["edges"][1:]) if hi <= rule["threshold"]]
    assert below and all(dist["kept"][i] == 0 for i in below)
    assert built["json"]["lineage"]["calibration"] == f"v1 ({cal['id']})"


def test_dropped_samples_show_quality_and_what_pulled_it_down(built):
    decisions = built["decisions"].select("pair_id", "kept", "quality", "quality_why")
    by_id = {r["pair_id"]: r for r in decisions.to_dicts()}
    samples = built["json"]["samples"]
    assert samples["dropped"] and samples["kept"]
    for sample in samples["dropped"] + samples["kept"]:
        row = by_id[sample["pair_id"]]
        assert sample["quality"] == pytest.approx(row["quality"]) and sample["quality_why"] == row["quality_why"]
    assert all(s["quality_why"] is None for s in samples["kept"])
    explained = [s for s in samples["dropped"] if s["quality_why"]]
    assert explained
    html = built["html"]
    for sample in explained:
        card = re.search(rf'<div class="sample dropped"><div class="id">{sample["pair_id"]} .*?</div></div>',
                         html).group(0)
        assert f"pulled down by <b>{sample['quality_why']}</b>" in card
        assert re.search(r"<b>quality</b> [0-9.e-]+", card)


def test_user_text_in_the_report_is_escaped(built):
    html = built["html"]
    assert "<img" not in html and "<b>meaning" not in html  # neither the file name nor the rule name as markup
    assert "&lt;img src=x onerror=alert(1)&gt;.csv" in _section(html, "calibration")
    assert html.count("&lt;b&gt;meaning&lt;/b&gt;-kept") >= 3  # funnel, chart label, chosen-points table
    assert not _tags(html) & {"img", "script", "iframe"}
    json_text = (built["folder"] / "cal-report" / "report.json").read_text()
    assert LABEL_FILE in json_text  # the JSON keeps the text as it is


def test_card_records_how_the_rule_was_calibrated(built):
    card, cal, stats = built["card"], built["calibration"], built["stats"]["thresholds"][RULE]
    section = card[card.index("## Quality calibration"):card.index("## Columns")]
    assert f"calibration v1, id `{cal['id']}`" in section
    assert "labels: 124 (human 124)" in section and f"{cal['cv']['positive']} keep the meaning" in section
    assert "100 are pairs of this corpus, 24 outside pairs" in section
    assert f"{cal['cv']['folds']} folds, ROC AUC {cal['cv']['auc']:.3f}" in section
    best = cal["cv"]["best_single"]
    assert f"`{best['column']}`, AUC {best['auc']:.3f}" in section
    assert f"| 0.80 | {stats['threshold']:.4f} | {stats['precision']:.3f} | {stats['recall']:.3f} |" in section
    for feature in cal["features"]:
        assert f"| `{feature}` |" in section
    assert str(built["folder"]) not in section  # a label file by its name, never a local folder
    assert "- `quality`: the calibrated probability" in card
    meta = json.loads((built["wd"] / "exports/para/0.1.0/paradistill.json").read_text())
    assert meta["lineage"]["curation"]["calibration"]["rules"][0]["threshold"] == stats["threshold"]
    # rendered as Markdown (HTML allowed, as the Hub's renderer does), user text stays text
    rendered = MarkdownIt("commonmark").enable("table").render(card)
    assert not _tags(rendered) & {"img", "script", "b"}
    assert "&lt;img src=x onerror=alert(1)&gt;.csv" in rendered and "&lt;b&gt;meaning&lt;/b&gt;-kept" in rendered


def test_without_a_calibration_in_use_there_is_no_section(built):
    plain, html, card = built["plain_json"], built["plain_html"], built["plain_card"]
    assert plain["totals"]["pairs"] == 100 and "quality" not in plain["params"]["metrics"]
    assert "calibration" not in plain and "calibration" not in plain["lineage"]
    assert all("quality" not in s and "quality_why" not in s for side in plain["samples"].values() for s in side)
    assert "Calibrated quality" not in html and "pulled down by" not in html
    assert "Quality calibration" not in card and "`quality`" not in card and "| close |" in card


def test_a_calibration_file_from_another_workdir_says_so_on_the_card(built, tmp_path):
    """score.calibration names a file fitted elsewhere: the card records it without its path, and does not call
    the labelled pairs pairs of this corpus."""
    wd = tmp_path / "other"
    cli("ingest-pairs", str(built["folder"] / "pairs.csv"), "-w", str(wd), check=True)
    source = built["wd"] / "calibrations" / "v1" / "calibration.json"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CALIBRATED.format(wd=wd, rule="meaning-kept").replace(
        "  scorers:", f"  calibration: {source}\n  scorers:"))
    cli("curate", "-r", str(recipe), check=True)
    cli("export", "-w", str(wd), "--name", "other", check=True)
    card = (wd / "exports/other/0.1.0/README.md").read_text()
    section = card[card.index("## Quality calibration"):card.index("## Columns")]
    cal = built["calibration"]
    assert f"calibration v1, id `{cal['id']}`" in section and "in another workdir" in section
    assert "100 were pairs of the corpus it was fitted on" in section and "of this corpus" not in section
    assert str(built["folder"]) not in card and str(tmp_path) not in card
    assert not (wd / "calibrations").exists()  # nothing was fitted here
    report = json.loads((wd / "reports" / "report.json").read_text())
    assert report["calibration"]["id"] == cal["id"] and report["calibration"]["rules"][0]["rule"] == "meaning-kept"


# -- the pieces on their own ---------------------------------------------------------------------------------------
EVIL = "<script>alert('x')</script>"


def _fitted(tmp_names: list[str], n: int = 160) -> tuple[dict, pl.DataFrame]:
    """A real fit on two columns named by `tmp_names` (the second one noise), with noisy labels."""
    rng = random.Random(3)
    rows = []
    for i in range(n):
        good = i % 2 == 0
        rows.append({tmp_names[0]: rng.gauss(0.8 if good else 0.4, 0.15), tmp_names[1]: rng.random(),
                     "target": good != (i % 8 == 0)})
    frame = pl.DataFrame(rows)
    cal = fit(frame, tmp_names, CalibrateConfig())
    cal.update({"version": 3, "id": "abc123", "labels": {"count": n, "by_origin": {"judge": n}, "in_corpus": n,
                                                         "judge_models": [EVIL], "judge_prompts": ["judge-meaning.v1"],
                                                         "files": []},
                "summary": f"{n} labels (judge {n}) from {EVIL}", "created_at": "2026-01-01T00:00:00Z"})
    return cal, frame


def _pairs(cal: dict, frame: pl.DataFrame, threshold: float) -> pl.DataFrame:
    scored = frame.with_columns(quality_expr(cal))
    n = scored.height
    kept = (scored.get_column("quality") >= threshold).alias("kept")
    explained = why(scored, cal)
    return scored.with_columns(
        kept, pair_id=pl.Series([f"p{i:04d}" for i in range(n)]), source_id=pl.Series([f"s{i:04d}" for i in range(n)]),
        source=pl.lit("A source."), paraphrase=pl.lit("A paraphrase."),
        reasons=pl.Series([[] if k else ["q-rule"] for k in kept], dtype=pl.List(pl.String)),
        quality_why=pl.Series([None if k else w for k, w in zip(kept, explained, strict=True)], dtype=pl.String))


def test_html_looking_features_judges_and_reasons_are_escaped():
    names = ["cosine", "<b>evil</b>"]
    cal, frame = _fitted(names)
    chosen = threshold_for(cal, 0.8)
    pairs = _pairs(cal, frame, chosen["threshold"])
    funnel = pl.DataFrame({"step": [1], "rule": ["q-rule"], "in": [pairs.height],
                           "dropped": [int((~pairs["kept"]).sum())], "out": [int(pairs["kept"].sum())]})
    report = build_report(pairs, funnel, [], [*names, "quality"], {"recipe": "unit"}, samples=40, calibration=cal,
                          thresholds={"q-rule": {**chosen, "calibration": 3}})
    html = render_html(report)
    assert "<b>evil" not in html and "<script" not in html
    assert "&lt;b&gt;evil&lt;/b&gt;" in _section(html, "calibration")  # the feature name in the coefficients
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in _section(html, "calibration")  # judge, summary
    assert any("<b>evil</b>" in (s["quality_why"] or "") for s in report["samples"]["dropped"])
    assert "pulled down by <b>&lt;b&gt;evil&lt;/b&gt;" in html
    assert report["calibration"]["rules"][0]["threshold"] == chosen["threshold"]
    info = calibration_card_info(cal, {"q-rule": {**chosen, "calibration": 2}})
    card = calibration_card(info)
    rendered = MarkdownIt("commonmark").enable("table").render(card)
    assert not _tags(rendered) & {"script", "b"} and "&lt;script&gt;" in rendered
    assert "judge models: \\<script>" in card and "`judge-meaning.v1`" in card
    assert "q-rule (chosen on calibration v2)" in card  # a threshold chosen on another calibration says so
    assert "No filter rule asks for a precision target." in calibration_card(calibration_card_info(cal, None))


def test_a_report_without_calibration_ignores_empty_quality_columns():
    cal, frame = _fitted(["cosine", "jaccard"])
    pairs = _pairs(cal, frame, 0.5).drop("quality", "quality_why")
    funnel = pl.DataFrame({"step": [1], "rule": ["r"], "in": [pairs.height], "dropped": [0], "out": [pairs.height]})
    plain = build_report(pairs, funnel, [], ["cosine", "jaccard"], {"recipe": "unit"})
    with_nulls = pairs.with_columns(quality=pl.lit(None, pl.Float64), quality_why=pl.lit(None, pl.String))
    assert build_report(with_nulls, funnel, [], ["cosine", "jaccard"], {"recipe": "unit"}) == plain
    assert "calibration" not in plain and 'class="calibration"' not in render_html(plain)


def test_markdown_escaping_leaves_plain_expressions_readable():
    assert md_text("bleu <= 80") == "bleu <= 80" and md_text("rouge_l >= 0.5") == "rouge_l >= 0.5"
    assert md_text("a|b *c* [d](e) <i>f</i> &amp;\nnext") == "a\\|b \\*c\\* \\[d\\](e) \\<i>f\\</i> \\&amp; next"
