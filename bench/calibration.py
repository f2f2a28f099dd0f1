"""The learned keep rule against the best single-column threshold, on human labels split by origin.

    .venv/bin/python -m bench.calibration [--data ../shared/data/sts-headlines-images.tsv] [--precision 0.9]

The STS pairs (human similarity 0-5) read as labels: >= 4 keeps the meaning, <= 2 does not, the rest is left
out. The pairs of the `--fit` origins are imported as outside labels (`paradistill labels import`), the others
are the corpus; the corpus is curated with the demo's CPU scorers plus `quality`, calibrated on the fit part
only, and filtered by `quality >= the threshold of precision P`. On the held-out part: the learned rule's
precision and recall, beside each single score column thresholded (on the fit part's scores) at the same
precision target, and beside the best single column at the learned rule's held-out recall. The data file is
development data: it is read here and never copied into the package or an export.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from bench.table import print_table  # noqa: E402

FIT = ("sts2013-headlines", "sts2014-headlines", "sts2014-images")
SCORERS = ["cosine", "rouge_l", "bleu", "jaccard", "wpd_ld", "ted", "length", "numbers"]


def read_labels(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, separator="\t", quote_char=None)
    return (df.filter((pl.col("score") >= 4) | (pl.col("score") <= 2))
            .select(pl.col("sentence1").alias("source"), pl.col("sentence2").alias("paraphrase"),
                    (pl.col("score") >= 4).alias("label"), "origin"))


def precision_recall(kept: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    tp = float((kept & y).sum())
    return (tp / kept.sum() if kept.sum() else float("nan")), tp / y.sum()


def column_threshold(x: np.ndarray, y: np.ndarray, precision: float, higher: bool) -> float | None:
    """The lowest (highest, for a lower-is-better column) threshold from which on every threshold reaches
    `precision` on (x, y): the rule the calibration's targets use, on one column."""
    order = np.argsort(-x if higher else x, kind="stable")
    xs, ys = x[order], y[order]
    prec = np.cumsum(ys) / np.arange(1, len(ys) + 1)
    ok = np.flatnonzero(prec < precision)
    last = (ok[0] - 1) if ok.size else len(xs) - 1
    return float(xs[last]) if last >= 0 else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sts-headlines-images.tsv")
    ap.add_argument("--precision", type=float, default=0.9)
    ap.add_argument("--fit", nargs="+", default=list(FIT), help="origins fitted on (the others are held out)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    args = ap.parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"error: {args.data}: no such file; pass --data PATH to the STS pairs")

    from pipelines import runner
    from schemas.recipe import LabelFileSpec, Recipe

    labels = read_labels(args.data)
    fit, held = labels.filter(pl.col("origin").is_in(args.fit)), labels.filter(~pl.col("origin").is_in(args.fit))
    folder = args.keep or Path(tempfile.mkdtemp(prefix="calibration-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    wd = folder / "wd"
    held.select("source", "paraphrase").write_csv(folder / "corpus.csv")
    fit.select("source", "paraphrase", "label").write_csv(folder / "labels.csv")
    print(f"fit on {fit.height} labelled pairs ({', '.join(args.fit)}; {fit['label'].sum()} keep the meaning), "
          f"held out {held.height} ({held['label'].sum()} keep it)", flush=True)
    runner.ingest_pairs(str(folder / "corpus.csv"), wd, progress=False)
    runner.import_label_files(wd, [LabelFileSpec(path=str(folder / "labels.csv"))], progress=False)
    recipe = Recipe.model_validate({
        "name": "calibration-bench", "score": {"scorers": [*SCORERS, "quality"]},
        "dedup": {"exact": False, "within_source": None, "across_sources": None},
        "filter": {"rules": [{"name": "learned", "column": "quality", "min": {"precision": args.precision}}]},
        "report": {"enabled": False}})
    res = runner.curate(wd, recipe, progress=False)
    cal = res["calibrate"]
    print(f"calibration: {cal['summary']}", flush=True)

    from curation.text import normalize, pair_id, text_id
    from pipelines.store import Workdir

    store = Workdir(wd)
    ids = [pair_id(text_id(normalize(s)), text_id(normalize(p)))
           for s, p in held.select("source", "paraphrase").iter_rows()]
    truth = held.with_columns(pair_id=pl.Series(ids)).unique("pair_id", keep="first").select("pair_id", "label")
    scored = (truth.join(store.read_current("scores"), on="pair_id")
              .join(store.read_current("decisions").select("pair_id", "kept"), on="pair_id"))
    fit_scores = store.read_current("label_scores")
    fit_truth = fit.with_columns(pair_id=pl.Series([pair_id(text_id(normalize(s)), text_id(normalize(p)))
                                                    for s, p in fit.select("source", "paraphrase").iter_rows()]))
    fit_scored = fit_truth.unique("pair_id", keep="first").join(fit_scores, on="pair_id")
    y, y_fit = scored["label"].to_numpy(), fit_scored["label"].to_numpy()
    p_learned, r_learned = precision_recall(scored["kept"].to_numpy(), y)
    threshold = res["filter"]["thresholds"]["learned"]["threshold"]
    rows = [["learned (quality)", f">= {threshold:.3f}", f"{p_learned:.3f}", f"{r_learned:.3f}", "-"]]
    best_at_recall = None
    for col in cal["features"]:
        x, x_fit = scored[col].cast(pl.Float64).to_numpy(), fit_scored[col].cast(pl.Float64).to_numpy()
        ok_fit = ~np.isnan(x_fit)
        from sklearn.metrics import roc_auc_score

        higher = roc_auc_score(y_fit[ok_fit], x_fit[ok_fit]) >= 0.5
        t = column_threshold(x_fit[ok_fit], y_fit[ok_fit], args.precision, higher)
        # the held-out precision this column gets at the learned rule's held-out recall
        order = np.argsort(-x if higher else x, kind="stable")
        need = int(np.ceil(r_learned * y.sum()))
        k = int(np.searchsorted(np.cumsum(y[order]), need)) + 1
        p_same_recall = float(y[order][:k].mean())
        if best_at_recall is None or p_same_recall > best_at_recall[1]:
            best_at_recall = (col, p_same_recall)
        if t is None:
            rows.append([col, "never reached", "-", "-", f"{p_same_recall:.3f}"])
            continue
        kept = (x >= t) if higher else (x <= t)
        p, r = precision_recall(kept & ~np.isnan(x), y)
        rows.append([col, f"{'>=' if higher else '<='} {t:.3f}", f"{p:.3f}", f"{r:.3f}", f"{p_same_recall:.3f}"])
    print(f"\nheld-out part: {scored.height} pairs; every threshold chosen on the fit part for precision "
          f"{args.precision:g}; last column: held-out precision at the learned rule's held-out recall "
          f"({r_learned:.3f})")
    print_table(["rule", "threshold", "precision", "recall", "precision at same recall"], rows)
    print(f"\nbest single column at the same recall: {best_at_recall[0]} {best_at_recall[1]:.3f} vs learned "
          f"{p_learned:.3f}")


if __name__ == "__main__":
    main()
