"""Searched quantization: a type for every weight tensor, chosen by measuring this model.

    MODEL ─ measure the base ─────▶ every matrix at F16: the fidelity floor nothing beats
          ─ weight-error proxy ───▶ each tensor group at each candidate type: the importance-weighted
                                    noise-to-signal ratio of its weights as llama.cpp stores them
                                    (proxy.py), without running the model
          ─ fit a scale per kind ─▶ all groups of one kind (every block's attn_qkv, say) at the first
                                    candidate type, the rest at the base, measured on a calibration
                                    split (not the evaluation set): measured error ÷ summed proxy
          ─ choose ───────────────▶ a multiple-choice knapsack on proxy × scale: least summed error
                                    within the byte budget, or the fewest bytes that meet a floor
          ─ build and re-measure ─▶ OUT.gguf from OUT.recipe.toml, measured on the calibration split
                                    (predicted against measured) and on the evaluation set

A search runs the model 2 + (number of kinds) times, whatever the number of layers. The
prediction assumes that the errors of separate groups add up and that a kind's groups share one
scale; the report shows how well that held for the file built. Measurements and proxies are kept
in a work folder keyed by the source's sha256 and the measuring settings, one file each, so a
search at another target reuses them and a killed search resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..atomic import TEMPORARY_SUFFIX, atomic_paths, write_text_atomically
from ..data import calibration_file
from ..errors import UserError
from ..gguf_file import file_sha256, read_header, read_model_file
from ..progress import progress_bar
from .evaluation import EvalSet, ModelOutputs, load_eval_set, run_model
from .fidelity import embedding_fidelity, reranker_fidelity
from .imatrix import collect_imatrix
from .importance import ImportanceMatrix, read_imatrix, write_imatrix
from .llama_choice import fit_rows, quantizable
from .plan import QuantPlan, plan_quantization
from .proxy import SourceWeights, tensor_proxy
from .quantizer import quantize

Q = GGMLQuantizationType

BASE_TYPE = Q.F16                     # every tensor not being measured
# Proxied in this order, one round of all groups per type: a budget that runs out keeps a spread.
# The first candidate is also the type each kind's scale is measured at.
K_CANDIDATES = (Q.Q4_K, Q.Q6_K, Q.Q3_K, Q.Q8_0, Q.Q5_K, Q.Q2_K)
IQ_CANDIDATES = (Q.IQ4_XS, Q.IQ3_S, Q.IQ2_S)
# The file type a recipe names, by its most common tensor type (llama.cpp writes it as general.file_type).
FILE_TYPE_OF = {Q.Q2_K: "Q2_K", Q.Q3_K: "Q3_K_M", Q.Q4_K: "Q4_K_M", Q.Q5_K: "Q5_K_M", Q.Q6_K: "Q6_K",
                Q.Q8_0: "Q8_0", Q.F16: "Q8_0", Q.IQ4_XS: "IQ4_XS", Q.IQ3_S: "IQ3_S", Q.IQ2_S: "IQ2_M"}
BLOCK_GROUPS = (("attn_qkv", re.compile(r"attn_(q|k|v)\.weight$")),
                ("attn_output", re.compile(r"attn_output\.weight$")),
                ("ffn_gate_up", re.compile(r"ffn_(gate|up)\.weight$")),
                ("ffn_down", re.compile(r"ffn_down\.weight$")))
DP_UNITS = 8000                       # byte resolution of the knapsack: the budget in this many steps
DEFAULT_CALIBRATION_RECORDS = 16
DEFAULT_MAX_TOKENS = 64
DEFAULT_EVAL_LIMIT = 100
IMATRIX_CHUNKS = 16                   # decodes of 512 tokens for the importance matrix a search collects
FLOOR_CHECKS = 3                      # measured choices for a fidelity floor
ACTIVATION_CHUNKS = 8                 # decodes of 512 tokens for the proxy's weights when no imatrix is used


@dataclass(frozen=True)
class SearchTarget:
    """Exactly one of: a size (bits per weight of the tensor data, or file bytes) or a fidelity floor."""

    bits_per_weight: float | None = None
    file_bytes: int | None = None
    min_cosine: float | None = None       # embedding models: mean cosine to MODEL on the calibration split
    max_delta_p: float | None = None      # rerankers: mean |ΔP(yes)| to MODEL on the calibration split

    def describe(self) -> str:
        if self.bits_per_weight is not None:
            return f"{self.bits_per_weight:g} bits per weight"
        if self.file_bytes is not None:
            return f"{self.file_bytes / 2**20:.1f} MiB"
        if self.min_cosine is not None:
            return f"mean cosine ≥ {self.min_cosine:g}"
        return f"mean |ΔP(yes)| ≤ {self.max_delta_p:g}"


@dataclass(frozen=True)
class SearchSettings:
    imatrix: ImportanceMatrix | None = None
    collect_imatrix: bool = False        # without `imatrix`: collect one on the shipped calibration set
    candidates: Sequence[GGMLQuantizationType] | None = None   # default: K-quants, Q8_0 (and IQ with an imatrix)
    calibration_records: int = DEFAULT_CALIBRATION_RECORDS
    max_tokens: int = DEFAULT_MAX_TOKENS
    eval_file: Path | None = None
    eval_limit: int | None = DEFAULT_EVAL_LIMIT
    budget_minutes: float | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Group:
    """Tensors that get one type together: a block's attention inputs, its attention output, its
    gate and up projections, its down projection; the token embedding and any head alone."""

    name: str
    tensors: tuple[str, ...]
    n_elements: int
    row_lengths: tuple[int, ...]

    def n_bytes(self, ggml_type: GGMLQuantizationType, shapes: dict[str, tuple[int, ...]]) -> int:
        return sum(math.prod(shapes[t]) // GGML_QUANT_SIZES[fitted][0] * GGML_QUANT_SIZES[fitted][1]
                   for t in self.tensors for fitted in [fit_rows(ggml_type, shapes[t][0])[0]])


@dataclass
class SearchResult:
    """The plan a search chose and everything it measured (`to_json` is the report's JSON)."""

    model: Path
    kind: str
    source_sha256: str
    target: SearchTarget
    base_error: float
    sensitivity: dict[str, dict[str, float]]       # group → type → predicted error added over the base
    proxy: dict[str, dict[str, float]]             # group → type → weight-error proxy (noise-to-signal)
    scales: dict[str, float]                       # kind → measured error ÷ summed proxy at calibration_type
    calibration_type: str
    group_bytes: dict[str, dict[str, int]]
    chosen: dict[str, str]                         # group → type
    tensor_types: dict[str, str]                   # tensor → type
    file_type: str
    predicted_error: float
    measured_error: float | None = None
    calibration_fidelity: dict = field(default_factory=dict)
    evaluation_fidelity: dict = field(default_factory=dict)
    evaluation_name: str = ""
    n_bytes: int = 0
    bits_per_weight: float = 0.0
    file_size: int | None = None
    measured_now: int = 0
    reused: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plan: QuantPlan | None = None
    settings: SearchSettings = SearchSettings()

    @property
    def error_name(self) -> str:
        return "1 − cosine" if self.kind == "embedding" else "|ΔP(yes)|"

    def to_json(self) -> dict:
        fields = {k: v for k, v in self.__dict__.items() if k not in ("plan", "model", "target", "settings")}
        return {"model": str(self.model), "target": self.target.describe(), "error_measure": f"mean {self.error_name}",
                **fields}


# --- the search ----------------------------------------------------------------------------------

def search_quantization(model: str | Path, target: SearchTarget, settings: SearchSettings = SearchSettings(), *,
                        work_dir: str | Path, say: Callable[[str], None] = lambda line: None,
                        show_progress: bool = False, on_measured: Callable[[str], None] = lambda what: None,
                        verbose: bool = False) -> SearchResult:
    """Predict `model`'s sensitivity per tensor group and choose a type per group for `target`.

    Nothing is written but measurements in `work_dir`; `build_searched` writes the file. Bad
    targets are refused before any measurement (a fidelity floor right after the base's, which
    is what F16 gives). `on_measured(what)` is called as each new model measurement is stored.
    """
    started = time.perf_counter()
    model = Path(model)
    source = read_model_file(model)
    base_plan = _base_plan(model, settings)          # refuses a quantized MODEL, a foreign imatrix
    groups, shapes = _groups(base_plan)
    candidates = _candidates(settings)
    fixed_bytes = base_plan.n_bytes - sum(g.n_bytes(BASE_TYPE, shapes) for g in groups)
    _check_target(target, source, groups, shapes, candidates, fixed_bytes, base_plan.n_elements)
    sha = file_sha256(model)
    if settings.imatrix is None and settings.collect_imatrix:
        settings = replace(settings, imatrix=_collected_imatrix(model, Path(work_dir) / sha[:16], settings, say,
                                                                 verbose))
        base_plan = _base_plan(model, settings)
    notes = [] if settings.imatrix is not None else ["IQ types not searched: no importance matrix"]

    folder = Path(work_dir) / sha[:16] / _settings_key(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(f".*{TEMPORARY_SUFFIX}"):      # what a killed search was writing
        leftover.unlink(missing_ok=True)
    calibration = load_eval_set(calibration_file(), limit=settings.calibration_records)
    store = _Measurements(folder, model, source.kind, calibration, settings, say, on_measured, verbose)
    kinds = _kinds(groups)
    calibration_type = candidates[0]
    with progress_bar(total=2 + len(kinds) + len(candidates), enabled=show_progress, unit="step",
                      desc="search") as bar:
        store.bar = bar
        base_error = store.error("base", base_plan)
        _check_floor(target, source.kind, base_error)
        kind_errors = {kind: store.error(_label(kind, calibration_type),
                                         _plan_with(model, base_plan, members, calibration_type, settings))
                       for kind, members in kinds.items()}
        activations = settings.imatrix or _activation_statistics(model, Path(work_dir) / sha[:16], settings, say,
                                                                 verbose)
        proxies = _Proxies(folder, model, activations.importance(), settings, bar)
        for n_type, ggml_type in enumerate(candidates):
            if n_type and _over_budget(settings, started, proxies.seconds):
                notes.append(f"--budget-minutes {settings.budget_minutes:g}: searched among "
                             f"{', '.join(t.name for t in candidates[:n_type])} and {BASE_TYPE.name}")
                candidates = candidates[:n_type]
                break
            proxies.of(ggml_type, groups)
    store.bar = None
    proxy = {g.name: {t.name: proxies.table[t][g.name] for t in candidates} for g in groups}
    scales = {kind: max(0.0, kind_errors[kind] - base_error)
              / (sum(proxy[g.name][calibration_type.name] for g in members) or 1.0)
              for kind, members in kinds.items()}
    sensitivity = {g.name: {BASE_TYPE.name: 0.0, **{t.name: scales[_kind_of(g.name)] * proxy[g.name][t.name]
                                                    for t in candidates}} for g in groups}
    options = [BASE_TYPE, *candidates]
    group_bytes = {g.name: {t.name: g.n_bytes(t, shapes) for t in options} for g in groups}
    floor = _error_floor(target)
    if floor is None:
        choice = choose_types(sensitivity, group_bytes, base_error,
                              _byte_budget(target, source, fixed_bytes, base_plan.n_elements), None)
    else:
        choice = _meeting_floor(floor, sensitivity, group_bytes, base_error, store, groups, base_plan, settings, notes)
    tensor_types = {t: choice[g.name] for g in groups for t in g.tensors}
    predicted = base_error + sum(sensitivity[g][choice[g]] for g in choice)
    counts: dict[str, int] = {}
    for g in groups:
        counts[choice[g.name]] = counts.get(choice[g.name], 0) + g.n_elements
    file_type = FILE_TYPE_OF[Q[max(counts, key=counts.get)]]
    return SearchResult(model=model, kind=source.kind, source_sha256=sha, target=target, base_error=base_error,
                        sensitivity=sensitivity, proxy=proxy, scales=scales, calibration_type=calibration_type.name,
                        group_bytes=group_bytes, chosen=choice, tensor_types=tensor_types,
                        file_type=file_type, predicted_error=predicted, measured_now=store.measured_now,
                        reused=store.reused, notes=notes, seconds=time.perf_counter() - started, settings=settings)


def _meeting_floor(floor: float, sensitivity, group_bytes, base_error: float, store: _Measurements,
                   groups: list[Group], base_plan: QuantPlan, settings: SearchSettings, notes: list[str]):
    """The fewest bytes whose error meets `floor`, checked by measuring the chosen file: where the
    measured error misses the floor, the predicted errors are scaled by measured ÷ predicted and the
    choice made again (at most FLOOR_CHECKS measurements)."""
    correction = 1.0
    for _ in range(FLOOR_CHECKS):
        scaled = {g: {t: correction * e for t, e in errors.items()} for g, errors in sensitivity.items()}
        choice = choose_types(scaled, group_bytes, base_error, None, floor)
        predicted_added = sum(scaled[g][choice[g]] for g in choice)
        types = {t: choice[g.name] for g in groups for t in g.tensors}
        label = "choice-" + hashlib.sha256(json.dumps(types, sort_keys=True).encode()).hexdigest()[:12]
        measured = store.error(label, _plan_of(store.model, base_plan, types, settings))
        if measured <= floor or predicted_added <= 0:
            return choice
        correction *= (measured - base_error) / predicted_added
    notes.append(f"the floor was missed after {FLOOR_CHECKS} measured choices; the report shows by how much")
    return choice


def choose_types(sensitivity: dict[str, dict[str, float]], group_bytes: dict[str, dict[str, int]],
                 base_error: float, byte_budget: int | None, max_error: float | None) -> dict[str, str]:
    """The multiple-choice knapsack: a type per group with the least summed error whose bytes fit
    `byte_budget`, or (with `max_error`) the fewest bytes whose predicted error stays within it.
    Bytes are counted in DP_UNITS steps of the largest plan, rounded up, so a choice always fits."""
    names = list(sensitivity)
    largest = sum(max(group_bytes[g].values()) for g in names)
    unit = max(1, math.ceil(largest / DP_UNITS))
    capacity = math.ceil(largest / unit)
    best = np.full(capacity + 1, np.inf)              # least error using at most c units
    best[0:] = 0.0
    picks = []
    for g in names:
        options = [(t, math.ceil(group_bytes[g][t] / unit), max(0.0, sensitivity[g][t])) for t in sensitivity[g]]
        new, pick = np.full(capacity + 1, np.inf), np.zeros(capacity + 1, dtype=np.int16)
        for i, (_, cost, error) in enumerate(options):
            shifted = np.full(capacity + 1, np.inf)
            shifted[cost:] = best[:capacity + 1 - cost] + error
            better = shifted < new
            new[better], pick[better] = shifted[better], i
        best = new
        picks.append((options, pick))
    if max_error is not None:
        within = np.nonzero(best + base_error <= max_error)[0]
        c = int(within[0]) if within.size else int(np.argmin(best))
    else:
        c = min(capacity, byte_budget // unit)
        c = int(np.argmin(best[:c + 1])) if np.isfinite(best[:c + 1]).any() else c
    choice = {}
    for g, (options, pick) in zip(reversed(names), reversed(picks)):
        t, cost, _ = options[pick[c]]
        choice[g] = t
        c -= cost
    return {g: choice[g] for g in names}


# --- building the chosen file ---------------------------------------------------------------------

def recipe_text(result: SearchResult, imatrix_name: str | None) -> str:
    """The chosen types as a recipe `quantize MODEL --recipe FILE` reproduces the file from."""
    lines = [f"# Searched by qwen3-gguf for {result.model.name} (sha256 {result.source_sha256})",
             f"# target: {result.target.describe()}"]
    if result.measured_error is not None:
        lines.append(f"# measured mean {result.error_name} on the calibration split: {result.measured_error:.3g} "
                     f"(predicted {result.predicted_error:.3g})")
    if result.file_size is not None:
        lines.append(f"# size: {result.file_size / 2**20:.1f} MiB, {result.bits_per_weight:.2f} bits per weight")
    lines += ["", f'description = "searched for {result.target.describe()}"', "exact = true",
              f'type = "{result.file_type}"']
    if imatrix_name is not None:
        lines.append(f'imatrix = "{imatrix_name}"')
    lines.append("rules = [")
    for tensor, type_name in result.tensor_types.items():
        lines.append(f"    {{ match = '^{re.escape(tensor)}$', type = \"{type_name}\" }},")
    return "\n".join([*lines, "]", ""])


def build_searched(result: SearchResult, output: str | Path, *, work_dir: str | Path,
                   say: Callable[[str], None] = lambda line: None, verbose: bool = False,
                   evaluate: bool = True) -> SearchResult:
    """Write OUTPUT (the GGUF), OUTPUT's .recipe.toml, .search.json and (with an imatrix)
    .imatrix.gguf, all or none; the file is built from the recipe and measured again on the
    calibration split, and (with `evaluate`; a sweep measures its files itself) on the evaluation set."""
    output, settings = Path(output), result.settings
    recipe_path, report_path = searched_paths(output)
    imatrix_path = output.with_suffix(".imatrix.gguf") if settings.imatrix is not None else None
    targets = [output, recipe_path, report_path] + ([imatrix_path] if imatrix_path else [])
    folder = Path(work_dir) / result.source_sha256[:16] / _settings_key(settings)
    with atomic_paths(*targets) as temporaries:
        gguf_tmp, recipe_tmp, report_tmp = temporaries[:3]
        if imatrix_path is not None:
            write_imatrix(settings.imatrix, temporaries[3])
        recipe_tmp.write_text(recipe_text(result, imatrix_path.name if imatrix_path else None), encoding="utf-8")
        plan = plan_quantization(result.model, None, recipe=recipe_tmp, imatrix=settings.imatrix)
        say(f"build {output.name} ({plan.bits_per_weight:.2f} bits per weight)")
        quantize(plan, gguf_tmp, threads=settings.threads, verbose=verbose)
        calibration = load_eval_set(calibration_file(), limit=settings.calibration_records)
        store = _Measurements(folder, result.model, result.kind, calibration, settings, say, lambda what: None,
                              verbose)
        say("measure the built file on the calibration split")
        result.calibration_fidelity = store.fidelity(gguf_tmp)
        result.measured_error = _error_of(result.kind, result.calibration_fidelity)
        if evaluate:
            evalset = load_eval_set(settings.eval_file, limit=settings.eval_limit)
            say(f"measure the built file on the evaluation set ({evalset.name})")
            result.evaluation_fidelity, result.evaluation_name = evaluation_fidelity(
                result.model, gguf_tmp, result.kind, evalset, settings, folder), evalset.name
        result.plan, result.n_bytes, result.bits_per_weight = plan, plan.n_bytes, plan.bits_per_weight
        result.file_size = gguf_tmp.stat().st_size
        recipe_tmp.write_text(recipe_text(result, imatrix_path.name if imatrix_path else None), encoding="utf-8")
        report_tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return result


def searched_paths(output: Path) -> tuple[Path, Path]:
    """OUT.recipe.toml and OUT.search.json beside OUT.gguf."""
    return output.with_suffix(".recipe.toml"), output.with_suffix(".search.json")


def evaluation_fidelity(model: Path, path: Path, kind: str, evalset: EvalSet, settings: SearchSettings,
                        folder: Path) -> dict:
    """`path` against `model` on the evaluation set (the reference's outputs kept in `folder`)."""
    stored = folder / f"reference-eval-{evalset.fingerprint()}-{settings.max_tokens}.npz"
    if stored.exists():
        reference = ModelOutputs.load(stored)
    else:
        reference = run_model(model, kind, evalset, max_tokens=settings.max_tokens, threads=settings.threads)
        reference.save(stored)
    outputs = run_model(path, kind, evalset, max_tokens=settings.max_tokens, threads=settings.threads)
    return _fidelity(kind, reference.outputs, outputs.outputs)


def measured_sensitivity(result: SearchResult, group_names: Sequence[str], type_name: str, *,
                         work_dir: str | Path) -> dict[str, float]:
    """The check of the prediction, group by group: each of `group_names` alone at `type_name`, the
    rest at the base, measured on the calibration split (mean error added over the base). Kept in
    the work folder beside the search's own measurements."""
    settings = result.settings
    base_plan = _base_plan(result.model, settings)
    groups = {g.name: g for g in _groups(base_plan)[0]}
    calibration = load_eval_set(calibration_file(), limit=settings.calibration_records)
    folder = Path(work_dir) / result.source_sha256[:16] / _settings_key(settings)
    store = _Measurements(folder, result.model, result.kind, calibration, settings, lambda line: None,
                          lambda what: None, False)
    ggml_type = Q[type_name]
    return {name: store.error(_label(name, ggml_type), _plan_with(result.model, base_plan, [groups[name]], ggml_type,
                                                                  settings)) - result.base_error
            for name in group_names}


def format_report(result: SearchResult) -> str:
    """The sensitivity table (error added over the base, per group and type) and the outcome."""
    types = list(next(iter(result.sensitivity.values())))
    header = ["group", *types, "chosen"]
    rows = [[g, *(f"{errors[t]:.2e}" for t in types), result.chosen[g]] for g, errors in result.sensitivity.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"sensitivity: mean {result.error_name} added over the base ({BASE_TYPE.name} everywhere: "
             f"{result.base_error:.2e}) when only that group is quantized, calibration split; predicted: "
             f"weight-error proxy × a scale per kind measured at {result.calibration_type}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.append("scales: " + ", ".join(f"{kind} {scale:.3g}" for kind, scale in result.scales.items()))
    lines.append(f"target {result.target.describe()}: {result.bits_per_weight:.2f} bits per weight, "
                 f"{result.n_bytes / 2**20:.1f} MiB of tensors")
    measured = f"{result.measured_error:.2e}" if result.measured_error is not None else "not built"
    lines.append(f"mean {result.error_name}, calibration split: predicted {result.predicted_error:.2e}, "
                 f"measured {measured}")
    if result.evaluation_fidelity:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.evaluation_fidelity.items() if not isinstance(v, dict))
        lines.append(f"evaluation ({result.evaluation_name}): {shown}")
    lines.append(f"measurements: {result.measured_now} new, {result.reused} reused; {result.seconds:.0f} s")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


# --- measurements ----------------------------------------------------------------------------------

class _Measurements:
    """Errors of quantized variants of the model on the calibration split, one JSON file each."""

    def __init__(self, folder: Path, model: Path, kind: str, calibration: EvalSet, settings: SearchSettings, say,
                 on_measured, verbose: bool):
        self.folder, self.model, self.kind, self.calibration = folder, model, kind, calibration
        self.settings, self.say, self.on_measured, self.verbose = settings, say, on_measured, verbose
        self.errors: dict[str, float] = {}
        self.measured_now = self.reused = 0
        self.bar = None
        self._reference = None

    def error(self, label: str, plan: QuantPlan) -> float:
        stored = self.folder / f"{label}.json"
        if stored.exists():
            measurement = json.loads(stored.read_text(encoding="utf-8"))
            self.errors[label] = measurement["error"]
            self.reused += 1
            return self.errors[label]
        if self.bar is not None:
            self.bar.set_postfix_str(label)
        started = time.perf_counter()
        variant = self.folder / "variant.gguf"
        try:
            quantize(plan, variant, threads=self.settings.threads, verbose=self.verbose)
            fidelity = self.fidelity(variant)
        finally:
            variant.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        self.errors[label] = _error_of(self.kind, fidelity)
        write_text_atomically(stored, json.dumps({"error": self.errors[label], "fidelity": fidelity,
                                                  "seconds": seconds}) + "\n")
        self.measured_now += 1
        if self.bar is not None:
            self.bar.update(1)
        self.on_measured(label)
        return self.errors[label]

    def fidelity(self, path: Path) -> dict:
        outputs = run_model(path, self.kind, self.calibration, max_tokens=self.settings.max_tokens,
                            threads=self.settings.threads)
        return _fidelity(self.kind, self.reference(), outputs.outputs)

    def reference(self) -> dict:
        if self._reference is None:
            stored = self.folder / "reference-calibration.npz"
            if not stored.exists():
                run_model(self.model, self.kind, self.calibration, max_tokens=self.settings.max_tokens,
                          threads=self.settings.threads).save(stored)
            self._reference = ModelOutputs.load(stored).outputs
        return self._reference


def _fidelity(kind: str, reference: dict, outputs: dict) -> dict:
    if kind == "embedding":
        dim = reference["documents"].shape[1]
        return {**embedding_fidelity(reference, outputs),
                "reduced_dim": {"dim": dim // 2, **embedding_fidelity(reference, outputs, dim // 2)}}
    return reranker_fidelity(reference["scores"], outputs["scores"])


def _error_of(kind: str, fidelity: dict) -> float:
    return 1.0 - fidelity["cosine_mean"] if kind == "embedding" else fidelity["mean_abs_delta"]


def _label(group: str, ggml_type: GGMLQuantizationType) -> str:
    return f"{group}.{ggml_type.name}"


class _Proxies:
    """The weight-error proxy of every group at each type, one JSON file per type."""

    def __init__(self, folder: Path, model: Path, importance: dict[str, np.ndarray], settings: SearchSettings, bar):
        self.folder, self.model, self.importance, self.settings, self.bar = folder, model, importance, settings, bar
        self.table: dict[GGMLQuantizationType, dict[str, float]] = {}
        self.seconds: list[float] = []          # what a round costs, for --budget-minutes
        self._weights: SourceWeights | None = None

    def of(self, ggml_type: GGMLQuantizationType, groups: list[Group]) -> dict[str, float]:
        stored = self.folder / f"proxy.{ggml_type.name}.json"
        if stored.exists():
            round_ = json.loads(stored.read_text(encoding="utf-8"))
        else:
            if self.bar is not None:
                self.bar.set_postfix_str(f"proxy {ggml_type.name}")
            started = time.perf_counter()
            self._weights = self._weights or SourceWeights(self.model)
            quantizer_importance = self.importance if self.settings.imatrix is not None else {}
            proxies = {g.name: sum(tensor_proxy(self._weights, t, ggml_type, self.importance.get(t),
                                                quantizer_importance.get(t)) for t in g.tensors) for g in groups}
            round_ = {"proxy": proxies, "seconds": time.perf_counter() - started}
            write_text_atomically(stored, json.dumps(round_) + "\n")
        if self.bar is not None:
            self.bar.update(1)
        self.seconds.append(round_["seconds"])
        self.table[ggml_type] = round_["proxy"]
        return self.table[ggml_type]


def _over_budget(settings: SearchSettings, started: float, round_seconds: list[float]) -> bool:
    """Whether one more round of proxies would overrun --budget-minutes (by the rounds so far)."""
    if settings.budget_minutes is None:
        return False
    mean = float(np.mean(round_seconds)) if round_seconds else 0.0
    return time.perf_counter() - started + mean > 60 * settings.budget_minutes


def _settings_key(settings: SearchSettings) -> str:
    """What the measurements depend on besides the source: imatrix, calibration split, token limit."""
    digest = hashlib.sha256(f"{settings.calibration_records}-{settings.max_tokens}-{BASE_TYPE.name}".encode())
    if settings.imatrix is not None:
        for name, values in sorted(settings.imatrix.importance().items()):
            digest.update(name.encode())
            digest.update(values.tobytes())
    digest.update(calibration_file().read_bytes())
    return digest.hexdigest()[:12]



# --- plans and groups --------------------------------------------------------------------------------

def _base_plan(model: Path, settings: SearchSettings) -> QuantPlan:
    names = [t.name for t in read_header(model).tensors if quantizable(t)]
    return plan_quantization(model, "Q8_0", imatrix=settings.imatrix,
                             tensor_types=[f"^{re.escape(n)}$={BASE_TYPE.name}" for n in names])


def _plan_with(model: Path, base: QuantPlan, groups: list[Group], ggml_type, settings: SearchSettings) -> QuantPlan:
    """The base plan with `groups` at `ggml_type`."""
    return _plan_of(model, base, {t: ggml_type.name for g in groups for t in g.tensors}, settings)


def _plan_of(model: Path, base: QuantPlan, tensor_types: dict[str, str], settings: SearchSettings) -> QuantPlan:
    """The base plan with the given tensors at the given types."""
    rules = [f"^{re.escape(t.name)}$={tensor_types.get(t.name, BASE_TYPE.name)}"
             for t in base.tensors if t.chosen_by_llama]
    return plan_quantization(model, "Q8_0", imatrix=settings.imatrix, tensor_types=rules)


def _kind_of(group_name: str) -> str:
    """blk.3.attn_qkv → attn_qkv; token_embd → token_embd; cls.output → cls.output."""
    return re.sub(r"^blk\.\d+\.", "", group_name)


def _kinds(groups: list[Group]) -> dict[str, list[Group]]:
    kinds: dict[str, list[Group]] = {}
    for g in groups:
        kinds.setdefault(_kind_of(g.name), []).append(g)
    return kinds


def _groups(base: QuantPlan) -> tuple[list[Group], dict[str, tuple[int, ...]]]:
    shapes = {t.name: t.shape for t in base.tensors}
    members: dict[str, list[str]] = {}
    for t in base.tensors:
        if not t.chosen_by_llama:
            continue
        block = re.match(r"(blk\.\d+)\.", t.name)
        kind = next((name for name, pattern in BLOCK_GROUPS if pattern.search(t.name)), None)
        key = f"{block.group(1)}.{kind}" if block and kind else t.name.removesuffix(".weight")
        members.setdefault(key, []).append(t.name)
    groups = [Group(name, tuple(ts), sum(math.prod(shapes[t]) for t in ts), tuple(shapes[t][0] for t in ts))
              for name, ts in members.items()]
    return groups, shapes


def _collected_imatrix(model: Path, folder: Path, settings: SearchSettings, say, verbose: bool) -> ImportanceMatrix:
    """The importance matrix on the first IMATRIX_CHUNKS decodes of the shipped calibration set (all of
    it would take longer than the rest of a search); kept in `folder`, written beside the file."""
    path = folder / f"imatrix-{IMATRIX_CHUNKS}.gguf"
    if path.exists():
        say(f"imatrix {path}: collected before")
        return read_imatrix(path)
    say(f"imatrix: collecting on {IMATRIX_CHUNKS} chunks of the shipped calibration set")
    matrix = collect_imatrix(model, device="cpu", max_chunks=IMATRIX_CHUNKS, threads=settings.threads,
                             verbose=verbose).matrix
    folder.mkdir(parents=True, exist_ok=True)
    write_imatrix(matrix, path)
    return matrix


def _activation_statistics(model: Path, folder: Path, settings: SearchSettings, say, verbose: bool) -> ImportanceMatrix:
    """Without an importance matrix for the quantizer, the proxy still weighs columns by their
    activations: a short collection (ACTIVATION_CHUNKS decodes) on the shipped calibration set."""
    path = folder / f"activations-{ACTIVATION_CHUNKS}.gguf"
    if path.exists():
        return read_imatrix(path)
    say("activations: collecting on the shipped calibration set, for the proxy's weights")
    matrix = collect_imatrix(model, device="cpu", max_chunks=ACTIVATION_CHUNKS, threads=settings.threads,
                             verbose=verbose).matrix
    folder.mkdir(parents=True, exist_ok=True)
    write_imatrix(matrix, path)
    return matrix


def _candidates(settings: SearchSettings) -> tuple[GGMLQuantizationType, ...]:
    with_imatrix = settings.imatrix is not None or settings.collect_imatrix
    wanted = tuple(settings.candidates) if settings.candidates else (
        K_CANDIDATES + (IQ_CANDIDATES if with_imatrix else ()))
    if not with_imatrix and any(t in IQ_CANDIDATES for t in wanted):
        raise UserError("IQ types are searched only with an importance matrix (--imatrix)")
    return tuple(t for t in wanted if t != BASE_TYPE)


# --- targets ----------------------------------------------------------------------------------------

def _check_target(target: SearchTarget, source, groups, shapes, candidates, fixed_bytes: int, n_elements: int):
    given = [v for v in (target.bits_per_weight, target.file_bytes, target.min_cosine, target.max_delta_p)
             if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one search target: --target-bpw, --target-size, --min-cosine or --max-delta-p")
    if target.min_cosine is not None:
        if source.kind != "embedding":
            raise UserError(f"--min-cosine is for embedding models; {source.path} is a reranker (use --max-delta-p)")
        if not 0 < target.min_cosine <= 1:
            raise UserError(f"--min-cosine must be in (0, 1], got {target.min_cosine}")
    if target.max_delta_p is not None:
        if source.kind != "reranker":
            raise UserError(f"--max-delta-p is for rerankers; {source.path} is an embedding model (use --min-cosine)")
        if not 0 <= target.max_delta_p < 1:
            raise UserError(f"--max-delta-p must be in [0, 1), got {target.max_delta_p}")
    budget = _byte_budget(target, source, fixed_bytes, n_elements)
    if budget is None:
        return
    smallest = sum(min(g.n_bytes(t, shapes) for t in candidates) for g in groups)
    if budget < smallest:
        reachable = (f"{8 * (fixed_bytes + smallest) / n_elements:.2f} bits per weight"
                     if target.bits_per_weight is not None
                     else f"{(fixed_bytes + smallest + source.file_size - source.tensor_bytes) / 2**20:.1f} MiB")
        raise UserError(f"no file of {source.path} is as small as {target.describe()}: the smallest the search "
                        f"can make (every group at its smallest candidate type) is {reachable}")


def _byte_budget(target: SearchTarget, source, fixed_bytes: int, n_elements: int) -> int | None:
    """Bytes of quantizable tensor data allowed (None for a fidelity floor)."""
    if target.bits_per_weight is not None:
        return int(target.bits_per_weight * n_elements / 8) - fixed_bytes
    if target.file_bytes is not None:
        return target.file_bytes - (source.file_size - source.tensor_bytes) - fixed_bytes
    return None


def _error_floor(target: SearchTarget) -> float | None:
    if target.min_cosine is not None:
        return 1.0 - target.min_cosine
    return target.max_delta_p


def _check_floor(target: SearchTarget, kind: str, base_error: float) -> None:
    """A floor above what F16 everywhere gives cannot be met; refused before the sensitivity runs."""
    floor = _error_floor(target)
    if floor is not None and base_error > floor:
        closest = (f"--min-cosine {math.floor((1 - base_error) * 1e6) / 1e6:.6f}" if kind == "embedding"
                   else f"--max-delta-p {math.ceil(base_error * 1e6) / 1e6:.6f}")
        raise UserError(f"no file meets {target.describe()}: even {BASE_TYPE.name} everywhere misses it "
                        f"on the calibration split; the closest reachable is {closest}")
