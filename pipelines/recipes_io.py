"""Load a recipe YAML into the pydantic model, with one clear line per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from schemas.errors import RecipeError
from schemas.recipe import Recipe

RECIPES_DIR = Path(__file__).with_name("recipes")
M = TypeVar("M", bound=BaseModel)


def resolve_recipe_path(ref: str) -> Path:
    """A path to a YAML file, or the name of a shipped recipe (`demo` -> pipelines/recipes/demo.yaml)."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{ref}.yaml"
    if not path.suffix and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise RecipeError(f"{ref}: no such recipe file (shipped recipes: {names})")


# pydantic puts the discriminated union's tag in the error path
TEACHER_TAGS = {"local", "import", "openai", "openai-batch", "contextual"}


def _loc(err: dict) -> str:
    loc = [str(x) for x in err["loc"]]
    loc = [x for i, x in enumerate(loc) if not (x in TEACHER_TAGS and (i == 0 or loc[i - 1] == "teacher"))]
    return ".".join(loc) or "(top level)"


def validated(model: type[M], data: object, origin: str) -> M:
    """Validate `data` as `model`; the first problem becomes one RecipeError line naming its field."""
    return validated_with(model.model_validate, data, origin)


def validated_with(adapter, data: object, origin: str):
    """Validate with a pydantic TypeAdapter (or a model's `model_validate`); errors as in `validated`."""
    check = adapter.validate_python if hasattr(adapter, "validate_python") else adapter
    try:
        return check(data)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against schemas/recipe.schema.json"
        raise RecipeError(f"{origin}: field {_loc(first)}: {msg}{more}") from None


def parse_recipe(data: object, origin: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe must be a YAML mapping (name:, sources:, teacher:, ...)")
    return validated(Recipe, data, origin)


def load_recipe(ref: str) -> tuple[Recipe, Path]:
    """The recipe and its folder (source paths in it are relative to that folder)."""
    path = resolve_recipe_path(ref)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read recipe ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', None) or e})") from None
    recipe = parse_recipe(data, str(path))
    base = path.parent.resolve()
    for s in [*recipe.sources, *([recipe.teacher] if recipe.teacher.kind == "import" else [])]:
        p = Path(s.path)
        if not s.path.startswith("hf:") and not p.is_absolute() and (base / p).exists():
            s.path = str((base / p).resolve())
    return recipe, base
