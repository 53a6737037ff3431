"""The fastest file that meets a fidelity floor: searched quantization that counts kernel time.

    MODEL ─ search (search.py) ──────▶ error added by each tensor group at each candidate type
          ─ kernel speeds (kernel_speeds.py) ▶ seconds per token of each group at each type, on this CPU
          ─ choose ──────────────────▶ the least predicted seconds per token whose summed error meets
                                       the floor (a multiple-choice knapsack over error; fewer bytes
                                       break ties)
          ─ build and re-measure ────▶ OUT.gguf from OUT.recipe.toml as the search builds it, its
                                       fidelity measured, and one document decoded: predicted against
                                       measured tokens per second

`quantize MODEL --fastest --min-cosine C` (rerankers `--max-delta-p D`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from ..atomic import write_text_atomically
from ..errors import UserError
from ..runtime.backend import default_threads
from .kernel_speeds import (
    DEFAULT_DOCUMENT_TOKENS,
    KernelSpeedCache,
    MachineIdentity,
    Measure,
    decode_document,
    model_shapes,
    this_machine,
)
from .search import (
    FILE_TYPE_OF,
    Group,
    SearchResult,
    SearchSettings,
    SearchTarget,
    _base_plan,
    _groups,
    build_searched,
    format_report,
    search_quantization,
)

ERROR_UNITS = 4000                    # error resolution of the knapsack: the floor in this many steps


@dataclass
class FastestResult:
    """A search whose types were chosen for speed, and the speeds behind the choice."""

    search: SearchResult
    group_seconds: dict[str, dict[str, float]]     # group → type → seconds per token
    kernels: dict[str, dict[str, float]]           # type → matrix shape → seconds per token
    rest: float                                    # seconds per token outside the weights (bulk type's file)
    predicted_tokens_per_s: float
    document_tokens: int
    threads: int
    kernel_table: Path
    speeds_measured_now: int
    speeds_reused: int
    measured_tokens_per_s: float | None = None

    def to_json(self) -> dict:
        return {"predicted_tokens_per_s": self.predicted_tokens_per_s,
                "measured_tokens_per_s": self.measured_tokens_per_s, "document_tokens": self.document_tokens,
                "threads": self.threads, "rest_seconds_per_token": self.rest, "kernel_seconds_per_token": self.kernels,
                "group_seconds_per_token": self.group_seconds, "kernel_table": str(self.kernel_table),
                "chosen": self.search.chosen, "predicted_error": self.search.predicted_error,
                "measured_error": self.search.measured_error}


def fastest_quantization(model: str | Path, target: SearchTarget, settings: SearchSettings | None = None, *,
                         work_dir: str | Path, document_tokens: int = DEFAULT_DOCUMENT_TOKENS,
                         machine: MachineIdentity | None = None, measure: Measure | None = None,
                         say: Callable[[str], None] = lambda line: None, show_progress: bool = False,
                         verbose: bool = False) -> FastestResult:
    """Search `model` as `search_quantization` does, then choose per group the type with the least
    predicted seconds per token whose summed measured error meets `target` (a fidelity floor).

    Kernel speeds come from `work_dir`'s table for `machine` (default: this CPU and llama.cpp
    build), measured where missing by `measure` (default: a real decode, kernel_speeds.measure_type).
    """
    if target.min_cosine is None and target.max_delta_p is None:
        raise UserError("--fastest needs a fidelity floor (--min-cosine C, rerankers --max-delta-p D), "
                        "not a size target")
    model, settings = Path(model), settings or SearchSettings()
    threads = settings.threads or default_threads()
    search = search_quantization(model, target, settings, work_dir=work_dir, say=say, show_progress=show_progress,
                                 verbose=verbose)
    machine = machine or this_machine(threads)
    cache = KernelSpeedCache(work_dir, machine, document_tokens=document_tokens, measure=measure, say=say)
    options = list(next(iter(search.sensitivity.values())))
    speeds = {t: cache.speeds(model, GGMLQuantizationType[t], FILE_TYPE_OF[GGMLQuantizationType[t]],
                              settings.imatrix) for t in options}
    shapes = model_shapes(model)
    groups, _ = _groups(_base_plan(model, search.settings))
    group_seconds = {g.name: {t: sum(speeds[t].kernels.get(shapes[tensor], 0.0) for tensor in g.tensors)
                              for t in options} for g in groups}
    floor = 1.0 - target.min_cosine if target.min_cosine is not None else target.max_delta_p
    chosen = choose_fastest(search.sensitivity, group_seconds, search.group_bytes, search.base_error, floor)
    bulk = _bulk_type(groups, chosen)
    speed_note = (f"fastest: types chosen by measured kernel time on this CPU ({machine.threads} threads, "
                   f"{cache.document_tokens}-token document), not by size")
    search = replace(search, chosen=chosen,
                     tensor_types={t: chosen[g.name] for g in groups for t in g.tensors},
                     predicted_error=search.base_error + sum(search.sensitivity[g][chosen[g]] for g in chosen),
                     file_type=FILE_TYPE_OF[GGMLQuantizationType[bulk]], notes=[*search.notes, speed_note])
    seconds = speeds[bulk].rest + sum(group_seconds[g][chosen[g]] for g in chosen)
    return FastestResult(search=search, group_seconds=group_seconds, kernels={t: speeds[t].kernels for t in options},
                         rest=speeds[bulk].rest, predicted_tokens_per_s=1.0 / seconds,
                         document_tokens=cache.document_tokens, threads=machine.threads, kernel_table=cache.path,
                         speeds_measured_now=cache.measured_now, speeds_reused=cache.reused)


def choose_fastest(sensitivity: dict[str, dict[str, float]], group_seconds: dict[str, dict[str, float]],
                   group_bytes: dict[str, dict[str, int]], base_error: float, max_error: float) -> dict[str, str]:
    """A type per group with the least summed seconds whose summed error (over `base_error`) stays
    within `max_error`; among equally fast choices, the fewest bytes. Errors are counted in
    ERROR_UNITS steps of the allowance, rounded up, so the predicted error never exceeds it."""
    names = list(sensitivity)
    allowance = max_error - base_error
    unit = allowance / ERROR_UNITS if allowance > 0 else 1.0
    capacity = ERROR_UNITS if allowance > 0 else 0
    seconds = np.zeros(capacity + 1)                  # least seconds using at most e error units
    n_bytes = np.zeros(capacity + 1)
    picks = []
    for g in names:
        options = []
        for t, error in sensitivity[g].items():
            cost = math.ceil(max(0.0, error) / unit - 1e-9) if allowance > 0 else (0 if error <= 0 else capacity + 1)
            options.append((t, cost, group_seconds[g][t], group_bytes[g][t]))
        new_s, new_b = np.full(capacity + 1, np.inf), np.full(capacity + 1, np.inf)
        pick = np.zeros(capacity + 1, dtype=np.int16)
        for i, (_, cost, s, b) in enumerate(options):
            if cost > capacity:
                continue
            shifted_s, shifted_b = np.full(capacity + 1, np.inf), np.full(capacity + 1, np.inf)
            shifted_s[cost:] = seconds[:capacity + 1 - cost] + s
            shifted_b[cost:] = n_bytes[:capacity + 1 - cost] + b
            better = (shifted_s < new_s) | ((shifted_s == new_s) & (shifted_b < new_b))
            new_s[better], new_b[better], pick[better] = shifted_s[better], shifted_b[better], i
        seconds, n_bytes = new_s, new_b
        picks.append((options, pick))
    c = capacity
    choice = {}
    for g, (options, pick) in zip(reversed(names), reversed(picks)):
        t, cost, _, _ = options[pick[c]]
        choice[g] = t
        c -= cost
    return {g: choice[g] for g in names}


def build_fastest(result: FastestResult, output: str | Path, *, work_dir: str | Path,
                  say: Callable[[str], None] = lambda line: None, verbose: bool = False) -> FastestResult:
    """Build OUTPUT as `build_searched` does (OUT.gguf, OUT.recipe.toml, OUT.search.json), decode one
    document with it for the measured speed, and write OUT.speed.json (predicted against measured)."""
    output = Path(output)
    result.search = build_searched(result.search, output, work_dir=work_dir, say=say, verbose=verbose)
    say(f"measure the built file's speed ({result.document_tokens}-token document)")
    wall, _, _, n_tokens = decode_document(output, result.document_tokens, result.threads)
    result.measured_tokens_per_s = n_tokens / wall
    write_text_atomically(speed_path(output), json.dumps(result.to_json(), indent=2) + "\n")
    return result


def speed_path(output: Path) -> Path:
    return output.with_suffix(".speed.json")


def format_fastest(result: FastestResult) -> str:
    """The search's report (its chosen column is the fast choice), the kernel table and the speeds."""
    types = list(result.kernels)
    shapes = sorted({s for kernels in result.kernels.values() for s in kernels})
    header = ["matrix", *types]
    rows = [[shape, *(f"{result.kernels[t].get(shape, 0.0) * 1e6:.2f}" for t in types)] for shape in shapes]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [format_report(result.search), "",
             f"kernel time on this CPU: µs per token of one matrix, {result.document_tokens}-token document, "
             f"{result.threads} threads"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    measured = f"{result.measured_tokens_per_s:.1f}" if result.measured_tokens_per_s is not None else "not built"
    lines.append(f"speed ({result.document_tokens}-token document): predicted {result.predicted_tokens_per_s:.1f} "
                 f"tokens/s, measured {measured}")
    lines.append(f"kernel speeds: {result.speeds_measured_now} types measured, {result.speeds_reused} reused "
                 f"({result.kernel_table.name})")
    return "\n".join(lines)


def _bulk_type(groups: list[Group], chosen: dict[str, str]) -> str:
    """The type holding the most weights: it names the file type (and so the file's numerics)."""
    elements: dict[str, int] = {}
    for group in groups:
        elements[chosen[group.name]] = elements.get(chosen[group.name], 0) + group.n_elements
    return max(elements, key=elements.get)
