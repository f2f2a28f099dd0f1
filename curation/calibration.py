"""A calibrated `quality` score: a logistic regression over score columns, fitted to labelled pairs.

The fit is scikit-learn's (mean imputation, standardisation, L2 logistic regression), cross-validated for an
honest precision/recall curve; what is stored is plain numbers (means, scales, coefficients), so applying it is
one Polars expression over the score columns and a dropped pair's low score can be explained feature by feature.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl

from schemas.errors import RecipeError
from schemas.recipe import CalibrateConfig

FORMAT = "paradistill-calibration/1"
EXCLUDED = ("quality", "self_bleu")  # the output itself; a score that depends on a source's other paraphrases
CURVE_POINTS = 200  # the stored precision/recall curve keeps at most this many thresholds


def default_features(columns: dict[str, pl.DataType], frame: pl.DataFrame) -> list[str]:
    """Every numeric or boolean score column with a value somewhere, but those in EXCLUDED."""
    return [c for c, t in columns.items() if c not in EXCLUDED and c in frame.columns
            and (t.is_numeric() or t == pl.Boolean) and frame.get_column(c).null_count() < frame.height]


def matrix(frame: pl.DataFrame, features: list[str]) -> np.ndarray:
    """The features as float64 (booleans 0/1, nulls NaN), one row per pair."""
    return frame.select([pl.col(c).cast(pl.Float64) for c in features]).to_numpy().astype(np.float64)


def _pipeline(c: float, seed: int):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(),
                         LogisticRegression(C=c, max_iter=2000, random_state=seed))


def _curve(y: np.ndarray, p: np.ndarray) -> list[dict]:
    """Precision and recall of `p >= t` at each distinct out-of-fold probability t (at most CURVE_POINTS, evenly
    spread over the thresholds, always with the lowest and the highest), ordered by threshold."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    idx = np.arange(len(thresholds))
    if len(idx) > CURVE_POINTS:
        idx = np.unique(np.linspace(0, len(thresholds) - 1, CURVE_POINTS).round().astype(int))
    return [{"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i])}
            for i in idx]


def _single_column_auc(x: np.ndarray, y: np.ndarray, features: list[str]) -> dict:
    """The best single column's ROC AUC, either direction (what a hand-set threshold on one column can do)."""
    from sklearn.metrics import roc_auc_score

    best = {"column": None, "auc": 0.5, "direction": "higher"}
    for j, name in enumerate(features):
        col = x[:, j]
        ok = ~np.isnan(col)
        if ok.sum() < 2 or len(np.unique(y[ok])) < 2:
            continue
        auc = float(roc_auc_score(y[ok], col[ok]))
        if max(auc, 1 - auc) > best["auc"]:
            best = {"column": name, "auc": max(auc, 1 - auc), "direction": "higher" if auc >= 0.5 else "lower"}
    return best


def fit(frame: pl.DataFrame, features: list[str], cfg: CalibrateConfig) -> dict:
    """Fit to `frame` (the features and a boolean `target`): the cross-validated curve and AUC, then the model on
    every label. Too few labels, or too few of a class for the folds, is a RecipeError (one line)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if not features:
        raise RecipeError("calibrate: no score column to fit on; add scorers (score.scorers) or list "
                          "calibrate.features")
    y = frame.get_column("target").cast(pl.Int64).to_numpy()
    x = matrix(frame, features)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if len(y) < cfg.min_labels or min(n_pos, n_neg) < cfg.folds:
        raise RecipeError(f"calibrate: {len(y)} usable label(s) ({n_pos} keep the meaning, {n_neg} do not); at "
                          f"least {cfg.min_labels}, with {cfg.folds} of each, are needed: label more pairs "
                          "(paradistill labels import FILE, or paradistill judge --sample N)")
    folds = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    oof = cross_val_predict(_pipeline(cfg.c, cfg.seed), x, y, cv=folds, method="predict_proba")[:, 1]
    model = _pipeline(cfg.c, cfg.seed).fit(x, y)
    imputer, scaler, lr = (model.named_steps[k] for k in ("simpleimputer", "standardscaler", "logisticregression"))
    import sklearn

    return {
        "format": FORMAT,
        "features": features,
        "impute": [float(v) for v in imputer.statistics_],
        "mean": [float(v) for v in scaler.mean_],
        "scale": [float(v) for v in scaler.scale_],
        "coef": [float(v) for v in lr.coef_[0]],
        "intercept": float(lr.intercept_[0]),
        "settings": cfg.model_dump(mode="json"),
        "sklearn": sklearn.__version__,
        "cv": {"folds": cfg.folds, "labels": len(y), "positive": n_pos, "auc": float(roc_auc_score(y, oof)),
               "best_single": _single_column_auc(x, y, features), "curve": _curve(y, oof)},
    }


def content_id(cal: dict) -> str:
    """A short hash of what the calibration computes (features and numbers), for set ids and cards."""
    keys = ("features", "impute", "mean", "scale", "coef", "intercept")
    blob = json.dumps({k: cal[k] for k in keys}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check(cal: dict, available: set[str], where: str) -> None:
    """A calibration file that is not one, or needs a score column this recipe does not compute: one line."""
    if not isinstance(cal, dict) or cal.get("format") != FORMAT:
        raise RecipeError(f"{where}: not a paradistill calibration (expected format {FORMAT}); make one with "
                          "paradistill calibrate")
    missing = [f for f in cal["features"] if f not in available]
    if missing:
        raise RecipeError(f"{where}: the calibration uses the score column(s) {', '.join(missing)}, which this "
                          "recipe does not compute; add their scorers to score.scorers or recalibrate")


def _standardised(cal: dict) -> list[pl.Expr]:
    """Each feature as (x - mean) / scale, a null taking the fitted mean of its column."""
    return [((pl.col(f).cast(pl.Float64).fill_null(imp).fill_nan(imp) - m) / s).alias(f)
            for f, imp, m, s in zip(cal["features"], cal["impute"], cal["mean"], cal["scale"], strict=True)]


def quality_expr(cal: dict) -> pl.Expr:
    """The calibrated probability as a Polars expression over the score columns (lazy, any number of rows)."""
    z = pl.lit(cal["intercept"])
    for term, w in zip(_standardised(cal), cal["coef"], strict=True):
        z = z + term * w
    return (1.0 / (1.0 + (-z).exp())).alias("quality")


def why(frame: pl.DataFrame, cal: dict, top: int = 3) -> pl.Series:
    """Per row, the features that pulled the score down most: 'cosine -1.32, ld -0.41' (coefficient x
    standardised value, the most negative first, at most `top`); null when none pulled it down."""
    if frame.height == 0:
        return pl.Series("quality_why", [], dtype=pl.String)
    contrib = frame.select([t * w for t, w in zip(_standardised(cal), cal["coef"], strict=True)]).to_numpy()
    names = cal["features"]
    order = np.argsort(contrib, axis=1, kind="stable")[:, :top]
    out = []
    for row, idx in zip(contrib, order, strict=True):
        parts = [f"{names[j]} {row[j]:+.2f}" for j in idx if row[j] < 0]
        out.append(", ".join(parts) or None)
    return pl.Series("quality_why", out, dtype=pl.String)


def threshold_for(cal: dict, precision: float) -> dict:
    """The lowest threshold t such that every threshold from t up reached `precision` in cross-validation (so
    the choice does not ride on one lucky point of a jagged curve); with its precision and recall there."""
    curve = cal["cv"]["curve"]
    chosen = None
    for point in reversed(curve):  # from the highest threshold down, while the precision holds
        if point["precision"] + 1e-12 < precision:
            break
        chosen = point
    if chosen is None:
        best = max(curve, key=lambda q: (q["precision"], q["recall"]), default=None)
        got = f"the best was {best['precision']:.2f} at recall {best['recall']:.2f}" if best else "no curve"
        raise RecipeError(f"no quality threshold reached precision {precision:g} in cross-validation ({got}); "
                          "ask for a lower precision or add labels")
    return {"threshold": chosen["threshold"], "precision": chosen["precision"], "recall": chosen["recall"],
            "target": precision}


def describe(cal: dict) -> str:
    """One line: how many labels, from where, and the cross-validated AUC beside the best single column's."""
    cv, best = cal["cv"], cal["cv"]["best_single"]
    origin = ", ".join(f"{k} {v}" for k, v in sorted(cal.get("labels", {}).get("by_origin", {}).items()))
    single = f"{best['column']} {best['auc']:.3f}" if best["column"] else "none"
    return (f"{cv['labels']} labels ({origin or 'unknown origin'}; {cv['positive']} keep the meaning), "
            f"{cv['folds']}-fold AUC {cv['auc']:.3f} (best single column: {single})")
