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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import UserError
from ..gguf_file import ModelFile, TensorInfo, read_header, read_model_file
from ..tensor_names import OUTPUT, TOKEN_EMBEDDING
from .importance import ImportanceMatrix, read_imatrix
from .llama_choice import ModelFacts, fit_rows, llama_choice, quantizable
from .recipes import Recipe, RecipeBook, Rule, load_recipe, parse_type, recipe_book
from .types import NEEDS_IMATRIX, UNQUANTIZED, FileType, QuantType, bits_per_weight, tensor_type

Q = GGMLQuantizationType


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


def plan_quantization(model: str | Path, type_name: str | None, *, imatrix: ImportanceMatrix | None = None,
                      recipe: str | Path | None = None, tensor_types: Sequence[str] = (),
                      output_tensor_type: str | None = None,
                      token_embedding_type: str | None = None) -> QuantPlan:
    """Decide every tensor's type for quantizing `model` to `type_name`; nothing is written.

    `tensor_types` are "REGEX=TYPE" strings, searched in the lower-cased tensor name, first
    match wins; they and the output/token-embedding types override the recipe. Any problem —
    unknown names, an IQ type without imatrix, an imatrix of another model, an input that is
    already quantized — is a UserError here, before any work. `type_name` may be None when the
    recipe names its file type (a searched recipe does); its imatrix is read when none is given.
    """
    book = recipe_book()
    chosen_recipe = load_recipe(recipe or "llama-default")
    type_name = type_name or chosen_recipe.type_name
    if type_name is None:
        raise UserError("give the quantization TYPE (or a recipe that names its type, or a search target)")
    quant_type = parse_type(type_name)
    if imatrix is None and chosen_recipe.imatrix is not None:
        if not chosen_recipe.imatrix.is_file():
            raise UserError(f"recipe {chosen_recipe.name!r} was searched with the importance matrix "
                            f"{chosen_recipe.imatrix}, which is missing")
        imatrix = read_imatrix(chosen_recipe.imatrix)
    if chosen_recipe.keeps and quant_type.keep is None:
        raise UserError(f"recipe {chosen_recipe.name!r} keeps tensors at a hybrid's precision; "
                        f"use a hybrid type such as bf16_{quant_type.file_type.name.lower()}")
    # A hybrid's own rules come first; the recipe's apply to the other tensors.
    recipes = [book.recipes[book.hybrid_recipe]] if quant_type.keep else []
    recipes.append(chosen_recipe)
    model_file = read_model_file(model)
    header = read_header(model_file.path)
    tied = not any(t.name == OUTPUT for t in header.tensors)
    explicit = _explicit_rules(tensor_types, output_tensor_type, token_embedding_type, tied=tied)
    if quant_type.file_type.base in UNQUANTIZED and explicit:
        raise UserError(f"{quant_type.file_type.name} is not a quantized type: llama.cpp stores every matrix "
                        "as it and applies no per-tensor types")
    facts = ModelFacts(n_layer=model_file.block_count, n_gqa=model_file.head_count // model_file.head_count_kv,
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
    def __init__(self, quant_type: QuantType, recipes: list[Recipe], explicit, model: ModelFacts, book: RecipeBook):
        self.quant_type, self.explicit, self.model, self.book = quant_type, explicit, model, book
        self.rules = [(f"recipe {recipe.name} rule {i}", rule, recipe.exact)
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
        for rule_name, rule, exact in self.rules:
            if rule.applies(tensor, layer, self.model.n_layer, ft.base):
                return self._by_rule(rule_name, rule, exact, tensor, llama_type, llama_why)
        return llama_type, llama_type, llama_why

    def _by_rule(self, rule_name: str, rule: Rule, exact: bool, tensor: TensorInfo, llama_type, llama_why: str):
        ft = self.quant_type.file_type
        if rule.bump is not None:
            wanted = self.book.bump(ft.base, rule.bump)
            if wanted is None:
                return llama_type, llama_type, f"{llama_why} ({rule_name}: {ft.base.name} is on no ladder)"
        else:
            wanted = self.quant_type.keep if rule.keep else rule.type
        chosen, note = fit_rows(wanted, tensor.shape[0])
        if not exact and bits_per_weight(chosen) < bits_per_weight(llama_type):
            return llama_type, llama_type, f"{llama_why} (above {rule_name}'s {chosen.name})"
        return chosen, llama_type, f"{rule_name}: {rule.describe(self.quant_type.keep)}{note}"


def _needs_imatrix(name: str, ggml_type: GGMLQuantizationType, ft: FileType) -> bool:
    """tensor_requires_imatrix: IQ1/IQ2/IQ3_XXS tensors (and Q2_K in Q2_K_S) need one."""
    if name in (TOKEN_EMBEDDING, OUTPUT):
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
