"""Contracts of the student: training and evaluation options, and the format file saved next to an adapter.

`student.json` beside a LoRA adapter says how the student was trained (base model, prompt format, dataset and
version, options, losses). The trainer writes it; `evaluate` and the local teacher (self-distillation) read it
so they prompt the student exactly as it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from schemas.errors import InputError, first_line
from schemas.recipe import _Strict

STUDENT_FILE = "student.json"


class StudentFormat(_Strict):
    """What `student.json` holds: enough to load the student and prompt it as it was trained."""

    arch: Literal["causal", "seq2seq"]
    base_model: str = Field(description="The base model as recorded (path, Hub id, or the embedded model's id).")
    base_model_ref: str | None = Field(description="What to load it from again; None = the embedded SmolLM2.")
    template: str
    max_length: int
    dataset: str
    dataset_revision: str | None = None
    dataset_version: str | None = None
    options: dict
    steps: int = 0
    losses: dict = Field(default_factory=dict)


def read_student(folder: str | Path) -> StudentFormat | None:
    """The format file of an adapter folder, or None when the folder has none."""
    path = Path(folder) / STUDENT_FILE
    if not path.is_file():
        return None
    try:
        return StudentFormat.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: unreadable student format ({first_line(e)}); retrain into a fresh folder") from None
