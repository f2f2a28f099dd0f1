"""Export operator: split pairs by source hash and write a Hub-ready dataset folder (parquet + card)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import polars as pl
import yaml

SPLITS = ("train", "validation", "test")
_HF_DTYPES = {pl.String: "string", pl.Int64: "int64", pl.Float64: "float64", pl.Boolean: "bool",
              pl.Int32: "int32", pl.Float32: "float32"}


def _unit(source_id: str) -> float:
    return int(hashlib.sha256(f"split:{source_id}".encode()).hexdigest()[:12], 16) / 16**12


def split_of(source_id: str, fractions: dict[str, float]) -> str:
    """Deterministic split for a source: every paraphrase of one source lands in the same split."""
    u, edge = _unit(source_id), 0.0
    for name in SPLITS:
        edge += fractions[name]
        if u < edge:
            return name
    return SPLITS[-1]


def assign_splits(pairs: pl.DataFrame, fractions: dict[str, float]) -> pl.DataFrame:
    """Add a `split` column by source hash; a split left empty borrows the nearest source of the largest one.

    `datasets.load_dataset` refuses a split with no rows, so every split with a positive fraction gets at
    least one source (which needs at least as many sources as such splits).
    """
    ids = pairs.get_column("source_id").unique().sort().to_list()
    wanted = [s for s in SPLITS if fractions[s] > 0]
    if len(ids) < len(wanted):
        raise ValueError(f"{len(ids)} source(s) cannot fill {len(wanted)} splits; add sources or set a split's "
                         "fraction to 0")
    where = {sid: split_of(sid, fractions) for sid in ids}
    edges, lo = {}, 0.0
    for name in SPLITS:
        edges[name] = lo + fractions[name] / 2
        lo += fractions[name]
    for name in wanted:
        if name in where.values():
            continue
        sizes = {s: sum(1 for v in where.values() if v == s) for s in SPLITS}
        donor = max(SPLITS, key=lambda s: sizes[s])
        pick = min((sid for sid in ids if where[sid] == donor), key=lambda sid: abs(_unit(sid) - edges[name]))
        where[pick] = name
    return pairs.with_columns(split=pl.col("source_id").replace_strict(where, return_dtype=pl.String))


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < bound:
            return label
    return "10M<n<100M"


def card_metadata(name: str, frames: dict[str, pl.DataFrame], license: str, tags: list[str]) -> dict:
    """The YAML header of the dataset card: configs, dataset_info, license, tags."""
    schema = next(iter(frames.values())).schema
    features = [{"name": c, "dtype": _HF_DTYPES.get(t, "string")} for c, t in schema.items()]
    splits = [{"name": s, "num_bytes": int(f.estimated_size()), "num_examples": f.height}
              for s, f in frames.items()]
    total = sum(f.height for f in frames.values())
    return {
        "license": license,
        "language": ["en"],
        "pretty_name": name,
        "tags": list(tags),
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(total)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*"} for s in frames]}],
        "dataset_info": {"features": features, "splits": splits,
                         "dataset_size": sum(sp["num_bytes"] for sp in splits)},
    }


def render_card(meta: dict, body: str) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def write_dataset(dest: Path, frames: dict[str, pl.DataFrame], card: str) -> None:
    """Write `data/<split>-00000-of-00001.parquet` for every split and README.md into `dest`."""
    (dest / "data").mkdir(parents=True, exist_ok=True)
    for split, df in frames.items():
        df.write_parquet(dest / "data" / f"{split}-00000-of-00001.parquet")
    (dest / "README.md").write_text(card, encoding="utf-8")


# what makes Markdown (CommonMark/GFM) of plain text: code, escapes, emphasis, links, table cells, strikethrough,
# an HTML tag or comment (`<` before a letter, `/`, `!` or `?`), an entity, an underscore at a word's edge
_MD_SPECIAL = re.compile(r"[\\`*\[\]|~]|<(?=[A-Za-z/!?])|&(?=#?\w+;)|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]*")


def md_text(value: Any) -> str:
    """User text as literal Markdown (never markup): what would start code, emphasis, a link, HTML, an entity or a
    table cell backslash-escaped, line breaks folded into spaces; `bleu <= 80` and `rouge_l` stay as they are."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(value).split()))


def md_name(value: Any) -> str:
    """A name (column, model, prompt version, id) as inline code when it is a plain name, else as `md_text`."""
    text = str(value)
    return f"`{text}`" if _PLAIN_NAME.fullmatch(text) else md_text(text)


def calibration_card_info(cal: Mapping[str, Any], thresholds: Mapping[str, Mapping] | None = None,
                          fitted_here: bool = True) -> dict:
    """What a dataset card records of the calibration behind the `quality` column: version and id, what it
    predicts, its labels (count, positives, origin, judge models and prompt versions, label file names without
    their folders), coefficients, cross-validation figures and the point each precision-target rule chose.
    No curve and no local paths. `fitted_here`: fitted in the exported workdir (else a file a recipe named)."""
    cv, labels = cal.get("cv") or {}, cal.get("labels") or {}
    best = cv.get("best_single") or {}
    return {
        "version": cal.get("version"), "id": cal.get("id"), "created_at": cal.get("created_at"),
        "fitted_here": fitted_here, "target": (cal.get("settings") or {}).get("target", "meaning"),
        "features": [{"feature": f, "coef": c} for f, c in zip(cal.get("features") or [], cal.get("coef") or [],
                                                                strict=False)],
        "labels": {"count": labels.get("count", cv.get("labels")), "positive": cv.get("positive"),
                   "by_origin": dict(labels.get("by_origin") or {}), "in_corpus": labels.get("in_corpus"),
                   "judge_models": list(labels.get("judge_models") or []),
                   "judge_prompts": list(labels.get("judge_prompts") or []),
                   "files": sorted({PurePath(str(f)).name for f in labels.get("files") or []})},
        "cv": {"folds": cv.get("folds"), "auc": cv.get("auc"),
               "best_single": {"column": best.get("column"), "auc": best.get("auc"),
                               "direction": best.get("direction")}},
        "rules": [{"rule": str(name), **{k: t.get(k) for k in ("target", "threshold", "precision", "recall",
                                                                 "calibration")}}
                  for name, t in (thresholds or {}).items()],
    }


def _num(value: Any, spec: str) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return format(value, spec) if ok else "-"


_POSITIVE = {"meaning": "keep the meaning", "meaning_and_rewrite": "keep the meaning and are real rewrites"}
_TARGETS = {"meaning": "keeps its source's meaning",
            "meaning_and_rewrite": "keeps its source's meaning and is a real rewrite (not a copy)"}


def calibration_card(info: Mapping[str, Any]) -> str:
    """The card's "Quality calibration" section from `calibration_card_info`; user text escaped."""
    labels, cv = info.get("labels") or {}, info.get("cv") or {}
    best = cv.get("best_single") or {}
    count, in_corpus = labels.get("count"), labels.get("in_corpus")
    origin = ", ".join(f"{md_text(k)} {v}" for k, v in (labels.get("by_origin") or {}).items()) or "origin unknown"
    here = info.get("fitted_here", True)
    lines = [f"- calibration v{md_text(info.get('version'))}, id {md_name(info.get('id'))}"
             + (f", fitted {md_text(info['created_at'])}" if info.get("created_at") else "")
             + ("" if here else " in another workdir (a calibration file named by the recipe)")]
    where = ""
    if isinstance(count, int) and isinstance(in_corpus, int):
        where = (f"; {in_corpus} are pairs of this corpus, {count - in_corpus} outside pairs (never exported)" if here
                 else f"; {in_corpus} were pairs of the corpus it was fitted on")
    positive = _POSITIVE.get(info.get("target"), "positive")
    lines.append(f"- labels: {count if count is not None else '-'} ({origin}), {_num(labels.get('positive'), 'd')} "
                 f"{positive}{where}")
    if labels.get("files"):
        lines.append("- human label files: " + ", ".join(md_text(f) for f in labels["files"]))
    if labels.get("judge_models") or labels.get("judge_prompts"):
        lines.append("- judge models: " + (", ".join(md_name(m) for m in labels.get("judge_models") or []) or "-")
                     + "; judge prompt versions: "
                     + (", ".join(md_name(p) for p in labels.get("judge_prompts") or []) or "-"))
    single = (f"{md_name(best['column'])}, AUC {_num(best.get('auc'), '.3f')} ({md_text(best.get('direction'))} "
              "is better)") if best.get("column") else "none"
    lines.append(f"- cross-validation: {_num(cv.get('folds'), 'd')} folds, ROC AUC {_num(cv.get('auc'), '.3f')}; best "
                 f"single score column: {single}")
    features = sorted(info.get("features") or [], key=lambda f: -abs(f["coef"]) if isinstance(
        f.get("coef"), int | float) else 0.0)
    feature_rows = "\n".join(f"| {md_name(f['feature'])} | {_num(f.get('coef'), '+.3f')} |" for f in features)
    rules = info.get("rules") or []
    if rules:
        rule_rows = "\n".join(
            f"| {md_text(r['rule'])}"
            + ("" if r.get("calibration") in (None, info.get("version"))
               else f" (chosen on calibration v{md_text(r['calibration'])})")
            + f" | {_num(r.get('target'), '.2f')} | {_num(r.get('threshold'), '.4f')} | "
            f"{_num(r.get('precision'), '.3f')} | {_num(r.get('recall'), '.3f')} |"
            for r in rules)
        chosen = f"""Rules written as a precision target (`min: {{precision: p}}`) keep a pair when its quality is at
least the lowest threshold from which every higher one reached p in cross-validation:

| rule | target precision | quality threshold | CV precision | CV recall |
|---|---|---|---|---|
{rule_rows}
"""
    else:
        chosen = "No filter rule asks for a precision target.\n"
    target = _TARGETS.get(info.get("target"), md_text(info.get("target")))
    return f"""## Quality calibration
The `quality` column is the probability that a paraphrase {target}:
a logistic regression over the score columns, fitted to labelled pairs and cross-validated (`paradistill calibrate`).

{chr(10).join(lines)}

Coefficients on standardised features (log-odds per standard deviation), largest effect first:

| feature | coefficient |
|---|---|
{feature_rows}

{chosen}"""
