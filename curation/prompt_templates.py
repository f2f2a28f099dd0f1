"""Versioned prompt templates: shipped YAML files (`curation/prompts/NAME.vN.yaml`) or a user's file.

Teacher templates (`mode: list | single`) ask for paraphrases of `{text}`; judge templates (`mode: judge`, see
curation/judge.py) ask about one pair, `{source}` and `{paraphrase}`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from schemas.errors import RecipeError

PROMPTS_DIR = Path(__file__).with_name("prompts")
TEACHER_MODES = ("list", "single")
JUDGE_MODES = ("judge",)
#: placeholders the user message must hold, and the keys every few-shot example needs, per mode
_PLACEHOLDERS = {"list": ("{text}",), "single": ("{text}",), "judge": ("{source}", "{paraphrase}")}
_EXAMPLE_KEYS = {"list": {"input", "output"}, "single": {"input", "output"},
                 "judge": {"source", "paraphrase", "output"}}


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    mode: str  # "list" | "single" (teacher) | "judge"
    system: str
    user: str
    examples: tuple[dict, ...] = field(default_factory=tuple)
    digest: str = ""

    @property
    def version_id(self) -> str:
        """NAME@VERSION#HASH: a template edited without a version bump still gets new request ids."""
        return f"{self.name}@{self.version}#{self.digest}"

    def messages(self, text: str, n: int) -> list[dict]:
        """Chat messages for one request (few-shot examples become earlier user/assistant turns)."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for ex in self.examples:
            msgs.append({"role": "user", "content": self.user.format(text=ex["input"], n=n)})
            msgs.append({"role": "assistant", "content": ex["output"]})
        msgs.append({"role": "user", "content": self.user.format(text=text, n=n)})
        return msgs


def student_template(template: str) -> PromptTemplate:
    """A trained student's own prompt (one rewrite per request), as a template for the local teacher."""
    return PromptTemplate(name="student", version="1", mode="single", system="", user=template,
                          digest=hashlib.sha256(template.encode()).hexdigest()[:8])


def available(modes: tuple[str, ...] = TEACHER_MODES) -> list[str]:
    """Shipped templates (NAME.vN) of the given modes: teacher templates unless asked for others."""
    return sorted(p.name.removesuffix(".yaml") for p in PROMPTS_DIR.glob("*.v*.yaml")
                  if _from_file(p).mode in modes)


def _from_file(path: Path) -> PromptTemplate:
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML in prompt template ({str(e).splitlines()[0]})") from None
    need = {"name", "version", "mode", "user"}
    if not isinstance(data, dict) or not need <= set(data):
        raise RecipeError(f"{path}: prompt template needs the keys {', '.join(sorted(need))}")
    mode = data["mode"]
    if mode not in _PLACEHOLDERS:
        raise RecipeError(f"{path}: field 'mode' must be 'list', 'single' or 'judge', not {mode!r}")
    missing = [p for p in _PLACEHOLDERS[mode] if p not in str(data["user"])]
    if missing:
        raise RecipeError(f"{path}: field 'user' of a {mode} template must contain the placeholder {missing[0]}")
    examples = tuple(data.get("examples") or ())
    if any(not isinstance(e, dict) or _EXAMPLE_KEYS[mode] - set(e) for e in examples):
        raise RecipeError(f"{path}: every entry of 'examples' needs {' and '.join(sorted(_EXAMPLE_KEYS[mode]))}")
    return PromptTemplate(
        name=str(data["name"]), version=str(data["version"]), mode=data["mode"], system=data.get("system") or "",
        user=data["user"], examples=examples, digest=hashlib.sha256(raw).hexdigest()[:8],
    )


def load_template(ref: str, modes: tuple[str, ...] = TEACHER_MODES, field: str = "teacher.prompt"
                  ) -> PromptTemplate:
    """`NAME` (latest shipped version), `NAME@VERSION`, or a path to a template YAML file; a template of another
    mode than `modes` (a judge prompt given to a teacher, or the reverse) is a RecipeError naming `field`."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"{field}: no such template file {ref}")
        template = _from_file(path)
    else:
        name, _, version = ref.partition("@")
        files = sorted(PROMPTS_DIR.glob(f"{name}.v*.yaml"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
        if version:
            files = [p for p in files if p.stem.rsplit(".v", 1)[1] == version]
        if not files:
            raise RecipeError(f"{field}: unknown template {ref!r} (shipped: {', '.join(available(modes))})")
        template = _from_file(files[-1])
    if template.mode not in modes:
        raise RecipeError(f"{field}: {ref!r} is a {template.mode} template; give a {' or '.join(modes)} one "
                          f"(shipped: {', '.join(available(modes))})")
    return template
