"""Teacher prices and dollar costs: the shipped list prices, a user's price file over them, recipe prices over that.

Prices are USD per 1M tokens. A model is priced by exact name, else by the longest listed name followed by "-"
(dated snapshots), so "gpt-4o-mini-2024-07-18" costs what "gpt-4o-mini" costs; an unlisted model (a local
server) has no price and its cost is unknown (None), never a made-up zero.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from schemas.errors import RecipeError, first_line

__all__ = ["DEFAULT_BATCH_DISCOUNT", "SHIPPED_PRICES", "Price", "PriceTable", "load_prices", "cost_usd"]

DEFAULT_BATCH_DISCOUNT = 0.5
SHIPPED_PRICES = "prices.yaml"  # next to this module, shipped as package data
_TOP_KEYS = ("source", "as_of", "batch_discount", "models")
_PRICE_KEYS = {"input": "input_per_m", "output": "output_per_m", "cached_input": "cached_input_per_m"}


@dataclass(frozen=True)
class Price:
    """One model's list price in USD per 1M tokens; cached_input None means cached tokens cost the input price."""

    input_per_m: float
    output_per_m: float
    cached_input_per_m: float | None = None


def cost_usd(price: Price, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
             batch: bool = False, batch_discount: float = DEFAULT_BATCH_DISCOUNT) -> float:
    """Dollar cost of one request: `prompt_tokens` includes the `cached_tokens` (as OpenAI's usage reports them);
    the Batch API takes `batch_discount` off the whole cost."""
    if min(prompt_tokens, completion_tokens, cached_tokens) < 0 or cached_tokens > prompt_tokens:
        raise ValueError(f"bad token counts: prompt={prompt_tokens} completion={completion_tokens} "
                         f"cached={cached_tokens} (need 0 <= cached <= prompt, completion >= 0)")
    cached_rate = price.input_per_m if price.cached_input_per_m is None else price.cached_input_per_m
    dollars = ((prompt_tokens - cached_tokens) * price.input_per_m + cached_tokens * cached_rate
               + completion_tokens * price.output_per_m) / 1_000_000
    return dollars * (1.0 - batch_discount) if batch else dollars


def _normalise(model: str) -> str:
    """The form model names are compared in (trimmed, lower case)."""
    return model.strip().lower()


@dataclass(frozen=True)
class PriceTable:
    """The effective prices: model -> Price, the Batch API discount, and where the figures came from."""

    prices: Mapping[str, Price]
    batch_discount: float = DEFAULT_BATCH_DISCOUNT
    source: str = ""
    as_of: str = ""
    layers: tuple[str, ...] = ()  # the shipped table, then each override applied, in order
    _lookups: dict[str, Price | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def price_for(self, model: str) -> Price | None:
        """The price of `model` by exact name, else by longest "name-" prefix ("openai/" style prefixes are
        tried stripped too); None when unlisted (cost unknown)."""
        if model in self._lookups:
            return self._lookups[model]
        name = _normalise(model)
        found: Price | None = None
        for candidate in dict.fromkeys((name, name.rsplit("/", 1)[-1])):
            found = self.prices.get(candidate)
            if found is None:
                prefixes = [k for k in self.prices if candidate.startswith(k + "-")]
                if prefixes:
                    found = self.prices[max(prefixes, key=len)]
            if found is not None:
                break
        self._lookups[model] = found
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
             batch: bool = False) -> float | None:
        """Dollar cost of one request to `model` with this table's batch discount; None when `model` has no price."""
        price = self.price_for(model)
        if price is None:
            return None
        return cost_usd(price, prompt_tokens, completion_tokens, cached_tokens, batch, self.batch_discount)

    def fingerprint(self) -> str:
        """A short hash of the figures that decide costs (prices and batch discount), for run manifests."""
        doc = {"batch_discount": self.batch_discount,
               "models": {k: [p.input_per_m, p.output_per_m, p.cached_input_per_m]
                          for k, p in sorted(self.prices.items())}}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------- loading


def _number(value: Any, where: str, field_name: str, upper: float = math.inf) -> float:
    """`value` as a finite float in [0, upper], else a RecipeError naming where and which field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper \
            or math.isnan(value) or math.isinf(value):
        bound = "a number >= 0" if upper == math.inf else f"a number between 0 and {upper:g}"
        raise RecipeError(f"{where}: {field_name} must be {bound}, got {value!r}")
    return float(value)


def _parse_price(entry: Any, where: str, path: str) -> Price:
    """One model's {input, output, cached_input?} mapping as a Price."""
    if not isinstance(entry, Mapping):
        raise RecipeError(f"{where}: {path} must be a mapping with input and output, got {entry!r}")
    unknown = [str(k) for k in entry if k not in _PRICE_KEYS]
    if unknown:
        raise RecipeError(f"{where}: {path}.{unknown[0]} is not a price field (use input, output, cached_input)")
    for required in ("input", "output"):
        if required not in entry:
            raise RecipeError(f"{where}: {path}.{required} is missing (USD per 1M tokens)")
    cached = entry.get("cached_input")
    return Price(input_per_m=_number(entry["input"], where, f"{path}.input"),
                 output_per_m=_number(entry["output"], where, f"{path}.output"),
                 cached_input_per_m=None if cached is None else _number(cached, where, f"{path}.cached_input"))


def _parse_models(models: Any, where: str, path: str) -> dict[str, Price]:
    """A {model: price entry} mapping, validated; `path` prefixes field names in errors."""
    if not isinstance(models, Mapping):
        raise RecipeError(f"{where}: {path or 'prices'} must be a mapping of model name to prices, got {models!r}")
    parsed: dict[str, Price] = {}
    for model, entry in models.items():
        label = f"{path}.{model}" if path else str(model)
        if not isinstance(model, str) or not model.strip():
            raise RecipeError(f"{where}: {label} is not a model name")
        parsed[_normalise(model)] = _parse_price(entry, where, label)
    return parsed


def _parse_file_doc(doc: Any, where: str) -> dict[str, Any]:
    """A price file's top level: {source?, as_of?, batch_discount?, models?}, validated."""
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise RecipeError(f"{where}: expected a mapping with `models:` (and optional batch_discount, source, "
                          f"as_of), got a {type(doc).__name__}")
    unknown = [str(k) for k in doc if k not in _TOP_KEYS]
    if unknown:
        raise RecipeError(f"{where}: {unknown[0]} is not a price file field (use {', '.join(_TOP_KEYS)}); "
                          "put model prices under `models:`")
    out: dict[str, Any] = {}
    if doc.get("models") is not None:
        out["models"] = _parse_models(doc["models"], where, "models")
    if doc.get("batch_discount") is not None:
        out["batch_discount"] = _number(doc["batch_discount"], where, "batch_discount", upper=1.0)
    for key in ("source", "as_of"):
        value = doc.get(key)
        if value is not None:
            if not isinstance(value, str | date):
                raise RecipeError(f"{where}: {key} must be text, got {value!r}")
            out[key] = str(value)
    return out


def _read_yaml(text: str, where: str) -> Any:
    """Parse YAML text, turning a syntax error into one line that names the file and line."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        line = f" line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        raise RecipeError(f"{where}:{line} is not valid YAML: {e.problem or first_line(e)}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: is not valid YAML: {first_line(e)}") from None


@functools.cache
def _shipped() -> dict[str, Any]:
    """The parsed price table shipped with the package."""
    text = resources.files(__package__).joinpath(SHIPPED_PRICES).read_text(encoding="utf-8")
    return _parse_file_doc(_read_yaml(text, SHIPPED_PRICES), SHIPPED_PRICES)


def load_prices(override: str | Path | None = None, inline: Mapping[str, Any] | None = None,
                inline_origin: str = "recipe prices") -> PriceTable:
    """The shipped prices, updated by a user price file (same layout), then by inline {model: {input, output}}.

    A model listed in a later layer replaces its earlier entry whole; a bad file or field raises RecipeError
    naming the file (or `inline_origin`) and the field.
    """
    base = _shipped()
    prices: dict[str, Price] = dict(base.get("models", {}))
    batch_discount = base.get("batch_discount", DEFAULT_BATCH_DISCOUNT)
    source, as_of = base.get("source", ""), base.get("as_of", "")
    layers = [f"shipped {SHIPPED_PRICES} ({as_of})" if as_of else f"shipped {SHIPPED_PRICES}"]
    if override is not None:
        path = Path(override).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"price file {path} not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"price file {path} cannot be read: {first_line(e)}") from None
        layer = _parse_file_doc(_read_yaml(text, str(path)), str(path))
        prices.update(layer.get("models", {}))
        batch_discount = layer.get("batch_discount", batch_discount)
        source, as_of = layer.get("source", source), layer.get("as_of", as_of)
        layers.append(str(path))
    if inline:
        prices.update(_parse_models(inline, inline_origin, ""))
        layers.append(inline_origin)
    return PriceTable(prices=MappingProxyType(prices), batch_discount=batch_discount, source=source, as_of=as_of,
                      layers=tuple(layers))
