"""Report step: the current decisions, scores, funnel and corpus metrics as one HTML file plus JSON; with a
calibrated quality score in use, its calibration and the thresholds the filter chose on it as well."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pipelines.report import build_report, write_report
from pipelines.steps.calibrate import calibration_in_use
from pipelines.steps.pairs import PairTexts, unique_pairs
from pipelines.store import Workdir
from schemas.errors import StateError
from schemas.tables import SCORER_COLUMNS


def write_workdir_report(wd: Workdir, out_dir: Path | None = None, samples: int = 8, lineage: dict | None = None
                         ) -> dict:
    """Write `reports/report.html` and `reports/report.json` (or into `out_dir`) from the current sets."""
    fid = wd.current_set("decisions")
    if fid is None:
        raise StateError(f"{wd.root}: no filter decisions yet; run `paradistill filter` (or a recipe with a "
                         "filter section) first")
    decisions = wd.read_current("decisions").drop("filter_id", "source_id")
    scores = wd.read_current("scores").drop("score_set", "source_id")
    pairs = (PairTexts.open(wd).attach(unique_pairs(wd, texts=False).select("pair_id", "source_id"))
             .join(decisions, on="pair_id").join(scores, on="pair_id", how="left", suffix="_score"))
    if "quality_score" in pairs.columns:  # the filter's copy of quality first, the score set's where it has none
        pairs = pairs.with_columns(pl.coalesce("quality", "quality_score").alias("quality")).drop("quality_score")
    metric_cols = [c for cols in SCORER_COLUMNS.values() for c in cols
                   if pairs.get_column(c).null_count() < pairs.height]
    funnel = (wd.read_current("funnel").sort("step")
              .select("step", "rule", pl.col("pairs_in").alias("in"), "dropped", pl.col("pairs_out").alias("out")))
    corpus = wd.read_current("corpus_metrics").drop("filter_id").to_dicts()
    info = {"workdir": str(wd.root), "filter_id": fid, "score_set": wd.current_set("scores"),
            "dedup_id": wd.current_set("dedup_links"), "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **(lineage or {})}
    calibration = calibration_in_use(wd) if "quality" in metric_cols else None
    thresholds = (wd.stage_done("filter", fid) or {}).get("thresholds") if calibration else None
    if calibration:
        info.setdefault("calibration", f"v{calibration.get('version')} ({calibration.get('id')})")
    report = build_report(pairs, funnel, corpus, metric_cols, info, samples=samples, calibration=calibration,
                          thresholds=thresholds)
    html, js = write_report(report, out_dir or wd.root / "reports")
    return {"html": str(html), "json": str(js), "pairs": pairs.height, "metrics": metric_cols,
            **({"calibration": calibration.get("version")} if calibration else {})}
