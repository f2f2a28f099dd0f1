"""Every stored table's columns and Polars dtypes: the one place that names them."""

from __future__ import annotations

import polars as pl

# Scorers: name -> the score columns it fills, and what it reads (computed once per unique text or pair).
SCORER_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "cosine": {"cosine": pl.Float64},
    "nli": {"nli_fwd": pl.Float64, "nli_bwd": pl.Float64},  # p(source => paraphrase), p(paraphrase => source)
    "rouge_l": {"rouge_l": pl.Float64},
    "bleu": {"bleu": pl.Float64},  # sacrebleu sentence BLEU of the paraphrase against the source, 0-100
    "jaccard": {"jaccard": pl.Float64},
    "wpd_ld": {"wpd": pl.Float64, "ld": pl.Float64},
    "ted": {"ted_3": pl.Float64, "ted_f": pl.Float64},
    "length": {"len_ratio_chars": pl.Float64, "len_ratio_tokens": pl.Float64},
    "numbers": {"numbers_ok": pl.Boolean},
    "self_bleu": {"self_bleu": pl.Float64},
    # the calibrated probability that the pair keeps its source's meaning (pipelines/steps/calibrate.py): a
    # logistic regression over the other columns, fitted to the `labels` table
    "quality": {"quality": pl.Float64},
}
SCORER_INPUTS: dict[str, str] = {
    "cosine": "embeddings of source and paraphrase (embed stage)",
    "nli": "an NLI sequence-classification model (recipe nli.model), both directions",
    "rouge_l": "rouge-score tokens of both texts",
    "bleu": "sacrebleu 13a tokens of both texts",
    "jaccard": "rouge-score tokens of both texts",
    "wpd_ld": "spaCy lemmas of both texts (analyses table)",
    "ted": "spaCy dependency trees of both texts (analyses table)",
    "length": "characters and rouge-score tokens of both texts",
    "numbers": "numbers in both texts",
    "self_bleu": "the other paraphrases of the same source",
    "quality": "the other score columns and a calibration fitted to labels (paradistill calibrate)",
}
SCORE_COLUMN_OWNER = {col: name for name, cols in SCORER_COLUMNS.items() for col in cols}

SOURCES = {
    "source_id": pl.String,  # content hash of the normalised text
    "text": pl.String,  # NFC, whitespace-normalised
    "origin": pl.String,  # file path or dataset id the text came from (first occurrence)
    "origin_row": pl.Int64,  # 1-based row/line in that origin
    "n_chars": pl.Int64,
    "ingest_id": pl.String,
}

QUARANTINE = {
    "origin": pl.String,
    "origin_row": pl.Int64,
    "field": pl.String,
    "reason": pl.String,
    "raw": pl.String,  # a printable preview of the offending value (truncated)
    "stage": pl.String,
    "ingest_id": pl.String,
}

SOURCE_DUPLICATES = {
    "origin": pl.String,
    "origin_row": pl.Int64,
    "source_id": pl.String,  # the kept source this row duplicates
    "ingest_id": pl.String,
}

GENERATIONS = {
    "request_id": pl.String,
    "source_id": pl.String,
    "teacher_kind": pl.String,
    "model": pl.String,
    "prompt_name": pl.String,
    "prompt_version": pl.String,
    "strategy": pl.String,  # "list": one request asks for n; "single": n requests ask for one each
    "sample_index": pl.Int64,
    "n_requested": pl.Int64,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "max_new_tokens": pl.Int64,
    "dtype": pl.String,
    "seed": pl.Int64,
    "params_json": pl.String,  # every sampling parameter, canonical JSON
    "raw_output": pl.String,
    "items": pl.List(pl.String),  # paraphrases parsed from raw_output
    "parse_error": pl.String,  # null when at least one item was parsed
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "finish_reason": pl.String,  # "stop" | "length"
    "latency_s": pl.Float64,  # wall time of the batch the request ran in
    "run_id": pl.String,
    "cost_usd": pl.Float64,  # from the response's usage and the price table; null when the price is unknown
    "attempts": pl.Int64,  # HTTP attempts it took (1 = no retry); 1 for local teachers
    "batch_id": pl.String,  # OpenAI Batch API batch the response came from (null otherwise)
    "refusal": pl.String,  # the model's refusal message, when it refused
}

REQUEST_FAILURES = {  # teacher requests that ended without a response after every retry (never billed twice)
    "request_id": pl.String,
    "source_id": pl.String,
    "teacher_kind": pl.String,
    "model": pl.String,
    "error": pl.String,  # the real cause, whole: "HTTP 500: <server's message>" or "<transport error>: <message>"
    "status_code": pl.Int64,
    "attempts": pl.Int64,
    "batch_id": pl.String,
    "run_id": pl.String,
    "at": pl.Int64,  # time.time_ns()
    # connection_refused, connect_error, timeout, disconnected, rate_limit, auth, client_error (4xx),
    # server_error (5xx), invalid_response, batch_item_error; null in shards written before it existed
    "failure_kind": pl.String,
}

BATCHES = {  # one row per OpenAI batch state seen; the newest row per batch_id is its state
    "batch_id": pl.String,
    "shard_key": pl.String,  # hash of the request ids in the input file: the same shard is never submitted twice
    "input_file_id": pl.String,
    "n_requests": pl.Int64,
    "bytes": pl.Int64,
    "status": pl.String,  # validating | in_progress | finalizing | completed | failed | expired | cancelled | collected
    "output_file_id": pl.String,
    "error_file_id": pl.String,
    "run_id": pl.String,
    "at": pl.Int64,
}

MODERATION = {  # one moderation verdict per (text, moderation model)
    "text_id": pl.String,
    "model": pl.String,
    "flagged": pl.Boolean,
    "categories": pl.List(pl.String),  # the flagged category names
    "role": pl.String,  # "source" | "output"
}

CANDIDATES = {
    "pair_id": pl.String,  # hash(source_id, candidate_id)
    "source_id": pl.String,
    "candidate_id": pl.String,  # content hash of the normalised paraphrase
    "paraphrase": pl.String,
    "request_id": pl.String,
    "item_index": pl.Int64,
    "is_source_copy": pl.Boolean,  # the paraphrase equals the source after normalisation
    "is_repeat": pl.Boolean,  # this pair already came from an earlier request/item
    "context_id": pl.String,  # contextual teacher: the context both sentences continue (null otherwise)
}

EMBEDDINGS = {  # one row per (unique text, embedding model + settings): computed once per workdir
    "text_id": pl.String,
    "model_id": pl.String,  # e.g. "all-MiniLM-L6-v2@bfloat16"
    "embedding": pl.List(pl.Float32),  # L2-normalised
}

ANALYSES = {  # spaCy lemmas and dependency tree, once per unique text and analyser
    "text_id": pl.String,
    "analyzer": pl.String,  # "spacy:<model>@<version>"
    "lemmas": pl.List(pl.String),
    "tree": pl.String,  # ordered labelled tree in bracket notation, see curation/metrics/syntax.py
    "n_tokens": pl.Int64,
}

NLI_CACHE = {  # entailment probabilities, once per (premise, hypothesis, model)
    "premise_id": pl.String,
    "hypothesis_id": pl.String,
    "model_id": pl.String,
    "entailment": pl.Float32,
}

DEDUP_LINKS = {  # one row per pair removed by dedup: which row it duplicated, how, at what score
    "dedup_id": pl.String,  # hash of the dedup settings and the pair set; the `dedup_links` view shows the latest
    "pair_id": pl.String,  # the removed pair
    "source_id": pl.String,
    "method": pl.String,  # exact-source | exact | semantic-source | semantic-corpus | nli-graph
    "duplicate_of": pl.String,  # the kept pair_id (or the source_id for exact-source)
    "duplicate_kind": pl.String,  # "pair" | "source"
    "score": pl.Float64,  # 1.0 for exact; cosine for semantic; min mutual entailment for nli-graph
    "index": pl.String,  # semantic-corpus: the index and its parameters (flat | ivf-sq8:lists=N,probe=P |
    # hnsw:M=32,efSearch=E); semantic-source: exact-block; null for exact / nli-graph
}

SCORES = {  # one row per pair, one column per metric (null when that scorer was not run)
    "score_set": pl.String,  # hash of the scorer settings and the pair set; the `scores` view shows the latest
    "pair_id": pl.String,
    "source_id": pl.String,
    **{col: dtype for cols in SCORER_COLUMNS.values() for col, dtype in cols.items()},
}

DECISIONS = {  # every pair kept or dropped, with all the rules it failed
    "filter_id": pl.String,
    "pair_id": pl.String,
    "source_id": pl.String,
    "kept": pl.Boolean,
    "reasons": pl.List(pl.String),  # empty when kept
    "quality": pl.Float64,  # the calibrated quality score (null when the quality scorer is not run)
    # a dropped pair's features that pulled its quality down most: "cosine -1.32, ld -0.41" (standardised
    # feature x coefficient, the most negative first); null for kept pairs and without the quality scorer
    "quality_why": pl.String,
}
LABELS = {  # human or LLM-judge labels: does the paraphrase keep the source's meaning?
    "label_id": pl.String,  # hash(origin, pair_id[, judge model, prompt]): a newer row with the same id replaces it
    "pair_id": pl.String,  # hash(source_id, candidate_id), as for candidates
    "source_id": pl.String,
    "candidate_id": pl.String,
    "source": pl.String,
    "paraphrase": pl.String,
    "label": pl.Boolean,  # meaning kept; null when a judge's answer could not be read
    "rewrite": pl.Boolean,  # a real rewrite rather than a copy (the judge's second label; optional for humans)
    "origin": pl.String,  # "human" | "judge"
    "in_corpus": pl.Boolean,  # one of the workdir's candidate pairs; outside pairs are never exported
    "file": pl.String,  # human: the label file; judge: null
    "origin_row": pl.Int64,  # human: 1-based row in that file
    "judge_model": pl.String,
    "prompt_version": pl.String,  # the judge prompt as NAME@VERSION#HASH
    "raw": pl.String,  # the judge's raw answer
    "cost_usd": pl.Float64,
    "request_id": pl.String,
    "run_id": pl.String,
    "at": pl.Int64,  # time.time_ns() when stored
}

FUNNEL = {  # rule by rule, in order: how many came in, were dropped (first failure), went out
    "filter_id": pl.String,
    "step": pl.Int64,
    "rule": pl.String,
    "description": pl.String,
    "pairs_in": pl.Int64,
    "dropped": pl.Int64,
    "pairs_out": pl.Int64,
}

CORPUS_METRICS = {  # method B's dataset-quality columns per selection (all, kept, dropped)
    "filter_id": pl.String,
    "selection": pl.String,
    **{c: pl.Float64 for c in ("cos_sim", "h2", "h3", "msttr", "jaccard", "ted_3", "ted_f", "wpd", "ld")},
    "pairs": pl.Int64,
    "sources": pl.Int64,
    "pairs_per_source": pl.Float64,
}

CURRENT_SETS = {  # which result set of a versioned table is current (the views show only that one)
    "table": pl.String,
    "set_id": pl.String,
    "at": pl.Int64,  # time.time_ns() when it became current
}

TABLES: dict[str, dict[str, pl.DataType]] = {
    "sources": SOURCES,
    "quarantine": QUARANTINE,
    "source_duplicates": SOURCE_DUPLICATES,
    "generations": GENERATIONS,
    "request_failures": REQUEST_FAILURES,
    "batches": BATCHES,
    "moderation": MODERATION,
    "candidates": CANDIDATES,
    "embeddings": EMBEDDINGS,
    "analyses": ANALYSES,
    "nli_cache": NLI_CACHE,
    "dedup_links": DEDUP_LINKS,
    "scores": SCORES,
    "labels": LABELS,
    "label_scores": SCORES,  # the scores of labelled pairs from outside the corpus (never filtered or exported)
    "decisions": DECISIONS,
    "funnel": FUNNEL,
    "corpus_metrics": CORPUS_METRICS,
    "current_sets": CURRENT_SETS,
}

# Versioned tables: each run of their stage writes a whole new set; the view named after the table shows the
# current set only, and `<table>_history` shows every set.
VERSIONED: dict[str, str] = {
    "dedup_links": "dedup_id",
    "scores": "score_set",
    "label_scores": "score_set",
    "decisions": "filter_id",
    "funnel": "filter_id",
    "corpus_metrics": "filter_id",
}


def empty_frame(table: str) -> pl.DataFrame:
    """A zero-row frame with the table's columns and dtypes."""
    return pl.DataFrame(schema=TABLES[table])


def conform(df: pl.DataFrame, table: str) -> pl.DataFrame:
    """Select and cast `df` to the table's declared columns, in order; missing columns are an error."""
    schema = TABLES[table]
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"frame for table {table!r} lacks columns {missing}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])
