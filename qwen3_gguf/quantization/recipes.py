"""Recipes: named per-tensor rules (type ladders, edge-layer bumps) kept as data in quantize/recipes.toml."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gguf import GGMLQuantizationType

from ..data import recipes_file
from ..errors import UserError
from ..gguf_file import TensorInfo
from .types import FILE_TYPE_ALIASES, FILE_TYPES, TENSOR_TYPES, UNQUANTIZED, QuantType, file_type_named

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

@dataclass(frozen=True)
class Rule:
    """One recipe rule: tensors whose name matches `pattern` (searched) get `type`, the hybrid's
    precision (`keep`) or `bump` steps above the base type; optionally only in the first/last
    fraction of blocks and only for some base types."""

    pattern: re.Pattern
    type: GGMLQuantizationType | None = None
    keep: bool = False
    bump: int | None = None
    first: float | None = None
    last: float | None = None
    bases: frozenset[GGMLQuantizationType] | None = None

    def applies(self, tensor: TensorInfo, layer: int | None, n_layer: int, base: GGMLQuantizationType) -> bool:
        if self.bases is not None and base not in self.bases:
            return False
        if not self.pattern.search(tensor.name):
            return False
        if self.first is None and self.last is None:
            return True
        if layer is None:
            return False
        in_first = self.first is not None and layer < _edge_blocks(self.first, n_layer)
        in_last = self.last is not None and layer >= n_layer - _edge_blocks(self.last, n_layer)
        return in_first or in_last

    def describe(self, keep: GGMLQuantizationType | None = None) -> str:
        """What the rule does, e.g. "base +2 in the first/last 10% of blocks"."""
        if self.bump is not None:
            action = f"base +{self.bump}"
        elif self.keep:
            action = f"keep at {keep.name}" if keep is not None else "keep"
        else:
            action = self.type.name
        if self.first is not None and self.first == self.last:
            return f"{action} in the first/last {self.first:.0%} of blocks"
        ends = [f"{end} {fraction:.0%}" for end, fraction in (("first", self.first), ("last", self.last))
                if fraction is not None]
        return f"{action} in the {' and '.join(ends)} of blocks" if ends else action


def _edge_blocks(fraction: float, n_layer: int) -> int:
    return math.ceil(fraction * n_layer - 1e-9)


@dataclass(frozen=True)
class Recipe:
    """A named list of rules. A searched recipe (`exact = true`) gives every tensor its type as
    written, even below llama.cpp's own choice, and may name the file type (`type`) and the
    importance matrix (`imatrix`, relative to the recipe's folder) it was searched with."""

    name: str
    description: str
    rules: tuple[Rule, ...]
    exact: bool = False
    type_name: str | None = None
    imatrix: Path | None = None

    @property
    def keeps(self) -> bool:
        """Whether a rule keeps tensors at a hybrid precision (then it needs a hybrid type)."""
        return any(rule.keep for rule in self.rules)


@dataclass(frozen=True)
class RecipeBook:
    """quantize/recipes.toml: the ladders bumps climb, the hybrid names, the named recipes."""

    ladders: tuple[tuple[GGMLQuantizationType, ...], ...]
    hybrid_recipe: str
    hybrid_aliases: dict[str, str]
    recipes: dict[str, Recipe]

    def bump(self, base: GGMLQuantizationType, steps: int) -> GGMLQuantizationType | None:
        """`steps` up the ladder `base` is on (stopping at its top); None if on no ladder."""
        for ladder in self.ladders:
            if base in ladder:
                return ladder[min(ladder.index(base) + steps, len(ladder) - 1)]
        return None


@cache
def recipe_book() -> RecipeBook:
    data = tomllib.loads(recipes_file().read_text(encoding="utf-8"))
    where = "recipes.toml"
    return RecipeBook(
        ladders=tuple(tuple(_type_field(t, where) for t in ladder) for ladder in data["ladders"].values()),
        hybrid_recipe=data["hybrid"]["recipe"],
        hybrid_aliases={alias.lower(): target.lower() for alias, target in data["hybrid"]["aliases"].items()},
        recipes={name: _recipe(name, body, where) for name, body in data["recipe"].items()},
    )


def recipe_names() -> list[str]:
    return list(recipe_book().recipes)


def load_recipe(name_or_file: str | Path) -> Recipe:
    """A shipped recipe by name, or a TOML file holding one (`description` and `rules`)."""
    recipes = recipe_book().recipes
    if str(name_or_file) in recipes:
        return recipes[str(name_or_file)]
    path = Path(name_or_file)
    if not path.is_file():
        raise UserError(f"unknown recipe {str(name_or_file)!r}: not a file, and the shipped recipes are "
                        f"{', '.join(recipes)}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {exc}") from None
    return _recipe(path.stem, data, str(path), folder=path.parent)


def _recipe(name: str, body: dict, where: str, folder: Path | None = None) -> Recipe:
    if not isinstance(body.get("rules"), list):
        raise UserError(f"{where}: recipe {name!r} needs a list of rules (rules = [...])")
    rules = tuple(_rule(raw, f"{where}: recipe {name!r} rule {i + 1}") for i, raw in enumerate(body["rules"]))
    exact = body.get("exact", False)
    if not isinstance(exact, bool):
        raise UserError(f"{where}: recipe {name!r}: 'exact' must be true or false")
    type_name = body.get("type")
    if type_name is not None and (not isinstance(type_name, str) or file_type_named(type_name.upper()) is None):
        raise UserError(f"{where}: recipe {name!r}: 'type' must be a llama.cpp file type such as Q4_K_M")
    imatrix = body.get("imatrix")
    if imatrix is not None and (not isinstance(imatrix, str) or folder is None):
        raise UserError(f"{where}: recipe {name!r}: 'imatrix' must be a file name beside the recipe")
    return Recipe(name=name, description=str(body.get("description", "")), rules=rules, exact=exact,
                  type_name=type_name.upper() if type_name else None,
                  imatrix=folder / imatrix if imatrix is not None else None)


def _rule(raw, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise UserError(f"{where} is not a table")
    unknown = set(raw) - {"match", "type", "bump", "first", "last", "base"}
    if unknown:
        raise UserError(f"{where} has unknown keys {', '.join(sorted(unknown))}")
    try:
        pattern = re.compile(raw["match"])
    except (KeyError, TypeError, re.error) as exc:
        raise UserError(f"{where} needs a valid regex in 'match' ({exc})") from None
    if ("type" in raw) == ("bump" in raw):
        raise UserError(f"{where} needs exactly one of 'type' and 'bump'")
    keep = raw.get("type") == "keep"
    if "bump" in raw and (not isinstance(raw["bump"], int) or raw["bump"] < 1):
        raise UserError(f"{where}: 'bump' must be a positive number of steps")
    for key in ("first", "last"):
        if key in raw and not (isinstance(raw[key], (int, float)) and 0 < raw[key] <= 1):
            raise UserError(f"{where}: {key!r} must be a fraction of the blocks in (0, 1]")
    bases = raw.get("base")
    if bases is not None and (not isinstance(bases, list) or not bases):
        raise UserError(f"{where}: 'base' must be a list of tensor types")
    return Rule(
        pattern=pattern, type=_type_field(raw["type"], where) if "type" in raw and not keep else None, keep=keep,
        bump=raw.get("bump"), first=raw.get("first"), last=raw.get("last"),
        bases=frozenset(_type_field(b, where) for b in bases) if bases else None,
    )


def _type_field(name, where: str) -> GGMLQuantizationType:
    if not isinstance(name, str) or name.upper() not in TENSOR_TYPES:
        raise UserError(f"{where}: unknown tensor type {name!r}")
    return TENSOR_TYPES[name.upper()]


def parse_type(name: str) -> QuantType:
    """A file type (Q4_K_M, iq2_xs, ...), an alias (q4_k_l, ...) or a hybrid PRECISION_BASE."""
    wanted = name.strip().lower()
    spelled = recipe_book().hybrid_aliases.get(wanted, wanted).upper()
    if (file_type := file_type_named(spelled)) is not None:
        return QuantType(name=file_type.name, file_type=file_type)
    for keep_name, keep in TENSOR_TYPES.items():
        prefix = keep_name + "_"
        base = file_type_named(spelled.removeprefix(prefix)) if spelled.startswith(prefix) else None
        if base is not None and base.base not in UNQUANTIZED:  # the base of a hybrid is a quantized type
            return QuantType(name=wanted, file_type=base, keep=keep)
    raise UserError(
        f"unknown quantization type {name!r}; valid: {', '.join(FILE_TYPES)} "
        f"(aliases {', '.join(FILE_TYPE_ALIASES)}); hybrids PRECISION_BASE such as bf16_q8_0, "
        f"f16_q6_k, bf16_q4_k (the sensitive tensors at PRECISION, the rest at BASE); "
        f"and {', '.join(recipe_book().hybrid_aliases)}"
    )
