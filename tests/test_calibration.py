"""Labels and the calibrated quality score: the fit recovers a known rule, precision targets hold on held-out
labels, the stored numbers give scikit-learn's probabilities, label files quarantine bad rows, and outside
labelled pairs never reach an export."""

from __future__ import annotations

import json
import random

import numpy as np
import polars as pl
import pytest

from curation.calibration import fit, quality_expr, threshold_for, why
from curation.ingest import read_records
from curation.labels import label_rows, parse_label
from schemas.errors import RecipeError
from schemas.recipe import CalibrateConfig, Recipe
from tests.conftest import cli, error_line

FEATURES = ["cosine", "jaccard", "rouge_l"]


def synthetic(n: int, seed: int) -> pl.DataFrame:
    """Three score columns; the label follows 8*cosine - 6*jaccard - 1 (logistic), rouge_l is noise."""
    rng = np.random.default_rng(seed)
    cos, jac, rl = rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    y = rng.uniform(size=n) < 1 / (1 + np.exp(-(8 * cos - 6 * jac - 1)))
    return pl.DataFrame({"cosine": cos, "jaccard": jac, "rouge_l": rl, "target": y})


def test_calibration_recovers_a_known_rule_and_beats_the_best_single_column():
    cal = fit(synthetic(2000, 0), FEATURES, CalibrateConfig())
    raw = np.array(cal["coef"]) / np.array(cal["scale"])  # back on the columns' own scale
    assert raw[0] == pytest.approx(8, abs=1.0) and raw[1] == pytest.approx(-6, abs=1.0) and abs(raw[2]) < 0.8
    best = cal["cv"]["best_single"]
    assert best["column"] == "cosine" and cal["cv"]["auc"] > best["auc"] + 0.05
    curve = cal["cv"]["curve"]
    assert len(curve) <= 200 and [p["threshold"] for p in curve] == sorted(p["threshold"] for p in curve)


def test_a_precision_target_reaches_its_precision_on_held_out_labels():
    cal = fit(synthetic(2000, 0), FEATURES, CalibrateConfig())
    held_out = synthetic(5000, 7).with_columns(quality_expr(cal))
    for p in (0.9, 0.95):
        chosen = threshold_for(cal, p)
        kept = held_out.filter(pl.col("quality") >= chosen["threshold"])
        assert chosen["precision"] >= p and kept.height > 500
        assert kept.get_column("target").mean() >= p - 0.01
    with pytest.raises(RecipeError, match="no quality threshold reached precision 1"):
        threshold_for({"cv": {"curve": [{"threshold": 0.5, "precision": 0.7, "recall": 0.4}]}}, 1.0)


def test_stored_numbers_give_scikit_learns_probabilities_with_missing_values():
    from curation.calibration import _pipeline, matrix

    frame = synthetic(600, 3).with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col("jaccard")).alias("jaccard"),
        numbers_ok=pl.Series([i % 5 != 0 for i in range(600)]))
    features = [*FEATURES, "numbers_ok"]
    cal = fit(frame, features, CalibrateConfig(c=0.5))
    ours = frame.select(quality_expr(cal)).to_series().to_numpy()
    x = matrix(frame, features)
    ref = _pipeline(0.5, 0).fit(x, frame.get_column("target").to_numpy()).predict_proba(x)[:, 1]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    low = frame.with_columns(cosine=pl.lit(0.0), jaccard=pl.lit(0.9)).head(2)
    assert why(low, cal).to_list()[0].startswith("cosine -")  # what pulled a bad pair down, worst first


def test_too_few_labels_is_one_clear_error():
    with pytest.raises(RecipeError, match=r"at least 20, with 5 of each"):
        fit(synthetic(30, 1).with_columns(target=pl.int_range(pl.len()) < 3), FEATURES, CalibrateConfig())


@pytest.mark.parametrize("value,label", [(True, True), (0, False), (1.0, True), ("Yes", True), (" no ", False),
                                         ("paraphrase", True), ("NOT", False), ("0", False), ("TRUE", True)])
def test_label_values(value, label):
    assert parse_label(value) == (label, None)


def test_a_label_file_quarantines_its_bad_rows_with_reasons(tmp_path):
    path = tmp_path / "labels.jsonl"
    rows = [{"source": "A cat sat on the mat.", "paraphrase": "On the mat sat a cat.", "label": "yes"},
            {"source": "A cat sat on the mat.", "paraphrase": "Dogs bark.", "label": "maybe"},
            {"source": "", "paraphrase": "Something.", "label": 1},
            {"source": "Rain fell.", "paraphrase": 42, "label": 0},
            {"source": "Rain fell.", "paraphrase": "It rained."},
            {"source": "A cat sat on the mat.", "paraphrase": "On the mat sat a cat.", "label": "no"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    records = read_records(str(path), ["source", "paraphrase", "label"])
    labels, quarantine = label_rows(records, "source", "paraphrase", "label", None, max_chars=100, file=str(path))
    assert labels.height == 1 and labels.get_column("label").to_list() == [True]
    reasons = dict(zip(quarantine.get_column("origin_row"), quarantine.get_column("reason"), strict=True))
    assert "'maybe' is not true/false" in reasons[2]
    assert reasons[3] == "empty source"
    assert reasons[4] == "paraphrase is int, expected string"
    assert reasons[5] == "missing field 'label'"
    assert reasons[6].startswith("the same pair as row 1")
    assert 7 in reasons and quarantine.height == 6  # every row: one label or one quarantine row


WORDS = ("river mountain city garden window teacher market engine letter forest winter station music "
         "harbour bridge kitchen student doctor village ocean").split()


def _corpus(tmp_path, n: int = 90):
    """Pairs whose paraphrase is a light rewrite of the source (label yes) or an unrelated sentence (no), with
    a label file that labels them all (some noise) plus outside pairs the corpus does not have."""
    rng = random.Random(5)

    def sentence() -> str:
        return f"The {rng.choice(WORDS)} near the {rng.choice(WORDS)} saw a {rng.choice(WORDS)} at dawn."

    pairs, labels = [], []
    for i in range(n):
        src = sentence()
        good = i % 2 == 0
        para = (src.replace("saw", "spotted").replace("at dawn", "early in the morning") if good else sentence())
        pairs.append({"source": src, "paraphrase": para})
        labels.append({"source": src, "paraphrase": para, "label": "yes" if good != (i % 17 == 0) else "no"})
    outside = [{"source": f"Outside sentence number {i} about a {rng.choice(WORDS)}.",
                "paraphrase": f"A {rng.choice(WORDS)}: outside sentence {i}.", "label": i % 2 == 0}
               for i in range(30)]
    pl.DataFrame(pairs).write_csv(tmp_path / "pairs.csv")
    pl.DataFrame(labels + outside, schema_overrides={"label": pl.String}).with_columns(
        pl.col("label").cast(pl.String)).write_csv(tmp_path / "labels.csv")
    return outside


RECIPE = """name: cal
workdir: {wd}
score:
  scorers: [cosine, rouge_l, jaccard, length, quality]
filter:
  rules:
    - {{name: meaning-kept, column: quality, min: {{precision: 0.8}}}}
export:
  name: cal-pairs
  license: cc-by-4.0
"""


def test_labels_calibrate_quality_and_outside_pairs_never_exported(tmp_path):
    outside = _corpus(tmp_path)
    wd = tmp_path / "wd"
    cli("ingest-pairs", str(tmp_path / "pairs.csv"), "-w", str(wd), check=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(wd=wd))
    proc = cli("curate", "-r", str(recipe))  # quality without labels: one line, before anything is filtered
    assert proc.returncode == 4 and "needs labels" in error_line(proc)
    proc = cli("labels", "import", str(tmp_path / "labels.csv"), "-w", str(wd), check=True)
    assert "120 label(s)" in proc.stdout and "90 pairs of the workdir, 30 outside" in proc.stdout
    cli("curate", "-r", str(recipe), check=True)
    cal = json.loads((wd / "calibrations" / "v1" / "calibration.json").read_text())
    assert cal["labels"]["count"] == 120 and cal["labels"]["in_corpus"] == 90 and cal["cv"]["auc"] > 0.8
    proc = cli("calibrate", "-w", str(wd), check=True)  # same labels and scores: the same version
    assert "calibration v1" in proc.stdout and "reused" in proc.stdout
    decisions = pl.read_parquet(next((wd / "tables" / "decisions").glob("part-set-*.parquet")))
    assert decisions.get_column("quality").null_count() == 0
    dropped = decisions.filter(~pl.col("kept"))
    assert dropped.height and dropped.get_column("quality_why").null_count() < dropped.height
    funnel = cli("sql", "-w", str(wd), "SELECT description FROM funnel WHERE rule = 'meaning-kept'",
                 "--format", "csv", check=True).stdout
    assert "cross-validated precision" in funnel
    cli("export", "-w", str(wd), "--name", "cal-pairs", check=True)
    exported = pl.concat([pl.read_parquet(p) for p in (wd / "exports").rglob("*.parquet")])
    texts = set(exported.get_column("source")) | set(exported.get_column("paraphrase"))
    outside_texts = {r["paraphrase"] for r in outside} | {r["source"] for r in outside}
    assert exported.height and not texts & outside_texts
    assert wd.joinpath("tables", "label_scores").is_dir()


def test_recipe_mistakes_about_quality_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="works on the quality column only"):
        Recipe.model_validate({"name": "x", "filter": {"rules": [
            {"name": "r", "column": "cosine", "min": {"precision": 0.9}}]}})
    wd = tmp_path / "wd"
    _corpus(tmp_path, 20)
    cli("ingest-pairs", str(tmp_path / "pairs.csv"), "-w", str(wd), check=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(wd=wd).replace(", quality]", "]"))
    proc = cli("curate", "-r", str(recipe))
    assert proc.returncode == 4 and "comes from the 'quality' scorer" in error_line(proc)
    proc = cli("calibrate", "-w", str(wd))
    assert proc.returncode != 0 and "no scores" in error_line(proc)


def test_the_shipped_learned_rule_recipe_calibrates_on_its_label_file(tmp_path):
    from pipelines import runner
    from pipelines.recipes_io import load_recipe
    from schemas.recipe import ImportTeacherConfig

    _corpus(tmp_path, 40)
    recipe = load_recipe("learned-rule")[0]
    assert recipe.labels and recipe.labels[0].path.endswith("demo_labels.csv")
    recipe = recipe.model_copy(update={
        "sources": [], "workdir": str(tmp_path / "wd"), "export": None,
        "teacher": ImportTeacherConfig(kind="import", path=str(tmp_path / "pairs.csv"))})
    res = runner.run(recipe, progress=False)
    cal = res["curation"]["calibrate"]
    assert cal["labels"]["count"] == 78 and cal["labels"]["by_origin"] == {"human": 78}
    assert cal["labels"]["in_corpus"] == 0 and cal["auc"] > cal["best_single"]["auc"] - 0.1
    assert res["curation"]["filter"]["thresholds"]["meaning-kept"]["precision"] >= 0.9
