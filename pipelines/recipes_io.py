"""Load a recipe YAML into the pydantic model, with one clear line per mistake."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from schemas.errors import RecipeError
from schemas.recipe import Recipe

RECIPES_DIR = Path(__file__).with_name("recipes")
M = TypeVar("M", bound=BaseModel)


def _shipped_tail(path: Path) -> Path | None:
    """The shipped recipe that a missing path names by its package path's tail (`pipelines/recipes/demo.yaml`
    or `recipes/demo.yaml` from outside the repository root), else None."""
    shipped = RECIPES_DIR / path.name
    if path.is_absolute() or path.suffix not in (".yaml", ".yml") or not shipped.is_file():
        return None
    tail = path.parts
    return shipped if shipped.parts[-len(tail):] == tail else None


def resolve_recipe_path(ref: str) -> Path:
    """A path to a YAML file, or the name of a shipped recipe (`demo` -> pipelines/recipes/demo.yaml); a shipped
    recipe's package path (`pipelines/recipes/demo.yaml`) finds it from any current directory."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{ref}.yaml"
    if not path.suffix and shipped.is_file():
        return shipped
    tail = _shipped_tail(path)
    if tail is not None:
        return tail
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


def resolve_workdir(written: str | None, name: str, base: Path, origin: str) -> str:
    """The recipe's workdir as an absolute path.

    A `workdir:` written in the recipe is relative to the recipe's folder, as `sources:` are. Without one, the
    default `work/NAME` is made in the current directory (shipped recipes live in the package, which is no
    project folder: `paradistill run demo` writes ./work/demo). Older versions read a written workdir from the
    current directory: when only that folder exists, it is used, with a note on stderr.
    """
    if written is None:
        return str((Path.cwd() / "work" / name).resolve())
    path = Path(written).expanduser()
    if path.is_absolute():
        return str(path)
    new, old = (base / path).resolve(), (Path.cwd() / path).resolve()
    if new != old and not new.exists() and old.is_dir():
        print(f"note: {origin}: using the existing workdir {written} under the current directory ({old}), as older "
              f"versions did; a recipe's workdir: is now read from its folder ({new}): write an absolute path "
              "to keep this one", file=sys.stderr)
        return str(old)
    return str(new)


def load_recipe(ref: str) -> tuple[Recipe, Path]:
    """The recipe and its folder: paths in it are relative to that folder (sources first, then the current
    directory; the workdir: see `resolve_workdir`). The returned recipe's workdir is absolute."""
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
    written = recipe.workdir if data.get("workdir") is not None else None
    recipe.workdir = resolve_workdir(written, recipe.name, base, ref)
    for s in [*recipe.sources, *([recipe.teacher] if recipe.teacher.kind == "import" else []), *recipe.labels]:
        p = Path(s.path)
        if not s.path.startswith("hf:") and not p.is_absolute() and (base / p).exists():
            s.path = str((base / p).resolve())
    calibration = recipe.score.calibration
    if calibration and not Path(calibration).is_absolute() and (base / calibration).exists():
        recipe.score.calibration = str((base / calibration).resolve())
    return recipe, base
