"""The student's data: an exported dataset (local folder or Hub id + revision) as Polars frames, and pseudo-targets.

The trainer reads nothing of the workdir: only what `paradistill export` wrote (or its published copy), through
`datasets.load_dataset`, exactly as any user of the dataset would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from schemas.errors import InputError, first_line

NEEDED = ("source", "paraphrase")


@dataclass(frozen=True)
class DatasetRef:
    """Where the pairs come from: `dataset` as given, the revision asked for, and the export version if known."""

    dataset: str
    revision: str | None
    version: str | None
    commit: str | None = None

    def identity(self) -> dict:
        return {"dataset": self.dataset, "revision": self.revision, "version": self.version, "commit": self.commit}


def _local_version(path: Path) -> str | None:
    meta = path / "paradistill.json"
    if meta.is_file():
        return json.loads(meta.read_text(encoding="utf-8")).get("version")
    return None


def _hub_commit(repo_id: str, revision: str | None, token: str | None) -> str | None:
    """The commit a Hub revision points to (recorded so a tag moved later is noticed); None when unreachable."""
    try:
        from huggingface_hub import HfApi

        return HfApi(token=token).dataset_info(repo_id, revision=revision).sha
    except Exception:  # noqa: BLE001 - the data loaded already; the commit is extra lineage
        return None


# file suffixes that make a --dataset value a path, never a Hub id (Hub names may hold dots: `org/name-v1.5`)
DATA_SUFFIXES = {".parquet", ".json", ".jsonl", ".csv", ".tsv", ".txt", ".arrow", ".zip", ".gz", ".tar", ".yaml",
                 ".yml"}


def missing_path_reason(dataset: str) -> str | None:
    """Why `dataset`, which does not exist locally, must be a mistyped path rather than a Hub id; None when it
    may be a Hub id (NAME or OWNER/NAME). Pure and offline: decides before any network call.

    A path: starts with `./ ../ / ~` (or is `.`/`..`), holds a backslash or more than the one OWNER/NAME slash,
    ends in a data-file suffix, or its first component is a local folder (`work/nothing` when `work/` exists).
    `hf:OWNER/NAME` always means the Hub.
    """
    if dataset.startswith("hf:") or Path(dataset).expanduser().exists():
        return None
    if dataset in (".", "..") or dataset.startswith(("./", "../", "/", "~")):
        return "no such folder"
    if "\\" in dataset or dataset.count("/") > 1 or dataset.endswith("/"):  # Hub ids hold one slash at most
        return "no such folder"
    if Path(dataset).suffix.lower() in DATA_SUFFIXES:
        return "no such file"
    owner = dataset.split("/", 1)[0]
    if "/" in dataset and owner and Path(owner).is_dir():
        return "no such folder"
    return None


def _check_local(dataset: str) -> None:
    reason = missing_path_reason(dataset)
    if reason is None:
        return
    hint = "a Hub id is OWNER/NAME"
    owner = dataset.split("/", 1)[0]
    if dataset.count("/") == 1 and Path(owner).is_dir() and not dataset.startswith(("./", "/", "~")):
        hint += f"; write hf:{dataset} for the Hub"
    raise InputError(f"dataset {dataset}: {reason} ({hint})")


def load_splits(dataset: str, splits: list[str], revision: str | None = None, token: str | None = None,
                optional: tuple[str, ...] = ()) -> tuple[dict[str, pl.DataFrame], DatasetRef]:
    """Each asked split as a frame with `source`, `paraphrase`, `source_id` (the source text when absent);
    a split named in `optional` is left out when the dataset has none."""
    import datasets

    _check_local(dataset)  # a mistyped path fails here, offline, instead of after the Hub's retries
    given = dataset  # `hf:OWNER/NAME` is kept as given in the lineage, so evaluate reads it back the same way
    hub_forced = dataset.startswith("hf:")
    dataset = dataset.removeprefix("hf:")
    path = Path(dataset).expanduser()
    local = path.exists() and not hub_forced
    if local and revision:
        raise InputError(f"{given}: --revision applies to Hub datasets; a local folder has no revisions")
    try:
        ds = datasets.load_dataset(str(path.resolve()) if local else dataset, revision=revision, token=token)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "cannot load this"
        hint = "" if local else " (a Hub id needs network access, or a local export folder)"
        raise InputError(f"{given}: cannot load the dataset{'@' + revision if revision else ''}: "
                         f"{first_line(e)}{hint}") from None
    frames = {}
    for split in splits:
        if split not in ds and split in optional:
            continue
        if split not in ds:
            raise InputError(f"{given}: no split {split!r} (it has: {', '.join(ds)}); export with a non-zero "
                             f"fraction for {split}")
        df = ds[split].to_polars()
        missing = [c for c in NEEDED if c not in df.columns]
        if missing:
            raise InputError(f"{given}: split {split} has no column {missing[0]!r}; a paraphrase dataset needs "
                             "columns source and paraphrase (as `paradistill export` writes)")
        if "source_id" not in df.columns:
            df = df.with_columns(source_id=pl.col("source"))
        frames[split] = df.select("source_id", "source", "paraphrase").drop_nulls()
    version = _local_version(path) if local else revision
    commit = None if local else _hub_commit(dataset, revision, token)
    return frames, DatasetRef(str(path.resolve()) if local else given, revision, version, commit)


def _rank_key(seed: int, source_id: str, paraphrase: str) -> str:
    return hashlib.sha256(f"{seed}\x00{source_id}\x00{paraphrase}".encode()).hexdigest()


def epoch_examples(train: pl.DataFrame, epoch: int, mode: str, seed: int) -> pl.DataFrame:
    """The (source, paraphrase) examples of one epoch, in that epoch's shuffled order.

    `all`: every pair. `rotate` (pseudo-targets, method C): one paraphrase per source, a different one each epoch
    (the source's paraphrases in a seeded order, epoch e takes the (e mod k)-th), so k epochs see all k.
    """
    df = train.sort("source_id", "paraphrase")
    if mode == "rotate":
        df = (df.with_columns(_key=pl.struct("source_id", "paraphrase").map_elements(
                  lambda r: _rank_key(seed, r["source_id"], r["paraphrase"]), return_dtype=pl.String))
              .sort("source_id", "_key")
              .with_columns(_i=pl.int_range(pl.len()).over("source_id"), _k=pl.len().over("source_id"))
              .filter(pl.col("_i") == epoch % pl.col("_k"))
              .drop("_key", "_i", "_k"))
    order = df.with_columns(_o=pl.struct("source_id", "paraphrase").map_elements(
        lambda r: _rank_key(seed * 1_000_003 + epoch, r["source_id"], r["paraphrase"]), return_dtype=pl.String))
    return order.sort("_o").drop("_o")


def examples_per_epoch(train: pl.DataFrame, mode: str) -> int:
    return train.get_column("source_id").n_unique() if mode == "rotate" else train.height
