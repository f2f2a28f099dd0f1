"""Export operator: split pairs by source hash and write a Hub-ready dataset folder (parquet + card)."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
