"""spaCy lemmas and dependency trees, once per unique text and analyser (analyses table)."""

from __future__ import annotations

import polars as pl

from pipelines.store import Workdir

CHUNK = 4096  # texts per stored shard


def analyzer_id(spacy_model: str) -> str:
    import spacy

    version = spacy.util.get_package_version(spacy_model) or "unknown"
    return f"spacy:{spacy_model}@{version}"


def analyses(wd: Workdir, texts: pl.DataFrame, spacy_model: str, progress=None) -> pl.DataFrame:
    """(text_id, lemmas, tree, n_tokens) for every row of `texts` (text_id, text), parsing only the new ones."""
    from curation.metrics.syntax import analyse, load_spacy

    aid = analyzer_id(spacy_model)
    stored = (wd.scan("analyses").filter(pl.col("analyzer") == aid)
              .filter(pl.col("text_id").is_in(texts.get_column("text_id").implode()))
              .select("text_id", "lemmas", "tree", "n_tokens").collect().unique("text_id", keep="first"))
    todo = texts.join(stored, on="text_id", how="anti")
    new = []
    if todo.height:
        nlp = load_spacy(spacy_model)
        task = progress.add_task("parse", total=todo.height, unit="texts") if progress else None
        for start in range(0, todo.height, CHUNK):
            chunk = todo.slice(start, CHUNK)
            parsed = analyse(chunk.get_column("text").to_list(), nlp)
            rows = pl.concat([chunk.select("text_id"), parsed], how="horizontal").with_columns(analyzer=pl.lit(aid))
            wd.append("analyses", rows)
            new.append(rows.select("text_id", "lemmas", "tree", "n_tokens"))
            if task is not None:
                progress.advance(task, chunk.height)
    table = pl.concat([stored, *new]) if new else stored
    return texts.select("text_id").join(table, on="text_id", how="left", maintain_order="left")
