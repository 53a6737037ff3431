"""Quantization through llama.cpp's own quantizer, with every tensor's type planned first.

A request — a file type such as Q4_K_M, or a hybrid such as bf16_q8_0, plus a recipe and any
explicit `--tensor-type REGEX=TYPE` rules — becomes a per-tensor plan before any work:

1. llama.cpp's own choice for each tensor, computed here from the rules of its
   `llama-quant.cpp` (the mixes inside Q4_K_M and friends, the output/embedding types, the
   fallbacks for rows that do not fit a block), so the plan is exact;
2. explicit choices (`--token-embedding-type`, `--output-tensor-type`, `--tensor-type`);
3. otherwise the first matching recipe rule, which never goes below llama.cpp's choice.

When the plan departs from llama.cpp's own anywhere, every tensor's type is handed to
`llama_model_quantize` explicitly (an exact-name override each): llama.cpp's per-layer
counters skip overridden tensors, so partial overrides would shift its choices for the rest.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from . import engine
from .errors import UserError
from .gguf_file import ModelFile, TensorInfo, read_header, read_model_file
from .imatrix import ImportanceMatrix, partial_file_for
from .progress import progress_bar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

Q = GGMLQuantizationType

# --- type names ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileType:
    """A llama.cpp file type (llama_ftype) and the tensor type most matrices get in it."""

    name: str
    ftype: LlamaFileType
    base: GGMLQuantizationType


def _file_type(name: str, base: GGMLQuantizationType, ftype: str | None = None) -> FileType:
    return FileType(name, LlamaFileType[ftype or f"MOSTLY_{name}"], base)


# llama_ftype → default tensor type, as llama_ftype_get_default_type in llama-quant.cpp.
FILE_TYPES: dict[str, FileType] = {ft.name: ft for ft in [
    _file_type("Q2_K", Q.Q2_K), _file_type("Q2_K_S", Q.Q2_K),
    _file_type("Q3_K_S", Q.Q3_K), _file_type("Q3_K_M", Q.Q3_K), _file_type("Q3_K_L", Q.Q3_K),
    _file_type("Q4_0", Q.Q4_0), _file_type("Q4_1", Q.Q4_1),
    _file_type("Q4_K_S", Q.Q4_K), _file_type("Q4_K_M", Q.Q4_K),
    _file_type("Q5_0", Q.Q5_0), _file_type("Q5_1", Q.Q5_1),
    _file_type("Q5_K_S", Q.Q5_K), _file_type("Q5_K_M", Q.Q5_K),
    _file_type("Q6_K", Q.Q6_K), _file_type("Q8_0", Q.Q8_0),
    _file_type("IQ1_S", Q.IQ1_S), _file_type("IQ1_M", Q.IQ1_M),
    _file_type("IQ2_XXS", Q.IQ2_XXS), _file_type("IQ2_XS", Q.IQ2_XS),
    _file_type("IQ2_S", Q.IQ2_XS), _file_type("IQ2_M", Q.IQ2_S),
    _file_type("IQ3_XXS", Q.IQ3_XXS), _file_type("IQ3_XS", Q.IQ3_S),
    _file_type("IQ3_S", Q.IQ3_S), _file_type("IQ3_M", Q.IQ3_S),
    _file_type("IQ4_NL", Q.IQ4_NL), _file_type("IQ4_XS", Q.IQ4_XS),
    _file_type("TQ1_0", Q.TQ1_0), _file_type("TQ2_0", Q.TQ2_0),
    _file_type("F16", Q.F16), _file_type("BF16", Q.BF16), _file_type("F32", Q.F32, "ALL_F32"),
]}
FILE_TYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize

# Tensor types a tensor may be stored as (for --tensor-type and friends, and hybrids).
TENSOR_TYPES: dict[str, GGMLQuantizationType] = {t.name: t for t in [
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q6_K, Q.Q5_K, Q.Q5_1, Q.Q5_0, Q.Q4_K, Q.Q4_1, Q.Q4_0,
    Q.Q3_K, Q.Q2_K, Q.IQ4_XS, Q.IQ4_NL, Q.IQ3_S, Q.IQ3_XXS, Q.IQ2_S, Q.IQ2_XS, Q.IQ2_XXS,
    Q.IQ1_M, Q.IQ1_S, Q.TQ2_0, Q.TQ1_0,
]}
UNQUANTIZED = {Q.F32, Q.F16, Q.BF16}
# Types llama.cpp refuses to produce without an imatrix (tensor_requires_imatrix).
NEEDS_IMATRIX = {Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS}


@dataclass(frozen=True)
class QuantType:
    """What a TYPE name asks for: a file type, and for a hybrid the precision kept for the
    sensitive tensors (the hybrid recipe names them)."""

    name: str                                   # Q4_K_M, or a hybrid's name as given: bf16_q8_0
    file_type: FileType
    keep: GGMLQuantizationType | None = None


def tensor_type(name: str) -> GGMLQuantizationType:
    """A tensor type by name, case-insensitive (q6_k, BF16, iq4_nl, ...)."""
    found = TENSOR_TYPES.get(name.strip().upper())
    if found is None:
        raise UserError(f"unknown tensor type {name!r}; valid: {', '.join(TENSOR_TYPES)}")
    return found


def parse_type(name: str) -> QuantType:
    """A file type (Q4_K_M, iq2_xs, ...), an alias (q4_k_l, ...) or a hybrid PRECISION_BASE."""
    wanted = name.strip().lower()
    spelled = _recipe_book().hybrid_aliases.get(wanted, wanted).upper()
    if (file_type := _file_type_named(spelled)) is not None:
        return QuantType(name=file_type.name, file_type=file_type)
    for keep_name, keep in TENSOR_TYPES.items():
        prefix = keep_name + "_"
        base = _file_type_named(spelled.removeprefix(prefix)) if spelled.startswith(prefix) else None
        if base is not None and base.base not in UNQUANTIZED:  # the base of a hybrid is a quantized type
            return QuantType(name=wanted, file_type=base, keep=keep)
    raise UserError(
        f"unknown quantization type {name!r}; valid: {', '.join(FILE_TYPES)} "
        f"(aliases {', '.join(FILE_TYPE_ALIASES)}); hybrids PRECISION_BASE such as bf16_q8_0, "
        f"f16_q6_k, bf16_q4_k (the sensitive tensors at PRECISION, the rest at BASE); "
        f"and {', '.join(_recipe_book().hybrid_aliases)}"
    )


def _file_type_named(name: str) -> FileType | None:
    return FILE_TYPES.get(FILE_TYPE_ALIASES.get(name, name))


def bits_per_weight(ggml_type: GGMLQuantizationType) -> float:
    block, type_bytes = GGML_QUANT_SIZES[ggml_type]
    return 8 * type_bytes / block


# --- recipes ---------------------------------------------------------------------------------


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
    name: str
    description: str
    rules: tuple[Rule, ...]

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


def recipes_file():
    return resources.files("qwen3_gguf") / "quantize_data" / "recipes.toml"


@cache
def _recipe_book() -> RecipeBook:
    data = tomllib.loads(recipes_file().read_text(encoding="utf-8"))
    where = "recipes.toml"
    return RecipeBook(
        ladders=tuple(tuple(_type_field(t, where) for t in ladder) for ladder in data["ladders"].values()),
        hybrid_recipe=data["hybrid"]["recipe"],
        hybrid_aliases={alias.lower(): target.lower() for alias, target in data["hybrid"]["aliases"].items()},
        recipes={name: _recipe(name, body, where) for name, body in data["recipe"].items()},
    )


def recipe_names() -> list[str]:
    return list(_recipe_book().recipes)


def load_recipe(name_or_file: str | Path) -> Recipe:
    """A shipped recipe by name, or a TOML file holding one (`description` and `rules`)."""
    recipes = _recipe_book().recipes
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
    return _recipe(path.stem, data, str(path))


def _recipe(name: str, body: dict, where: str) -> Recipe:
    if not isinstance(body.get("rules"), list):
        raise UserError(f"{where}: recipe {name!r} needs a list of rules (rules = [...])")
    rules = tuple(_rule(raw, f"{where}: recipe {name!r} rule {i + 1}") for i, raw in enumerate(body["rules"]))
    return Recipe(name=name, description=str(body.get("description", "")), rules=rules)


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


# --- llama.cpp's own choice per tensor (llama-quant.cpp, for Qwen3: dense, not Falcon) -------


@dataclass(frozen=True)
class _ModelFacts:
    n_layer: int
    n_gqa: int
    tied: bool           # no output.weight: token_embd doubles as the output head
    has_imatrix: bool


_CATEGORIES = [  # tensor_get_category: first substring found wins
    ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
]
_LOW_IQ = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}


def _category(name: str) -> str:
    if name in ("output.weight", "token_embd.weight"):
        return name.removesuffix(".weight")
    return next((category for needle, category in _CATEGORIES if needle in name), "other")


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of layers that get more bits in Q4_K_M/Q5_K_M: about half of them."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def llama_choice(tensor: TensorInfo, layer: int, ft: FileType,
                 model: _ModelFacts) -> tuple[GGMLQuantizationType, str]:
    """llama_tensor_get_type_impl: the type llama.cpp picks for a quantizable tensor, and why.

    `layer` stands for llama.cpp's per-category counters, which equal the block index when
    no tensor is overridden (the only case in which this choice is left to llama.cpp).
    """
    f, base, n = ft.name, ft.base, model.n_layer
    category = _category(tensor.name)
    gqa4 = model.n_gqa >= 4
    if category == "output" or (category == "token_embd" and model.tied):
        head = "output head" if category == "output" else "token embedding (tied: also the output head)"
        if tensor.shape[0] % GGML_QUANT_SIZES[base][0]:
            return Q.Q8_0, f"{head}: rows do not fit {base.name} blocks"
        if f in _LOW_IQ | {"IQ3_XXS"}:
            return Q.Q5_K, f"{head} at {f}"
        if base != Q.Q8_0:
            return Q.Q6_K, head
        return base, head
    if category == "token_embd":
        if f in {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"}:
            return Q.Q2_K, f"token embedding at {f}"
        if f in {"IQ2_S", "IQ2_M", "IQ3_XXS"}:
            return Q.IQ3_S, f"token embedding at {f}"
        if f in {"TQ1_0", "TQ2_0"}:
            return Q.Q4_K, f"token embedding at {f}"
        return base, "base type"
    if f in _LOW_IQ:
        low_iq_up = Q.IQ3_S if f in {"IQ2_S", "IQ2_M"} else Q.Q2_K
        if category == "attn_v":
            return (Q.Q4_K, "attn_v with GQA ≥ 4") if gqa4 else (low_iq_up, f"attn_v at {f}")
        if category == "ffn_down" and layer < n // 8:
            return low_iq_up, "ffn_down in the first 1/8 of layers"
        if category == "attn_output" and f in {"IQ1_S", "IQ1_M"}:
            return Q.IQ2_XXS, f"attn_output at {f}"
        if category == "attn_output" and f in {"IQ2_S", "IQ2_M"}:
            return Q.IQ3_S, f"attn_output at {f}"
        return base, "base type"
    if category == "attn_v":
        return _attn_v_choice(f, base, layer, n, gqa4, model.has_imatrix)
    if category in ("attn_k", "attn_q"):
        if f == "IQ3_XS":
            return Q.IQ3_XXS, f"{category} at IQ3_XS"
        if f == "IQ3_XXS":
            return Q.IQ2_S, f"{category} at IQ3_XXS"
        return base, "base type"
    if category == "ffn_down":
        return _ffn_down_choice(f, base, layer, n, model.has_imatrix)
    if category == "attn_output":
        raised = {"Q2_K": Q.Q3_K, "IQ3_XXS": Q.IQ3_S, "Q3_K_M": Q.Q4_K, "Q3_K_L": Q.Q5_K, "IQ3_M": Q.Q4_K}
        return (raised[f], f"attn_output at {f}") if f in raised else (base, "base type")
    if category in ("ffn_gate", "ffn_up") and f == "IQ3_XS" and n // 8 <= layer < 7 * n // 8:
        return Q.IQ3_XXS, f"{category} in the middle layers at IQ3_XS"
    return base, "base type"


def _attn_v_choice(f: str, base, layer: int, n: int, gqa4: bool, has_imatrix: bool):
    if f == "Q2_K":
        return (Q.Q4_K if gqa4 else Q.Q3_K), "attn_v at Q2_K"
    if f == "Q2_K_S" and gqa4:
        return Q.Q4_K, "attn_v with GQA ≥ 4"
    if f == "IQ3_XXS":
        if gqa4:
            return Q.Q4_K, "attn_v with GQA ≥ 4"
        if has_imatrix:
            return Q.IQ3_XXS, "attn_v at IQ3_XXS with an imatrix"
        return Q.IQ3_S, "attn_v at IQ3_XXS without an imatrix"
    if f in ("IQ3_XS", "IQ3_S") and gqa4:
        return Q.Q4_K, "attn_v with GQA ≥ 4"
    if f == "IQ3_M":
        return Q.Q4_K, "attn_v at IQ3_M"
    if f == "Q3_K_M":
        return (Q.Q5_K, "attn_v in the first 2 layers") if layer < 2 else (Q.Q4_K, "attn_v at Q3_K_M")
    if f == "Q3_K_L":
        return Q.Q5_K, "attn_v at Q3_K_L"
    if f in ("IQ4_NL", "IQ4_XS") and gqa4:
        return Q.Q5_K, "attn_v with GQA ≥ 4"
    if f in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n):
        return Q.Q6_K, "attn_v in a use_more_bits layer"
    if f == "Q4_K_S" and layer < 4:
        return Q.Q5_K, "attn_v in the first 4 layers"
    return base, "base type"


def _ffn_down_choice(f: str, base, layer: int, n: int, has_imatrix: bool):
    first_eighth = layer < n // 8
    if f == "Q2_K":
        return Q.Q3_K, "ffn_down at Q2_K"
    if f == "Q2_K_S":
        return (Q.Q4_K, "ffn_down in the first 1/8 of layers") if first_eighth else (base, "base type")
    if f == "IQ3_XXS" and not has_imatrix:
        return (Q.Q4_K if first_eighth else Q.Q3_K), "ffn_down at IQ3_XXS without an imatrix"
    if f == "Q3_K_M":
        if layer < n // 16:
            return Q.Q5_K, "ffn_down in the first 1/16 of layers"
        return Q.Q4_K, "ffn_down at Q3_K_M"
    if f == "IQ3_M" and first_eighth:
        return Q.Q4_K, "ffn_down in the first 1/8 of layers"
    if f == "Q3_K_L":
        return Q.Q5_K, "ffn_down at Q3_K_L"
    if f == "Q4_K_M":
        return (Q.Q6_K, "ffn_down in a use_more_bits layer") if use_more_bits(layer, n) else (base, "base type")
    if first_eighth and f in ("IQ4_NL", "IQ4_XS") and not has_imatrix:
        return Q.Q5_K, "ffn_down in the first 1/8 of layers without an imatrix"
    if f == "Q5_K_M" and use_more_bits(layer, n):
        return Q.Q6_K, "ffn_down in a use_more_bits layer"
    if f == "Q4_K_S" and first_eighth:
        return Q.Q5_K, "ffn_down in the first 1/8 of layers"
    if f in ("Q4_0", "Q5_0") and has_imatrix and first_eighth:
        return (Q.Q4_1 if f == "Q4_0" else Q.Q5_1), "ffn_down in the first 1/8 of layers with an imatrix"
    return base, "base type"


# tensor_type_fallback: what a type becomes when a tensor's rows are not a whole number of blocks.
_FALLBACK = {
    **dict.fromkeys([Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_XS], Q.IQ4_NL),
    **dict.fromkeys([Q.Q2_K, Q.Q3_K, Q.TQ1_0, Q.TQ2_0], Q.Q4_0),
    Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0,
}


def fit_rows(ggml_type: GGMLQuantizationType, row_length: int) -> tuple[GGMLQuantizationType, str]:
    """The type llama.cpp actually stores for rows of `row_length` (its shape fallback)."""
    if row_length % GGML_QUANT_SIZES[ggml_type][0] == 0:
        return ggml_type, ""
    fallback = _FALLBACK.get(ggml_type, ggml_type)
    if row_length % GGML_QUANT_SIZES[fallback][0]:
        fallback = Q.F16
    return fallback, f"; rows of {row_length} do not fit {ggml_type.name} blocks → {fallback.name}"


def quantizable(tensor: TensorInfo) -> bool:
    """tensor_allows_quantization for Qwen3: matrices named *weight, except norms."""
    n_dims = len(tensor.shape)
    while n_dims > 1 and tensor.shape[n_dims - 1] == 1:
        n_dims -= 1
    return n_dims >= 2 and tensor.name.endswith("weight") and "_norm.weight" not in tensor.name


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    source: GGMLQuantizationType
    type: GGMLQuantizationType
    llama_type: GGMLQuantizationType     # what llama.cpp would choose by itself
    why: str
    needs_imatrix: bool
    chosen_by_llama: bool                # llama.cpp runs its type choice (or our override) on it

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        block, type_bytes = GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * type_bytes


@dataclass(frozen=True)
class QuantPlan:
    model: ModelFile
    quant_type: QuantType
    recipe: Recipe
    tensors: list[TensorPlan]
    imatrix: ImportanceMatrix | None

    @property
    def n_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.n_bytes / self.n_elements

    @property
    def overrides(self) -> tuple[tuple[str, int], ...]:
        """Exact-name overrides for llama_model_quantize: none when llama.cpp's own choice is
        the plan, otherwise one for every quantized tensor (see the module docstring)."""
        if all(t.type == t.llama_type for t in self.tensors):
            return ()
        return tuple((f"^{re.escape(t.name)}$", int(t.type)) for t in self.tensors if t.chosen_by_llama)


def plan_quantization(model: str | Path, type_name: str, *, imatrix: ImportanceMatrix | None = None,
                      recipe: str | Path | None = None, tensor_types: Sequence[str] = (),
                      output_tensor_type: str | None = None,
                      token_embedding_type: str | None = None) -> QuantPlan:
    """Decide every tensor's type for quantizing `model` to `type_name`; nothing is written.

    `tensor_types` are "REGEX=TYPE" strings, searched in the lower-cased tensor name, first
    match wins; they and the output/token-embedding types override the recipe. Any problem —
    unknown names, an IQ type without imatrix, an imatrix of another model, an input that is
    already quantized — is a UserError here, before any work.
    """
    quant_type = parse_type(type_name)
    book = _recipe_book()
    chosen_recipe = load_recipe(recipe or "llama-default")
    if chosen_recipe.keeps and quant_type.keep is None:
        raise UserError(f"recipe {chosen_recipe.name!r} keeps tensors at a hybrid's precision; "
                        f"use a hybrid type such as bf16_{quant_type.file_type.name.lower()}")
    # A hybrid's own rules come first; the recipe's apply to the other tensors.
    recipes = [book.recipes[book.hybrid_recipe]] if quant_type.keep else []
    recipes.append(chosen_recipe)
    model_file = read_model_file(model)
    header = read_header(model_file.path)
    tied = not any(t.name == "output.weight" for t in header.tensors)
    explicit = _explicit_rules(tensor_types, output_tensor_type, token_embedding_type, tied=tied)
    if quant_type.file_type.base in UNQUANTIZED and explicit:
        raise UserError(f"{quant_type.file_type.name} is not a quantized type: llama.cpp stores every matrix "
                        "as it and applies no per-tensor types")
    facts = _ModelFacts(n_layer=model_file.block_count, n_gqa=model_file.head_count // model_file.head_count_kv,
                        tied=tied, has_imatrix=imatrix is not None)
    planner = _Planner(quant_type, recipes, explicit, facts, book)
    tensors = [planner.plan(t) for t in sorted(header.tensors, key=_llama_order)]
    plan = QuantPlan(model=model_file, quant_type=quant_type, recipe=chosen_recipe, tensors=tensors, imatrix=imatrix)
    _check_sources(plan)
    _check_imatrix(plan)
    return plan


def _llama_order(tensor: TensorInfo) -> tuple[int, str]:
    """llama.cpp's tensor order: by block (non-block tensors first), then by name."""
    layer = _layer(tensor.name)
    return (-1 if layer is None else layer), tensor.name


def _layer(name: str) -> int | None:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def _explicit_rules(tensor_types: Sequence[str], output_type: str | None, embedding_type: str | None,
                    *, tied: bool) -> list[tuple[re.Pattern, GGMLQuantizationType, str]]:
    """(pattern, type, why) in precedence order: token embedding, output, then --tensor-type."""
    rules = []
    if embedding_type:
        rules.append((re.compile(r"^token_embd\.weight$"), tensor_type(embedding_type),
                      f"--token-embedding-type {embedding_type}"))
    if output_type:
        # With tied embeddings the token embedding is the output head, and llama.cpp treats it so.
        head = r"^(output|token_embd)\.weight$" if tied else r"^output\.weight$"
        rules.append((re.compile(head), tensor_type(output_type), f"--output-tensor-type {output_type}"))
    for spec in tensor_types:
        pattern, sep, type_name = spec.rpartition("=")
        if not sep or not pattern:
            raise UserError(f"--tensor-type {spec!r} is not REGEX=TYPE (e.g. 'attn_v=q6_k')")
        try:
            rules.append((re.compile(pattern.lower()), tensor_type(type_name), f"--tensor-type {spec}"))
        except re.error as exc:
            raise UserError(f"--tensor-type {spec!r}: {pattern!r} is not a valid regex ({exc})") from None
    return rules


class _Planner:
    def __init__(self, quant_type: QuantType, recipes: list[Recipe], explicit, model: _ModelFacts, book: RecipeBook):
        self.quant_type, self.explicit, self.model, self.book = quant_type, explicit, model, book
        self.rules = [(f"recipe {recipe.name} rule {i}", rule)
                      for recipe in recipes for i, rule in enumerate(recipe.rules, 1)]

    def plan(self, tensor: TensorInfo) -> TensorPlan:
        ft = self.quant_type.file_type
        chosen_by_llama = quantizable(tensor) and ft.base not in UNQUANTIZED
        if not quantizable(tensor):
            chosen, llama_type, why = tensor.type, tensor.type, "not quantized (norms and vectors never are)"
        elif not chosen_by_llama:
            chosen, llama_type, why = ft.base, ft.base, f"{ft.name} stores every matrix as {ft.base.name}"
        else:
            chosen, llama_type, why = self._quantized(tensor)
        return TensorPlan(
            name=tensor.name, shape=tensor.shape, source=tensor.type, type=chosen, llama_type=llama_type, why=why,
            needs_imatrix=_needs_imatrix(tensor.name, chosen, ft), chosen_by_llama=chosen_by_llama,
        )

    def _quantized(self, tensor: TensorInfo):
        ft, layer = self.quant_type.file_type, _layer(tensor.name)
        default, reason = llama_choice(tensor, layer if layer is not None else 0, ft, self.model)
        llama_type, fallback_note = fit_rows(default, tensor.shape[0])
        llama_why = f"llama.cpp {ft.name}: {reason}{fallback_note}"
        lowered = tensor.name.lower()
        for pattern, wanted, why in self.explicit:
            if pattern.search(lowered):
                chosen, note = fit_rows(wanted, tensor.shape[0])
                return chosen, llama_type, why + note
        for rule_name, rule in self.rules:
            if rule.applies(tensor, layer, self.model.n_layer, ft.base):
                return self._by_rule(rule_name, rule, tensor, llama_type, llama_why)
        return llama_type, llama_type, llama_why

    def _by_rule(self, rule_name: str, rule: Rule, tensor: TensorInfo, llama_type, llama_why: str):
        ft = self.quant_type.file_type
        if rule.bump is not None:
            wanted = self.book.bump(ft.base, rule.bump)
            if wanted is None:
                return llama_type, llama_type, f"{llama_why} ({rule_name}: {ft.base.name} is on no ladder)"
        else:
            wanted = self.quant_type.keep if rule.keep else rule.type
        chosen, note = fit_rows(wanted, tensor.shape[0])
        if bits_per_weight(chosen) < bits_per_weight(llama_type):
            return llama_type, llama_type, f"{llama_why} (above {rule_name}'s {chosen.name})"
        return chosen, llama_type, f"{rule_name}: {rule.describe(self.quant_type.keep)}{note}"


def _needs_imatrix(name: str, ggml_type: GGMLQuantizationType, ft: FileType) -> bool:
    """tensor_requires_imatrix: IQ1/IQ2/IQ3_XXS tensors (and Q2_K in Q2_K_S) need one."""
    if name in ("token_embd.weight", "output.weight"):
        return False
    return ggml_type in NEEDS_IMATRIX or (ggml_type == Q.Q2_K and ft.name == "Q2_K_S")


def _check_sources(plan: QuantPlan) -> None:
    for t in plan.tensors:
        if t.type != t.source and t.source not in UNQUANTIZED:
            raise UserError(f"{plan.model.path} is already quantized ({t.name} is {t.source.name}); quantize "
                            "from an F32, F16 or BF16 GGUF (qwen3-gguf convert --outtype f16)")


def _check_imatrix(plan: QuantPlan) -> None:
    """An IQ plan needs an imatrix, and an imatrix must describe this model's tensors."""
    needing = [t for t in plan.tensors if t.needs_imatrix]
    if plan.imatrix is None:
        if needing:
            raise UserError(
                f"{plan.quant_type.file_type.name} needs an importance matrix ({needing[0].name} would be "
                f"{needing[0].type.name}): make one with `qwen3-gguf imatrix {plan.model.path} -o imatrix.gguf` "
                "and pass --imatrix imatrix.gguf")
        return
    row_lengths = {t.name: t.shape[0] for t in plan.tensors}
    for name, sums in plan.imatrix.sums.items():
        if name not in row_lengths:
            raise UserError(f"the imatrix does not match {plan.model.path}: it has an entry for {name}, "
                            "which this model lacks (an imatrix of another model?)")
        if sums.size != row_lengths[name]:
            raise UserError(f"the imatrix does not match {plan.model.path}: {name} has {sums.size} values, "
                            f"the model's rows have {row_lengths[name]}")
    missing = [t.name for t in plan.tensors
               if t.name.startswith("blk.") and t.type != t.source and t.name not in plan.imatrix.sums]
    if missing:
        more = f" (nor for {len(missing) - 1} more tensors)" if len(missing) > 1 else ""
        raise UserError(f"the imatrix does not match {plan.model.path}: it has no entry for {missing[0]}{more}")


# --- running it ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    plan: QuantPlan
    file_size: int
    seconds: float


def quantize(plan: QuantPlan, output: str | Path, *, threads: int | None = None, show_progress: bool = False,
             verbose: bool = False) -> QuantizeResult:
    """Carry out `plan` with llama_model_quantize into `output` (written under a temporary
    name and renamed once its tensor types are checked against the plan)."""
    output = Path(output)
    if output.exists() and output.resolve() == plan.model.path.resolve():
        raise UserError(f"the output {output} is the input model; choose another file name")
    partial = partial_file_for(output)
    started = time.perf_counter()
    job = engine.QuantizeJob(
        source=plan.model.path, destination=partial, file_type=int(plan.quant_type.file_type.ftype),
        tensor_types=plan.overrides, importance=plan.imatrix.importance() if plan.imatrix else None,
        threads=threads or engine.default_threads(), verbose=verbose,
    )
    try:
        with progress_bar(total=len(plan.tensors), enabled=show_progress, unit="tensor",
                          desc=f"quantize {plan.quant_type.name}") as bar:
            engine.run_quantize(job, on_tensor=(lambda: bar.update(1)) if bar is not None else None)
        written = {t.name: t.type for t in read_header(partial).tensors}
        planned = {t.name: t.type for t in plan.tensors}
        if written != planned:
            differing = sorted(name for name in planned if written.get(name) != planned[name])
            raise RuntimeError(f"llama.cpp wrote other tensor types than planned for {', '.join(differing[:5])}")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return QuantizeResult(path=output, plan=plan, file_size=output.stat().st_size,
                          seconds=time.perf_counter() - started)
