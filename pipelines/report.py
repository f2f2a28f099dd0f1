"""The curation quality report: one self-contained HTML page plus the JSON that holds every number it shows.

`build_report` turns the decided pairs (kept/dropped with reasons and metric columns), the filter funnel, the
corpus-level quality rows (method B's dataset-quality columns plus WPD/LD), the run's lineage and, when a calibrated
`quality` score is in use, its calibration (labels, coefficients, cross-validated curve, chosen thresholds) into a
plain, JSON-serialisable dict. `render_html` draws that dict as one HTML file with inline CSS and inline SVG charts: no
JavaScript, no fonts, images or links from outside, so it opens offline and can be mailed as one file.
`write_report` writes both files atomically.

    report = build_report(pairs, funnel, corpus, ["cos_sim", "rouge_l", "numbers_ok"], lineage)
    html_path, json_path = write_report(report, workdir / "reports", stem="report")
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.store import atomic_write_bytes
from schemas.errors import InputError

REPORT_VERSION = 1

PAIRS_REQUIRED = ("pair_id", "source_id", "source", "paraphrase", "kept", "reasons")
FUNNEL_REQUIRED = ("step", "rule", "in", "dropped", "out")

# Corpus-quality columns, in the order of method B's dataset-quality table, then ours.
# (key, header, meaning, direction of "more diverse": "up", "down" or None when the column is not a diversity measure)
CORPUS_COLUMNS: tuple[tuple[str, str, str, str | None], ...] = (
    ("cos_sim", "cos-sim", "mean source/paraphrase embedding cosine ×100; higher = closer meaning", None),
    ("h2", "H2", "entropy of the corpus' 2-gram distribution", "up"),
    ("h3", "H3", "entropy of the corpus' 3-gram distribution", "up"),
    ("msttr", "MSTTR", "mean segmental type-token ratio ×100", "up"),
    ("jaccard", "Jaccard", "token-set Jaccard of source vs paraphrase ×100", "down"),
    ("ted_3", "TED-3", "parse-tree edit distance over the top 3 levels", "up"),
    ("ted_f", "TED-F", "parse-tree edit distance over the full tree", "up"),
    ("wpd", "WPD", "word position deviation", "up"),
    ("ld", "LD", "lexical deviation (1 − shared/union lemma types)", "up"),
    ("pairs", "pairs", "number of pairs", None),
    ("sources", "sources", "distinct sources", None),
    ("pairs_per_source", "pairs/source", "pairs per source", None),
)

NO_REASON = "(no reason recorded)"
_TEXT_LIMIT = 1200  # characters of a sample text shown in the HTML (the JSON keeps all of it)


# ---------------------------------------------------------------------------------------------------------------
# building the report
# ---------------------------------------------------------------------------------------------------------------
def build_report(pairs: pl.DataFrame, funnel: pl.DataFrame, corpus: list[dict], metric_columns: list[str],
                 lineage: dict, samples: int = 8, seed: int = 0, bins: int = 20, calibration: Mapping | None = None,
                 thresholds: Mapping[str, Mapping] | None = None) -> dict:
    """Every number the quality report shows, as a JSON-serialisable dict.

    `pairs`: one row per pair with `pair_id, source_id, source, paraphrase, kept (bool), reasons (list[str])` and
    the columns named in `metric_columns` (numeric or boolean, nulls allowed; an all-null metric is skipped with a
    note). `funnel`: `step, rule, in, dropped, out` in order. `corpus`: one dict per selection ("all", "kept",
    "dropped", ...). `lineage`: strings/numbers to show in the header. `samples` kept and `samples` dropped pairs
    are drawn at random, deterministically for a given `seed`. Numeric histograms use `bins` equal-width bins whose
    edges are shared by kept and dropped (integer-valued metrics spanning at most `bins` values get one unit-wide
    bin per integer instead); boolean metrics get two bins, false and true. NaN/inf count as missing.

    `calibration`: the calibration behind the pairs' `quality` column (a `curation.calibration.fit` result with
    the calibrate step's additions), `thresholds` the filter's precision targets resolved on it ({rule:
    {threshold, precision, recall, target, calibration}}). With it the report gains a `calibration` entry (see
    `calibration_summary`) and each sampled pair its `quality` and, if dropped, `quality_why`; without it the
    report is what it was before calibration existed.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    _require_columns(pairs, PAIRS_REQUIRED, "pairs")
    _require_columns(funnel, FUNNEL_REQUIRED, "funnel")
    metric_columns = list(dict.fromkeys(metric_columns))  # keep order, drop repeats
    null_kept = pairs["kept"].null_count()
    if null_kept:
        raise InputError(f"pairs: column 'kept' has {null_kept} null value(s); every pair must be kept or dropped")

    pairs = pairs.with_columns(pl.col("kept").cast(pl.Boolean), pl.col("reasons").fill_null([]))
    kept_mask = pairs["kept"]
    n_pairs = pairs.height
    n_kept = int(kept_mask.sum()) if n_pairs else 0
    n_dropped = n_pairs - n_kept
    notes: list[str] = []

    histograms: dict[str, dict] = {}
    for metric in metric_columns:
        hist = _histogram(pairs, metric, bins)
        histograms[metric] = hist
        if hist["kind"] == "empty":
            notes.append(f"{metric}: {hist['note']}")

    report = {
        "version": REPORT_VERSION,
        "title": _title(lineage),
        "lineage": {str(k): jsonable(v) for k, v in lineage.items()},
        "params": {"samples": samples, "seed": seed, "bins": bins, "metrics": metric_columns},
        "totals": {
            "pairs": n_pairs,
            "kept": n_kept,
            "dropped": n_dropped,
            "kept_share": (n_kept / n_pairs) if n_pairs else None,
            "sources": pairs["source_id"].n_unique() if n_pairs else 0,
        },
        "funnel": _funnel_rows(funnel),
        "corpus": [jsonable(dict(row)) for row in corpus],
        "histograms": histograms,
        "reasons": _reason_counts(pairs.filter(~pl.col("kept")), n_dropped),
        "samples": _samples(pairs, metric_columns, samples, seed, explain=calibration is not None),
        "notes": notes,
    }
    if calibration is not None:
        report["calibration"] = calibration_summary(calibration, thresholds, pairs, bins)
    return jsonable(report)


def _require_columns(df: pl.DataFrame, required: Iterable[str], name: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{name}: missing column(s) {', '.join(missing)} (has: {', '.join(df.columns) or 'none'})")


def _title(lineage: Mapping[str, Any]) -> str:
    for key in ("title", "recipe", "recipe_name", "name"):
        if lineage.get(key):
            return f"Curation quality report: {lineage[key]}"
    return "Curation quality report"


def _funnel_rows(funnel: pl.DataFrame) -> list[dict]:
    rows = []
    for row in funnel.select(FUNNEL_REQUIRED).to_dicts():
        n_in, dropped = row["in"], row["dropped"]
        row["dropped_share"] = (dropped / n_in) if n_in and dropped is not None else None
        rows.append(row)
    return rows


def _histogram(pairs: pl.DataFrame, metric: str, bins: int, edges: np.ndarray | None = None) -> dict:
    """Shared-edge histogram of one metric for kept and dropped pairs (or a note saying why there is none);
    `edges`, when given, fixes the bins of a numeric metric (values outside them are not counted)."""
    empty = {"kind": "empty", "edges": [], "labels": [], "kept": [], "dropped": [],
             "n": {"kept": 0, "dropped": 0}, "nulls": {"kept": 0, "dropped": 0}, "stats": {}, "note": None}
    if metric not in pairs.columns:
        return {**empty, "note": "column not present in pairs; scorer not run"}
    series = pairs[metric]
    kept = pairs["kept"]
    if series.dtype == pl.Boolean:
        k, d = series.filter(kept), series.filter(~kept)
        hist = {
            "kind": "bool", "edges": [], "labels": ["false", "true"],
            "kept": [int((~k).sum()), int(k.sum())],  # sums skip nulls
            "dropped": [int((~d).sum()), int(d.sum())],
            "nulls": {"kept": k.null_count(), "dropped": d.null_count()}, "note": None,
        }
        hist["n"] = {"kept": sum(hist["kept"]), "dropped": sum(hist["dropped"])}
        if hist["n"]["kept"] + hist["n"]["dropped"] == 0:
            return {**empty, "nulls": hist["nulls"], "note": _empty_note(pairs)}
        hist["stats"] = {side: {"true_share": (hist[side][1] / hist["n"][side]) if hist["n"][side] else None}
                         for side in ("kept", "dropped")}
        return hist
    if not series.dtype.is_numeric():
        return {**empty, "note": f"dtype {series.dtype} is neither numeric nor boolean; not charted"}

    values = series.cast(pl.Float64).to_numpy(allow_copy=True).astype(np.float64, copy=False)
    # null -> NaN in to_numpy; NaN and ±inf are counted as missing, never binned
    finite = np.isfinite(values)
    kept_np = kept.to_numpy().astype(bool)
    kv, dv = values[finite & kept_np], values[finite & ~kept_np]
    nulls = {"kept": int((~finite & kept_np).sum()), "dropped": int((~finite & ~kept_np).sum())}
    if kv.size + dv.size == 0:
        return {**empty, "nulls": nulls, "note": _empty_note(pairs)}
    lo = float(min(kv.min() if kv.size else math.inf, dv.min() if dv.size else math.inf))
    hi = float(max(kv.max() if kv.size else -math.inf, dv.max() if dv.size else -math.inf))
    if edges is None:
        edges = _edges(np.concatenate([kv, dv]), lo, hi, bins)
    kc, _ = np.histogram(kv, bins=edges)
    dc, _ = np.histogram(dv, bins=edges)
    return {
        "kind": "float", "edges": [float(e) for e in edges], "labels": [],
        "kept": [int(c) for c in kc], "dropped": [int(c) for c in dc],
        "n": {"kept": int(kv.size), "dropped": int(dv.size)}, "nulls": nulls,
        "stats": {"kept": _stats(kv), "dropped": _stats(dv)}, "note": None,
    }


def _edges(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    if np.all(values == np.round(values)) and hi - lo + 1 <= bins:  # few integer values: one unit bin per integer
        return np.arange(lo - 0.5, hi + 1.0, 1.0)
    if lo == hi:  # one distinct value: centre it in a unit-wide range
        return np.linspace(lo - 0.5, hi + 0.5, bins + 1)
    return np.linspace(lo, hi, bins + 1)


def _empty_note(pairs: pl.DataFrame) -> str:
    return "no pairs" if pairs.height == 0 else "all values null; scorer not run"


def _stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "max": float(values.max())}


def _reason_counts(dropped: pl.DataFrame, n_dropped: int) -> list[dict]:
    """Pairs per drop reason (a pair listing a reason twice counts once), most frequent first."""
    counts: dict[str, int] = {}
    for reasons in dropped["reasons"].to_list():
        for reason in set(reasons or []) or {NO_REASON}:
            counts[reason] = counts.get(reason, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"reason": r, "pairs": c, "share_of_dropped": (c / n_dropped) if n_dropped else None}
            for r, c in ordered]


def _samples(pairs: pl.DataFrame, metrics: Sequence[str], n: int, seed: int, explain: bool = False) -> dict:
    """`n` random kept and `n` random dropped pairs; independent of the input's row order, fixed by `seed`.

    `explain`: each sample also carries `quality` and `quality_why` (the features that pulled a dropped pair's
    quality down), from the pairs' columns of those names (null where absent)."""
    present = [m for m in metrics if m in pairs.columns]
    extra = [c for c in ("quality", "quality_why") if explain and c in pairs.columns and c not in present]
    cols = ["pair_id", "source_id", "source", "paraphrase", "reasons", *present, *extra]
    out: dict[str, list[dict]] = {}
    for side, mask in (("kept", pl.col("kept")), ("dropped", ~pl.col("kept"))):
        side_pairs = pairs.filter(mask).select(cols).sort("pair_id")
        rng = random.Random(f"paradistill-report/{seed}/{side}")
        chosen = rng.sample(range(side_pairs.height), min(n, side_pairs.height))
        rows = dict(zip(chosen, side_pairs[chosen].to_dicts(), strict=True))  # only these become Python objects
        out[side] = [{
            "pair_id": rows[i]["pair_id"], "source_id": rows[i]["source_id"],
            "source": rows[i]["source"], "paraphrase": rows[i]["paraphrase"],
            "reasons": list(rows[i]["reasons"] or []),
            "metrics": {m: rows[i][m] for m in present},
            **({"quality": rows[i].get("quality"), "quality_why": rows[i].get("quality_why")} if explain else {}),
        } for i in chosen]
    return out


def calibration_summary(calibration: Mapping, thresholds: Mapping[str, Mapping] | None = None,
                        pairs: pl.DataFrame | None = None, bins: int = 20) -> dict:
    """What the report shows of the calibration behind the `quality` column.

    Its provenance (version, id, file, summary line), the labels it was fitted to (count, positives, origin, judge
    models and prompts, label files), the features with their standardised coefficients (largest effect first),
    the cross-validated AUC beside the best single column's, the cross-validated precision/recall curve (at most
    curation.calibration.CURVE_POINTS points, ordered by threshold), the point each precision-target rule chose
    (`thresholds`, in rule order) and, when `pairs` has a `quality` column, its histogram over kept vs dropped
    pairs in `bins` equal bins of [0, 1].
    """
    cal = calibration
    cv = cal.get("cv") or {}
    labels = cal.get("labels") or {}
    names = list(cal.get("features") or [])
    coefs = list(cal.get("coef") or [])
    means = list(cal.get("mean") or [None] * len(names))
    scales = list(cal.get("scale") or [None] * len(names))
    features = [{"feature": f, "coef": c, "mean": m, "scale": sd}
                for f, c, m, sd in zip(names, coefs, means, scales, strict=False)]
    features.sort(key=lambda r: -abs(r["coef"]) if isinstance(r["coef"], int | float) else 0.0)
    rules = [{"rule": str(name), "target": t.get("target"), "threshold": t.get("threshold"),
              "precision": t.get("precision"), "recall": t.get("recall"), "calibration": t.get("calibration")}
             for name, t in (thresholds or {}).items()]
    out = {
        "version": cal.get("version"), "id": cal.get("id"), "path": cal.get("path"),
        "created_at": cal.get("created_at"), "summary": cal.get("summary"),
        "target": (cal.get("settings") or {}).get("target"),
        "labels": {"count": labels.get("count", cv.get("labels")), "positive": cv.get("positive"),
                   "by_origin": dict(labels.get("by_origin") or {}), "in_corpus": labels.get("in_corpus"),
                   "judge_models": list(labels.get("judge_models") or []),
                   "judge_prompts": list(labels.get("judge_prompts") or []), "files": list(labels.get("files") or [])},
        "features": features,
        "intercept": cal.get("intercept"),
        "cv": {"folds": cv.get("folds"), "labels": cv.get("labels"), "positive": cv.get("positive"),
               "auc": cv.get("auc"), "best_single": dict(cv.get("best_single") or {})},
        "curve": [{"threshold": q.get("threshold"), "precision": q.get("precision"), "recall": q.get("recall")}
                  for q in cv.get("curve") or []],
        "rules": rules,
    }
    if pairs is not None and "quality" in pairs.columns:
        out["distribution"] = _histogram(pairs, "quality", bins, edges=np.linspace(0.0, 1.0, bins + 1))
    return jsonable(out)


def jsonable(value: Any) -> Any:
    """Plain JSON types only; NaN/inf become None so the JSON stays valid."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | pl.Series | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------------
KEPT_COLOR = "#2f6db5"
DROPPED_COLOR = "#e07b39"

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f5f6f8;color:#1d2330;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 10px}
h3{font-size:14px;margin:0 0 6px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:18px 20px;margin:18px 0}
.sub{color:#5b6475;font-size:13px;margin:0 0 12px}
.lineage{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:12px 0 0;font-size:13px}
.lineage dt{color:#5b6475}
.lineage dd{margin:0;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.cards{display:flex;gap:12px;margin-top:16px;flex-wrap:wrap}
.card{flex:1 1 0;min-width:150px;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;background:#fafbfc}
.card .v{font-size:24px;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.kept .v{color:#2f6db5}.card.dropped .v{color:#c4621f}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid #e8ebf0;text-align:left;vertical-align:middle}
th{background:#f0f2f5;font-weight:600;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
.legend{color:#5b6475;font-size:12px;margin:8px 0 0}
.key{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 10px;vertical-align:-1px}
.key:first-child{margin-left:0}
.grid{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:14px}
div.hist{border:1px solid #e3e6ec;border-radius:6px;padding:10px 10px 6px;background:#fff}
div.hist svg{display:block;width:100%;height:auto}
div.hist .cap{font-size:11.5px;color:#5b6475;margin:2px 0 0;font-variant-numeric:tabular-nums}
div.hist.skipped{background:#fafbfc;color:#5b6475}
.notes{margin:0 0 12px;padding:8px 12px;background:#fff8e6;border:1px solid #f1dca2;border-radius:6px;font-size:13px}
.samples{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px}
.sample{border:1px solid #e3e6ec;border-radius:6px;padding:10px 12px;border-left:4px solid #2f6db5}
.sample.dropped{border-left-color:#e07b39}
.sample .id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11px;color:#7a8294;
overflow-wrap:anywhere}
.sample .t{margin:4px 0;display:grid;grid-template-columns:86px minmax(0,1fr);overflow-wrap:anywhere;
white-space:pre-wrap}
.sample .t b{color:#5b6475;font-weight:600;font-size:12px;padding-top:1px}
.chips{margin-top:6px;display:flex;flex-wrap:wrap;gap:4px}
.chip{font-size:11.5px;padding:1px 7px;border-radius:10px;background:#eef1f5;font-variant-numeric:tabular-nums}
.chip.reason{background:#fde7d8;color:#8a3d0c}
.bar{display:block}
.empty{color:#5b6475;font-style:italic}
.sample .why{margin-top:6px;font-size:12px;color:#5b6475;overflow-wrap:anywhere}
.sample .why b{color:#1d2330;font-weight:600}
.calibration h3{margin-top:16px}
.calibration .cards{margin:0 0 14px}
.calibration .grid{margin:4px 0}
.calibration table{margin-top:4px}
"""


def render_html(report: dict) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no scripts, no external resources)."""
    title = _e(report.get("title") or "Curation quality report")
    body = "\n".join([
        _header_html(report),
        _funnel_html(report.get("funnel") or []),
        *([_calibration_html(report["calibration"])] if report.get("calibration") else []),
        _corpus_html(report.get("corpus") or []),
        _histograms_html(report.get("histograms") or {}, report.get("notes") or []),
        _reasons_html(report.get("reasons") or [], report.get("totals", {}).get("dropped", 0)),
        _samples_html(report.get("samples") or {}, report.get("params", {}).get("seed")),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any) -> str:
    """A number for a table cell: ints with separators, floats with precision by magnitude; None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value == 0:
            return "0"
        mag = abs(value)
        if mag >= 1e6 or mag < 1e-3:
            return f"{value:.3g}"
        if mag >= 100:
            return f"{value:,.1f}"
        if mag >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f}%"


def _header_html(report: dict) -> str:
    lineage = report.get("lineage") or {}
    totals = report.get("totals") or {}
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v) if isinstance(v, float) else v)}</dd>"
                   for k, v in lineage.items())
    cards = "".join(
        f'<div class="card {cls}"><div class="k">{_e(label)}</div><div class="v">{_e(value)}</div></div>'
        for cls, label, value in (
            ("", "pairs", _fmt(totals.get("pairs"))),
            ("kept", "kept", _fmt(totals.get("kept"))),
            ("dropped", "dropped", _fmt(totals.get("dropped"))),
            ("kept", "kept share", _pct(totals.get("kept_share"))),
            ("", "sources", _fmt(totals.get("sources"))),
        )
    )
    lineage_html = f'<dl class="lineage">{rows}</dl>' if rows else '<p class="empty">No lineage recorded.</p>'
    return (f'<section class="head"><h1>{_e(report.get("title"))}</h1>'
            f'<p class="sub">paradistill curation report · format v{_e(report.get("version"))}</p>'
            f"{lineage_html}<div class=\"cards\">{cards}</div></section>")


def _funnel_html(rows: list[dict]) -> str:
    if not rows:
        return '<section><h2>Filter funnel</h2><p class="empty">No funnel steps recorded.</p></section>'
    scale = max([r.get("in") or 0 for r in rows] + [r.get("out") or 0 for r in rows] + [1])
    body = []
    for r in rows:
        body.append(
            f'<tr><td class="n">{_e(_fmt(r.get("step")))}</td><td>{_e(r.get("rule"))}</td>'
            f'<td class="n">{_e(_fmt(r.get("in")))}</td><td class="n">{_e(_fmt(r.get("dropped")))}</td>'
            f'<td class="n">{_e(_fmt(r.get("out")))}</td><td class="n">{_e(_pct(r.get("dropped_share")))}</td>'
            f"<td>{_funnel_bar(r, scale)}</td></tr>"
        )
    return (
        "<section><h2>Filter funnel</h2>"
        '<p class="sub">Each rule runs on what the previous one kept. The bar is to scale with the largest step: '
        f'<span class="key" style="background:{KEPT_COLOR}"></span>out (passes on)'
        f'<span class="key" style="background:{DROPPED_COLOR}"></span>dropped by this rule</p>'
        '<table class="funnel"><thead><tr><th class="n">step</th><th>rule</th><th class="n">in</th>'
        '<th class="n">dropped</th><th class="n">out</th><th class="n">dropped %</th><th style="width:380px">'
        f'</th></tr></thead><tbody>{"".join(body)}</tbody></table></section>'
    )


def _funnel_bar(row: dict, scale: int) -> str:
    width, height = 360.0, 14.0
    out = max(row.get("out") or 0, 0)
    dropped = max(row.get("dropped") or 0, 0)
    n_in = max(row.get("in") or 0, out + dropped)
    w_out = width * out / scale
    w_drop = width * dropped / scale
    w_in = width * n_in / scale
    label = f"in {n_in:,}, dropped {dropped:,}, out {out:,}"
    return (
        f'<svg class="bar" role="img" aria-label="{_e(label)}" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}"><title>{_e(label)}</title>'
        f'<rect x="0" y="0" width="{w_in:.2f}" height="{height:.0f}" fill="#e8ebf0"/>'
        f'<rect x="0" y="0" width="{w_out:.2f}" height="{height:.0f}" fill="{KEPT_COLOR}"/>'
        f'<rect x="{w_out:.2f}" y="0" width="{w_drop:.2f}" height="{height:.0f}" fill="{DROPPED_COLOR}"/></svg>'
    )


def _corpus_html(rows: list[dict]) -> str:
    if not rows:
        return '<section><h2>Corpus quality</h2><p class="empty">No corpus metrics recorded.</p></section>'
    known = {c[0] for c in CORPUS_COLUMNS}
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in known and k != "selection"]
    arrows = {"up": " ↑", "down": " ↓", None: ""}
    head = "".join(f'<th class="n" title="{_e(meaning)}">{_e(label)}{arrows[d]}</th>'
                   for _, label, meaning, d in CORPUS_COLUMNS)
    head += "".join(f'<th class="n">{_e(k)}</th>' for k in extra)
    body = []
    for r in rows:
        cells = "".join(f'<td class="n">{_e(_fmt(r.get(key)))}</td>' for key, *_ in CORPUS_COLUMNS)
        cells += "".join(f'<td class="n">{_e(_fmt(r.get(k)))}</td>' for k in extra)
        body.append(f"<tr><th>{_e(r.get('selection'))}</th>{cells}</tr>")
    legend = " · ".join(f"<b>{_e(label)}</b>{arrows[d]} {_e(meaning)}" for _, label, meaning, d in CORPUS_COLUMNS[:9])
    return (
        "<section><h2>Corpus quality</h2>"
        '<p class="sub">The columns of method B\'s dataset-quality table (Impossible Distillation), plus WPD and LD, '
        "for each selection of pairs.</p>"
        f'<table class="corpus"><thead><tr><th>selection</th>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
        f'</table><p class="legend">↑ higher = more diverse, ↓ lower = more diverse. {legend}.</p></section>'
    )


def _histograms_html(histograms: Mapping[str, dict], notes: list[str]) -> str:
    if not histograms:
        return '<section><h2>Metric distributions</h2><p class="empty">No metric columns.</p></section>'
    cards = []
    for metric, hist in histograms.items():
        if hist.get("kind") in ("float", "bool"):
            cards.append(f'<div class="hist"><h3>{_e(metric)}</h3>{_hist_svg(metric, hist)}'
                         f'<p class="cap">{_hist_caption(hist)}</p></div>')
        else:
            cards.append(f'<div class="hist skipped"><h3>{_e(metric)}</h3>'
                         f'<p class="empty">Skipped: {_e(hist.get("note"))}</p></div>')
    notes_html = ("<div class=\"notes\">" + "<br>".join(_e(n) for n in notes) + "</div>") if notes else ""
    return (
        "<section><h2>Metric distributions</h2>"
        '<p class="sub">Per-pair metric values, kept and dropped pairs side by side in shared bins (counts). '
        f'<span class="key" style="background:{KEPT_COLOR}"></span>kept'
        f'<span class="key" style="background:{DROPPED_COLOR}"></span>dropped</p>'
        f'{notes_html}<div class="grid">{"".join(cards)}</div></section>'
    )


def _hist_caption(hist: dict) -> str:
    n, nulls, stats = hist.get("n", {}), hist.get("nulls", {}), hist.get("stats", {})
    parts = []
    for side in ("kept", "dropped"):
        st = stats.get(side) or {}
        if hist["kind"] == "bool":
            center = f"true {_pct(st.get('true_share'))}"
        else:
            center = f"mean {_fmt(st.get('mean'))}"
        parts.append(f"{side}: n={_fmt(n.get(side, 0))}, {center}")
    missing = (nulls.get("kept") or 0) + (nulls.get("dropped") or 0)
    if missing:
        parts.append(f"missing {_fmt(nulls.get('kept', 0))} kept / {_fmt(nulls.get('dropped', 0))} dropped")
    return _e(" · ".join(parts))


def _nice_step(span: float, target: int) -> float:
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def _tick_label(value: float, step: float) -> str:
    if abs(value) < step * 1e-9:
        value = 0.0
    if step >= 1 and float(value).is_integer() and abs(value) < 1e6:
        return f"{int(value):,}"
    if abs(value) >= 1e5 or (step < 1e-4):
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step)) + (1 if step / 10 ** math.floor(math.log10(step)) == 2.5 else 0))
    return f"{value:.{decimals}f}"


def _hist_svg(metric: str, hist: dict, marks: Sequence[tuple[float, str]] = ()) -> str:
    """`marks`: (x, label) vertical dashed lines over a numeric histogram (a threshold, say)."""
    W, H = 360, 206
    left, right, top, bottom = 46, 12, 8, 36
    pw, ph = W - left - right, H - top - bottom
    kept, dropped = hist["kept"], hist["dropped"]
    nb = len(kept)
    ymax_raw = max(kept + dropped + [1])
    ystep = max(1.0, _nice_step(ymax_raw, 4))
    ystep = float(math.ceil(ystep))
    ymax = ystep * math.ceil(ymax_raw / ystep)
    parts = [f'<svg class="hist" role="img" aria-label="{_e("histogram of " + metric)}" viewBox="0 0 {W} {H}" '
             f'width="{W}" height="{H}" font-size="10.5" fill="#5b6475">']
    # y grid + ticks
    y = 0.0
    while y <= ymax + 1e-9:
        py = top + ph - ph * y / ymax
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="#e8ebf0"/>')
        parts.append(f'<text x="{left - 5}" y="{py + 3.5:.1f}" text-anchor="end">{_e(_tick_label(y, ystep))}</text>')
        y += ystep
    bw = pw / nb
    labels = hist.get("labels") or []
    edges = hist.get("edges") or []
    for i in range(nb):
        x0 = left + i * bw
        if hist["kind"] == "bool":
            lo_label = labels[i] if i < len(labels) else str(i)
            bin_label = lo_label
        else:
            closing = "]" if i == nb - 1 else ")"
            bin_label = f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}{closing}"
        for j, (side, counts, color) in enumerate((("kept", kept, KEPT_COLOR), ("dropped", dropped, DROPPED_COLOR))):
            c = counts[i]
            if c <= 0:
                continue
            h = ph * c / ymax
            pad = bw * (0.2 if hist["kind"] == "bool" else 0.06)
            w = (bw - 2 * pad) / 2
            x = x0 + pad + j * w
            parts.append(f'<rect x="{x:.2f}" y="{top + ph - h:.2f}" width="{max(w - 0.5, 0.8):.2f}" height="{h:.2f}" '
                         f'fill="{color}"><title>{_e(f"{side} {bin_label}: {c:,}")}</title></rect>')
    # axes
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#8a93a5"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#8a93a5"/>')
    # x ticks
    if hist["kind"] == "bool":
        for i, label in enumerate(labels):
            px = left + (i + 0.5) * bw
            parts.append(f'<text x="{px:.1f}" y="{top + ph + 15}" text-anchor="middle">{_e(label)}</text>')
    else:
        lo, hi = edges[0], edges[-1]
        step = _nice_step(hi - lo, 5)
        t = math.ceil(lo / step - 1e-9) * step
        while t <= hi + step * 1e-9:
            px = left + pw * (t - lo) / (hi - lo)
            parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#8a93a5"/>')
            parts.append(f'<text x="{px:.1f}" y="{top + ph + 15}" text-anchor="middle">'
                         f"{_e(_tick_label(t, step))}</text>")
            t += step
    if hist["kind"] == "float" and edges[-1] > edges[0]:
        for x, label in marks:
            if x is None or not edges[0] <= x <= edges[-1]:
                continue
            px = left + pw * (x - edges[0]) / (edges[-1] - edges[0])
            parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + ph}" stroke="#1d2330" '
                         f'stroke-dasharray="4 3"><title>{_e(label)}</title></line>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{H - 6}" text-anchor="middle" fill="#1d2330">{_e(metric)}</text>')
    parts.append("</svg>")
    return "".join(parts)


PRECISION_COLOR = "#2f6db5"
RECALL_COLOR = "#8a55c0"
CHOSEN_COLOR = "#c4621f"


def _threshold(value: Any) -> str:
    return "—" if not isinstance(value, int | float) or not math.isfinite(value) else f"{value:.4f}"


def _line_svg(label: str, lines: Sequence[tuple[str, str, Sequence[tuple[float, float]]]], x_label: str,
              y_label: str, points: Sequence[tuple[float, float, str, str]] = (),
              hlines: Sequence[tuple[float, str]] = (), vlines: Sequence[tuple[float, str]] = ()) -> str:
    """A small line chart over [0, 1] x [0, 1]: polylines (name, colour, (x, y) points), marked points (x, y,
    short label, tooltip) and dashed reference lines (value, tooltip)."""
    W, H = 360, 206  # the histograms' size, so a grid row lines up
    left, right, top, bottom = 46, 14, 8, 36
    pw, ph = W - left - right, H - top - bottom

    def px(x: float) -> float:
        return left + pw * min(max(x, 0.0), 1.0)

    def py(y: float) -> float:
        return top + ph - ph * min(max(y, 0.0), 1.0)

    parts = [f'<svg class="hist" role="img" aria-label="{_e(label)}" viewBox="0 0 {W} {H}" width="{W}" '
             f'height="{H}" font-size="10.5" fill="#5b6475"><title>{_e(label)}</title>']
    for i in range(6):
        t = i / 5
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e8ebf0"/>')
        parts.append(f'<text x="{left - 5}" y="{py(t) + 3.5:.1f}" text-anchor="end">{t:.1f}</text>')
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#8a93a5"/>')
        parts.append(f'<text x="{px(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{t:.1f}</text>')
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#8a93a5"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#8a93a5"/>')
    for value, tip in hlines:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(value):.1f}" y2="{py(value):.1f}" '
                     f'stroke="{CHOSEN_COLOR}" stroke-dasharray="4 3"><title>{_e(tip)}</title></line>')
    for value, tip in vlines:
        parts.append(f'<line x1="{px(value):.1f}" x2="{px(value):.1f}" y1="{top}" y2="{top + ph}" '
                     f'stroke="{CHOSEN_COLOR}" stroke-dasharray="4 3"><title>{_e(tip)}</title></line>')
    for name, color, xy in lines:
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in xy if _finite(x) and _finite(y))
        if coords:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" stroke-linejoin="round" '
                         f'points="{coords}"><title>{_e(name)}</title></polyline>')
    for x, y, short, tip in points:
        if not (_finite(x) and _finite(y)):
            continue
        anchor = "end" if x > 0.7 else "start"
        dx = -7 if anchor == "end" else 7
        parts.append(f'<circle class="chosen" cx="{px(x):.1f}" cy="{py(y):.1f}" r="4.5" fill="{CHOSEN_COLOR}" '
                     f'stroke="#fff" stroke-width="1.2"><title>{_e(tip)}</title></circle>')
        parts.append(f'<text x="{px(x) + dx:.1f}" y="{py(y) - 6:.1f}" text-anchor="{anchor}" fill="#1d2330">'
                     f"{_e(short)}</text>")
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{H - 6}" text-anchor="middle" fill="#1d2330">{_e(x_label)}</text>')
    parts.append(f'<text x="12" y="{top + ph / 2:.1f}" text-anchor="middle" fill="#1d2330" '
                 f'transform="rotate(-90 12 {top + ph / 2:.1f})">{_e(y_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _coef_bar(coef: Any, scale: float) -> str:
    width, height, mid = 200.0, 12.0, 100.0
    if not _finite(coef):
        return ""
    w = mid * min(abs(coef) / scale, 1.0) if scale > 0 else 0.0
    x = mid if coef >= 0 else mid - w
    color = KEPT_COLOR if coef >= 0 else DROPPED_COLOR
    return (f'<svg class="bar" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">'
            f'<rect x="{x:.2f}" y="1" width="{w:.2f}" height="{height - 2:.0f}" fill="{color}"/>'
            f'<line x1="{mid}" x2="{mid}" y1="0" y2="{height:.0f}" stroke="#8a93a5"/></svg>')


def _list(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values) if values else "—"


def _calibration_html(cal: Mapping[str, Any]) -> str:
    """The "Calibrated quality" section: provenance, CV figures, curve charts, chosen points and coefficients."""
    cv, labels = cal.get("cv") or {}, cal.get("labels") or {}
    best = cv.get("best_single") or {}
    rules = cal.get("rules") or []
    curve = cal.get("curve") or []
    count, positive = labels.get("count"), cv.get("positive")
    share = positive / cv["labels"] if _finite(positive) and _finite(cv.get("labels")) and cv["labels"] else None
    best_name = f"{best.get('column')} ({best.get('direction')} is better)" if best.get("column") else "none"
    cards = "".join(
        f'<div class="card {cls}"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
        for cls, k, v in (
            ("kept", "cross-validated AUC", _fmt(cv.get("auc"))),
            ("", f"best single column: {best_name}", _fmt(best.get("auc")) if best.get("column") else "—"),
            ("", "labels", _fmt(count)),
            ("", "keep the meaning", f"{_fmt(positive)} ({_pct(share)})"),
            ("", "folds", _fmt(cv.get("folds"))),
        ))
    origin = ", ".join(f"{k} {_fmt(v)}" for k, v in (labels.get("by_origin") or {}).items()) or "—"
    provenance = [
        ("calibration", " · ".join(str(x) for x in (
            f"v{cal['version']}" if cal.get("version") is not None else None, cal.get("id"), cal.get("path"),
            cal.get("created_at")) if x)),
        ("summary", cal.get("summary") or "—"),
        ("target", {"meaning": "keeps the meaning (the label)",
                    "meaning_and_rewrite": "keeps the meaning and is a real rewrite"}.get(cal.get("target"),
                                                                                         cal.get("target") or "—")),
        ("labels by origin", origin),
        ("labels on pairs of the corpus fitted on", _fmt(labels.get("in_corpus"))),
        ("judge models", _list(labels.get("judge_models") or [])),
        ("judge prompts", _list(labels.get("judge_prompts") or [])),
        ("label files", _list(labels.get("files") or [])),
    ]
    prov_html = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in provenance)

    # charts: the precision/recall curve with each rule's chosen point; precision and recall against the
    # threshold with each chosen threshold; quality over kept vs dropped pairs with the same thresholds
    pr = [(q.get("recall"), q.get("precision")) for q in curve]
    chosen = [(r.get("recall"), r.get("precision"), r.get("rule"),
               f"{r.get('rule')}: target precision {_fmt(r.get('target'))}, quality >= {_threshold(r.get('threshold'))}"
               f", cross-validated precision {_fmt(r.get('precision'))}, recall {_fmt(r.get('recall'))}")
              for r in rules]
    targets = [(r.get("target"), f"{r.get('rule')}: target precision {_fmt(r.get('target'))}")
               for r in rules if _finite(r.get("target"))]
    cuts = [(r.get("threshold"), f"{r.get('rule')}: quality >= {_threshold(r.get('threshold'))}")
            for r in rules if _finite(r.get("threshold"))]
    charts = []
    if curve:
        charts.append('<div class="hist"><h3>Precision / recall (cross-validated)</h3>'
                      + _line_svg("cross-validated precision-recall curve", [("precision vs recall", PRECISION_COLOR,
                                                                              pr)],
                                  "recall", "precision", chosen, targets)
                      + '<p class="cap">Out-of-fold predictions; a dot is the point a precision target chose, the '
                      "dashed line its target.</p></div>")
        charts.append('<div class="hist"><h3>Against the quality threshold</h3>'
                      + _line_svg("cross-validated precision and recall by threshold",
                                  [("precision", PRECISION_COLOR, [(q.get("threshold"), q.get("precision"))
                                                                   for q in curve]),
                                   ("recall", RECALL_COLOR, [(q.get("threshold"), q.get("recall")) for q in curve])],
                                  "quality threshold", "precision / recall", (), (), cuts)
                      + f'<p class="cap"><span class="key" style="background:{PRECISION_COLOR}"></span>precision'
                      f'<span class="key" style="background:{RECALL_COLOR}"></span>recall of quality ≥ threshold; '
                      "dashed: the chosen thresholds.</p></div>")
    dist = cal.get("distribution") or {}
    if dist.get("kind") == "float":
        charts.append('<div class="hist"><h3>Quality of kept and dropped pairs</h3>'
                      + _hist_svg("quality", dist, cuts)
                      + f'<p class="cap">{_hist_caption(dist)}</p></div>')
    charts_html = f'<div class="grid">{"".join(charts)}</div>' if charts else \
        '<p class="empty">No cross-validated curve stored in this calibration.</p>'

    if rules:
        body = "".join(
            f'<tr><td>{_e(r.get("rule"))}</td><td class="n">{_e(_fmt(r.get("target")))}</td>'
            f'<td class="n">{_e(_threshold(r.get("threshold")))}</td><td class="n">{_e(_fmt(r.get("precision")))}'
            f'</td><td class="n">{_e(_fmt(r.get("recall")))}</td>'
            f'<td class="n">{_e("v" + str(r["calibration"]) if r.get("calibration") is not None else "—")}</td></tr>'
            for r in rules)
        rules_html = ('<h3>Chosen points</h3><p class="sub">Each rule written <code>min: {precision: p}</code> keeps '
                      "pairs whose quality is at least the lowest threshold from which every higher threshold "
                      "reached p in cross-validation.</p>"
                      '<table class="chosen"><thead><tr><th>rule</th><th class="n">target precision</th>'
                      '<th class="n">quality threshold</th><th class="n">CV precision</th><th class="n">CV recall</th>'
                      f'<th class="n">calibration</th></tr></thead><tbody>{body}</tbody></table>')
    else:
        rules_html = '<h3>Chosen points</h3><p class="empty">No rule asks for a precision target.</p>'

    features = cal.get("features") or []
    top = max([abs(f["coef"]) for f in features if _finite(f.get("coef"))] + [0.0])
    feat_body = "".join(
        f'<tr><td>{_e(f.get("feature"))}</td><td class="n">{_e(_signed(f.get("coef")))}</td>'
        f'<td>{_coef_bar(f.get("coef"), top)}</td><td class="n">{_e(_fmt(f.get("mean")))}</td>'
        f'<td class="n">{_e(_fmt(f.get("scale")))}</td></tr>' for f in features)
    feat_html = ('<h3>Features</h3><p class="sub">Logistic-regression coefficients on standardised features (the '
                 "change in log-odds of keeping the meaning per standard deviation), largest effect first; a dropped "
                 "pair's <i>pulled down by</i> lists its features whose coefficient × standardised value was most "
                 f'negative. Intercept {_e(_signed(cal.get("intercept")))}.</p>'
                 '<table class="features"><thead><tr><th>feature</th><th class="n">coefficient</th>'
                 '<th style="width:220px"></th><th class="n">mean</th><th class="n">SD</th></tr></thead>'
                 f"<tbody>{feat_body}</tbody></table>")
    return ('<section class="calibration"><h2>Calibrated quality</h2>'
            f'<p class="sub">{_e(cal.get("summary") or "")}</p><div class="cards">{cards}</div>'
            f'<dl class="lineage">{prov_html}</dl>{charts_html}{rules_html}{feat_html}</section>')


def _signed(value: Any) -> str:
    return f"{value:+.3f}" if _finite(value) else "—"


def _reasons_html(reasons: list[dict], n_dropped: int) -> str:
    if not reasons:
        return '<section><h2>Drop reasons</h2><p class="empty">No dropped pairs.</p></section>'
    top = max(r["pairs"] for r in reasons) or 1
    body = "".join(
        f'<tr><td>{_e(r["reason"])}</td><td class="n">{_e(_fmt(r["pairs"]))}</td>'
        f'<td class="n">{_e(_pct(r.get("share_of_dropped")))}</td>'
        f'<td><svg class="bar" width="240" height="10" viewBox="0 0 240 10"><rect x="0" y="0" '
        f'width="{240 * r["pairs"] / top:.2f}" height="10" fill="{DROPPED_COLOR}"/></svg></td></tr>'
        for r in reasons
    )
    return (
        "<section><h2>Drop reasons</h2>"
        f'<p class="sub">Pairs per reason among {_e(_fmt(n_dropped))} dropped pairs; a pair dropped for several '
        "reasons counts under each, so shares can add up to more than 100%.</p>"
        '<table class="reasons"><thead><tr><th>reason</th><th class="n">pairs</th><th class="n">share of dropped'
        f'</th><th style="width:260px"></th></tr></thead><tbody>{body}</tbody></table></section>'
    )


def _clip(text: Any) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= _TEXT_LIMIT else s[:_TEXT_LIMIT] + f"… (+{len(s) - _TEXT_LIMIT:,} chars)"


def _sample_card(sample: dict, side: str) -> str:
    reasons = "".join(f'<span class="chip reason">{_e(r)}</span>' for r in sample.get("reasons") or [])
    metrics = "".join(f'<span class="chip">{_e(m)} {_e(_fmt(v))}</span>'
                      for m, v in (sample.get("metrics") or {}).items())
    why = ""
    if "quality" in sample:  # a report with a calibration in use
        why = f'<div class="why"><b>quality</b> {_e(_fmt(sample.get("quality")))}'
        if sample.get("quality_why"):
            why += f' · pulled down by <b>{_e(sample["quality_why"])}</b>'
        why += "</div>"
    return (
        f'<div class="sample {side}"><div class="id">{_e(sample.get("pair_id"))} · source '
        f'{_e(sample.get("source_id"))}</div>'
        f'<div class="t"><b>source</b><span>{_e(_clip(sample.get("source")))}</span></div>'
        f'<div class="t"><b>paraphrase</b><span>{_e(_clip(sample.get("paraphrase")))}</span></div>'
        f'<div class="chips">{reasons}{metrics}</div>{why}</div>'
    )


def _samples_html(samples: Mapping[str, list[dict]], seed: Any) -> str:
    out = []
    for side, title in (("kept", "Sample kept pairs"), ("dropped", "Sample dropped pairs")):
        items = samples.get(side) or []
        inner = ('<div class="samples">' + "".join(_sample_card(s, side) for s in items) + "</div>") if items else \
            f'<p class="empty">No {side} pairs.</p>'
        out.append(f'<section><h2>{title}</h2><p class="sub">{len(items)} drawn at random (seed {_e(seed)}).</p>'
                   f"{inner}</section>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------
def write_report(report: dict, folder: Path, stem: str = "report") -> tuple[Path, Path]:
    """Write `folder/stem.html` and `folder/stem.json`, each atomically (temp name, fsync, rename)."""
    folder = Path(folder)
    html_path, json_path = folder / f"{stem}.html", folder / f"{stem}.json"
    data = json.dumps(jsonable(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(json_path, data.encode("utf-8"))
    atomic_write_bytes(html_path, render_html(report).encode("utf-8"))
    return html_path, json_path
