"""`qwen3-gguf sweep`: build a family of quants of one model and measure each against its reference.

    SRC ─ convert once ─▶ DIR/<stem>-f32.gguf (the reference; a GGUF SRC is its own reference)
        ─ imatrix once ─▶ DIR/imatrix.gguf (unless one is given)
        ─ quantize ─────▶ DIR/<stem>-<type>-<recipe>.gguf for every type × recipe
        ─ search ───────▶ DIR/<stem>-searched-<bpw>.gguf for every --searched target (measurements
                          kept in DIR/search/, shared by the targets)
        ─ measure ──────▶ every file on the evaluation set, against the reference's outputs
        ─ MTEB (--mteb) ▶ every file's main score on MTEB tasks, and its difference to the reference's
        ─ report ───────▶ DIR/report.md, DIR/report.json, DIR/pareto.png

Files already in DIR are used as they are, and so are the outputs measured on them
(DIR/outputs/) and the MTEB embeddings (DIR/mteb/embeddings/, by file sha256), so a re-run resumes
(and builds and runs nothing when all is there).
DIR/sweep.json records what the files were built from; a re-run with another source,
reference or imatrix is refused rather than mixing files of two sweeps. A (type, recipe) whose
plan puts every tensor at the same type as an earlier one is not built again: its row names the
file it shares.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..atomic import write_text_atomically
from ..convert import convert_checkpoint
from ..errors import UserError
from ..gguf_file import read_model_file
from ..limits import MIN_MRL_DIM
from .evaluation import ModelOutputs, check_rerank_pairs, load_eval_set, run_model
from .fidelity import embedding_fidelity, reranker_fidelity
from .imatrix import collect_imatrix
from .importance import read_imatrix, write_imatrix
from .plan import plan_quantization
from .quantizer import quantize
from .recipes import load_recipe, parse_type
from .search import SearchSettings, SearchTarget, build_searched, search_quantization

DEFAULT_TYPES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ3_M", "IQ4_XS", "bf16_q8_0")
DEFAULT_RECIPES = ("llama-default", "bump-edges")
REFERENCE_TYPES = ("f32", "bf16")
EVAL_MAX_TOKENS = 512   # evaluation documents are cut here, alike for every file
REDUCED_DIM = 256          # the Matryoshka dimension measured besides the full one
MANIFEST = "sweep.json"
IMATRIX_FILE = "imatrix.gguf"
OUTPUTS_FOLDER = "outputs"      # what each file produced on the evaluation set, kept for re-runs
MTEB_FOLDER = "mteb"            # mteb's results layout, and the embeddings cache under it
SEARCH_FOLDER = "search"        # the searched files' measurements
UNQUANTIZED_FILE_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class SweepSettings:
    types: Sequence[str] = DEFAULT_TYPES
    recipes: Sequence[str] = DEFAULT_RECIPES
    imatrix: Path | None = None              # use this importance matrix ...
    calibration: Sequence[Path] = ()         # ... or collect one on this text (default: the shipped set)
    imatrix_chunks: int | None = None        # collect on at most this many 512-token chunks
    eval_file: Path | None = None            # default: the shipped evaluation set
    reference: str | None = None             # "f32" (default for a checkpoint) or "bf16"
    limit: int | None = None                 # evaluate on the first `limit` records only
    max_tokens: int = EVAL_MAX_TOKENS
    reduced_dim: int | None = None           # default: REDUCED_DIM, or half of a smaller model's
    threads: int | None = None
    mteb_tasks: Sequence[str] = ()           # MTEB task names (or local task folders) scored on every file
    searched: Sequence[float] = ()           # bits-per-weight targets of searched files ...
    search: SearchSettings = SearchSettings()  # ... searched so (the sweep's imatrix, threads, evaluation set)


@dataclass
class SweepFile:
    """One row of the report: a GGUF of the sweep and what was measured on it."""

    type_name: str
    recipe: str | None                       # None for the reference
    path: Path
    same_as: str | None = None               # the label of an earlier row with identical tensors
    built_s: float | None = None             # seconds to build it in this run; None if it was there
    planned: dict | None = None              # tensor name → type of its quantization plan
    measured: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.type_name} {self.recipe}" if self.recipe else f"{self.type_name} (reference)"


@dataclass
class SweepResult:
    kind: str
    model_name: str
    eval_name: str
    n_queries: int
    n_documents: int
    full_dim: int | None
    reduced_dim: int | None
    imatrix: str
    rows: list[SweepFile]


def run_sweep(src: str | Path, out_dir: str | Path, settings: SweepSettings = SweepSettings(), *,
              say: Callable[[str], None] = lambda line: None, step: Callable[[], None] = lambda: None,
              verbose: bool = False) -> SweepResult:
    """Build and measure every file of the sweep. `say` gets one line per step (what is being
    built or measured); `step` is called as each of `count_steps(settings)` steps ends."""
    src, out_dir = Path(src), Path(out_dir)
    recipes = _check_settings(settings)
    evalset = load_eval_set(settings.eval_file, limit=settings.limit)
    source_model = _check_source(src, settings.reference)
    mteb_tasks = _mteb_tasks(settings.mteb_tasks, source_model)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; -o names the folder the sweep writes into")
    out_dir.mkdir(parents=True, exist_ok=True)

    if source_model is not None:
        say(f"reference {src} ({_precision(source_model)})")
        reference = SweepFile(type_name=_precision(source_model), recipe=None, path=src)
    else:
        reference = _converted_reference(src, out_dir, settings.reference or "f32", say)
    step()
    model = read_model_file(reference.path)
    if model.kind == "reranker":
        check_rerank_pairs(evalset)
        if mteb_tasks:
            raise UserError("--mteb scores embedding models; this sweep's reference is a reranker")
    reduced_dim = _reduced_dim(model, settings.reduced_dim) if model.kind == "embedding" else None
    matrix, imatrix_note = _importance_matrix(reference.path, out_dir, settings, say, verbose)
    step()
    _check_manifest(out_dir, src, reference.path, imatrix_note)

    rows = [reference]
    combinations = [(type_name, recipe) for type_name in settings.types for recipe in recipes]
    for n, (type_name, recipe) in enumerate(combinations, 1):
        rows.append(_build(reference.path, out_dir, type_name, recipe, matrix, rows, settings.threads,
                           lambda line, n=n: say(f"[{n}/{len(combinations)}] {line}")))
        step()
    for bpw in settings.searched:
        rows.append(_searched(reference.path, out_dir, bpw, matrix, settings, say, verbose))
        step()
    _measure(rows, model.kind, evalset, settings, reduced_dim, out_dir, say, step)
    if mteb_tasks:
        _score_mteb(rows, mteb_tasks, out_dir, settings.threads, say, step)
    return SweepResult(kind=model.kind, model_name=model.name, eval_name=evalset.name,
                       n_queries=len(evalset.pairs) if model.kind == "reranker" else len(evalset.queries),
                       n_documents=len(evalset.documents),
                       full_dim=model.embedding_length if model.kind == "embedding" else None,
                       reduced_dim=reduced_dim, imatrix=imatrix_note, rows=rows)


def _check_settings(settings: SweepSettings) -> list[str]:
    """Refuse bad arguments before any work; returns the recipes' names."""
    for type_name in settings.types:
        parse_type(type_name)
    recipes = [load_recipe(name).name for name in settings.recipes]
    if settings.imatrix is not None and settings.calibration:
        raise UserError("give --imatrix or --calibration, not both")
    if settings.imatrix is not None and not settings.imatrix.is_file():
        raise UserError(f"imatrix not found: {settings.imatrix}")
    if settings.reference is not None and settings.reference not in REFERENCE_TYPES:
        raise UserError(f"--reference must be one of {', '.join(REFERENCE_TYPES)}, not {settings.reference!r}")
    for bpw in settings.searched:
        if not 1 < bpw <= 16:
            raise UserError(f"--searched {bpw:g}: a bits-per-weight target is between 1 and 16")
    if settings.max_tokens < 16:
        raise UserError(f"--max-tokens must be at least 16, got {settings.max_tokens}")
    return recipes


def _measure(rows: list[SweepFile], kind: str, evalset, settings: SweepSettings, reduced_dim: int | None,
             out_dir: Path, say, step) -> None:
    """Run the evaluation set through every distinct file and compare each with the reference
    (the first row); fills in each row's `measured`."""
    outputs = {}
    distinct = [row for row in rows if row.same_as is None]
    for n, row in enumerate(distinct, 1):
        # Outputs are kept, named by the file (and its size and time) and the evaluation texts.
        stat = row.path.stat()
        key = f"{evalset.fingerprint()}-{settings.max_tokens}-{stat.st_size}-{stat.st_mtime_ns}"
        stored = out_dir / OUTPUTS_FOLDER / f"{row.path.stem}-{key}.npz"
        if stored.exists():
            say(f"[{n}/{len(distinct)}] {row.label}: measured before")
            outputs[row.label] = ModelOutputs.load(stored)
        else:
            say(f"[{n}/{len(distinct)}] measure {row.label}: {row.path.name}")
            outputs[row.label] = run_model(row.path, kind, evalset, max_tokens=settings.max_tokens,
                                           threads=settings.threads)
            outputs[row.label].save(stored)
        step()
    for _ in range(len(rows) - len(distinct)):
        step()
    reference = outputs[rows[0].label].outputs
    for row in rows:
        run = outputs[row.same_as or row.label]
        facts = read_model_file(row.path)
        row.measured = {"size_bytes": facts.file_size, "bits_per_weight": facts.bits_per_weight,
                        "load_s": run.load_s, "tokens_per_s": run.tokens_per_s, **run.split_tokens_per_s()}
        if kind == "embedding":
            row.measured["fidelity"] = embedding_fidelity(reference, run.outputs)
            row.measured["fidelity_reduced_dim"] = embedding_fidelity(reference, run.outputs, reduced_dim)
        else:
            row.measured["fidelity"] = reranker_fidelity(reference["scores"], run.outputs["scores"])


def _mteb_tasks(names: Sequence[str], source_model) -> list:
    """The MTEB tasks, resolved and their data loaded before anything is built (or none asked for)."""
    if not names:
        return []
    from ..mteb_tasks import load_tasks, resolve_tasks

    if source_model is not None and source_model.kind == "reranker":
        raise UserError(f"--mteb scores embedding models; {source_model.path} is a reranker")
    tasks = resolve_tasks(names)
    load_tasks(tasks)
    return tasks


def _score_mteb(rows: list[SweepFile], tasks, out_dir: Path, threads: int | None, say, step) -> None:
    """Every distinct file's main score on each task, and its difference to the reference's (the
    first row). Embeddings are cached by file sha256, so a file scored before embeds nothing."""
    from ..embed import Embedder
    from ..mteb_tasks import run_tasks

    scores = {}
    distinct = [row for row in rows if row.same_as is None]
    for n, row in enumerate(distinct, 1):
        with Embedder(row.path, device="cpu", threads=threads) as embedder:
            scores[row.label], encoder = run_tasks(embedder, tasks, results_dir=out_dir / MTEB_FOLDER,
                                                   cache_dir=out_dir / MTEB_FOLDER / "embeddings")
        say(f"[{n}/{len(distinct)}] MTEB {row.label}: {encoder.embedded_texts} texts embedded, "
            f"{encoder.cached_texts} from the cache")
        step()
    for _ in range(len(rows) - len(distinct)):
        step()
    reference = {s.task: s.score for s in scores[rows[0].label]}
    for row in rows:
        row.measured["mteb"] = {s.task: {"metric": s.main_score, "score": s.score, "delta": s.score - reference[s.task]}
                                for s in scores[row.same_as or row.label]}


def count_steps(settings: SweepSettings) -> int:
    """Steps `run_sweep` reports: reference, imatrix, each build, each measurement (twice with --mteb)."""
    n_files = len(settings.types) * len(settings.recipes) + len(settings.searched)
    return 2 + n_files + (1 + n_files) * (2 if settings.mteb_tasks else 1)


def _check_source(src: Path, precision: str | None):
    """The ModelFile of a GGUF SRC (which must be unquantized), or None for a checkpoint folder."""
    if not src.exists():
        raise UserError(f"{src} not found: give a checkpoint folder or a GGUF file")
    if src.is_dir():
        return None
    model = read_model_file(src)
    if _precision(model) not in UNQUANTIZED_FILE_TYPES:
        raise UserError(f"{src} is {_precision(model)}: a sweep starts from an unquantized model "
                        "(a checkpoint folder, or an F32, F16 or BF16 GGUF)")
    if precision is not None and precision.upper() != _precision(model):
        raise UserError(f"{src} is {_precision(model)}; --reference chooses the precision a checkpoint is "
                        "converted to, so drop it or give the checkpoint folder")
    return model


def _precision(model) -> str:
    """The file type as users write it: F32 for llama.cpp's ALL_F32."""
    return model.file_type.removeprefix("ALL_")


def _converted_reference(src: Path, out_dir: Path, precision: str, say) -> SweepFile:
    """The checkpoint converted to `precision`: the GGUF every quant is built from."""
    path = out_dir / f"{src.resolve().name.lower()}-{precision}.gguf"
    row = SweepFile(type_name=precision.upper(), recipe=None, path=path)
    if path.exists():
        say(f"reference {path.name}: already there")
    else:
        say(f"convert {src} → {path.name} ({precision.upper()})")
        started = time.perf_counter()
        convert_checkpoint(src, path, outtype=precision)
        row.built_s = time.perf_counter() - started
    return row


def _importance_matrix(reference: Path, out_dir: Path, settings: SweepSettings, say, verbose: bool):
    """The imatrix every quant of the sweep uses, and a line saying where it came from."""
    if settings.imatrix is not None:
        say(f"imatrix {settings.imatrix}")
        return read_imatrix(settings.imatrix), f"given: {settings.imatrix.resolve()}"
    path = out_dir / IMATRIX_FILE
    calibration = [str(p) for p in settings.calibration] or ["the shipped calibration set"]
    note = f"collected on {', '.join(calibration)}" + (
        f", first {settings.imatrix_chunks} chunks" if settings.imatrix_chunks else "")
    if path.exists():
        say(f"imatrix {path.name}: already there")
        return read_imatrix(path), note
    say(f"imatrix → {path.name} ({note})")
    result = collect_imatrix(reference, settings.calibration, max_chunks=settings.imatrix_chunks,
                             device="cpu", threads=settings.threads, verbose=verbose)
    write_imatrix(result.matrix, path)
    return result.matrix, note


def _check_manifest(out_dir: Path, src: Path, reference: Path, imatrix_note: str) -> None:
    """Refuse to mix the files of two different sweeps in one folder."""
    manifest = out_dir / MANIFEST
    wanted = {"source": str(src.resolve()), "reference": reference.name, "imatrix": imatrix_note}
    if manifest.exists():
        try:
            recorded = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{manifest} is unreadable; delete it (and the files it describes) to start over") from None
        differing = [key for key in wanted if recorded.get(key) != wanted[key]]
        if differing:
            key = differing[0]
            raise UserError(f"{out_dir} holds a sweep with another {key} ({recorded.get(key)!r}, now "
                            f"{wanted[key]!r}); choose another -o folder or empty this one")
        return
    write_text_atomically(manifest, json.dumps(wanted, indent=2) + "\n")


def _build(reference: Path, out_dir: Path, type_name: str, recipe: str, matrix, earlier: list[SweepFile],
           threads: int | None, say) -> SweepFile:
    """The quant of `reference` for (type, recipe): built, found in out_dir, or shared with an
    earlier row whose plan is the same."""
    plan = plan_quantization(reference, type_name, imatrix=matrix, recipe=recipe)
    name = plan.quant_type.name
    path = out_dir / f"{reference.stem.removesuffix('-f32').removesuffix('-bf16')}-{name.lower()}-{recipe}.gguf"
    tensors = {t.name: t.type for t in plan.tensors}
    row = SweepFile(type_name=name, recipe=recipe, path=path, planned=tensors)
    for other in earlier:
        if other.planned == tensors:
            row.path, row.same_as = other.path, other.label
            say(f"{row.label}: every tensor as in {other.label}, not built again")
            return row
    if path.exists():
        say(f"{row.label}: {path.name} already there")
    else:
        say(f"build {row.label} → {path.name} ({plan.bits_per_weight:.2f} bits per weight)")
        row.built_s = quantize(plan, path, threads=threads).seconds
    return row


def _searched(reference: Path, out_dir: Path, bpw: float, matrix, settings: SweepSettings, say, verbose: bool):
    """The searched file at `bpw` bits per weight, found in out_dir or searched and built."""
    path = out_dir / f"{reference.stem.removesuffix('-f32').removesuffix('-bf16')}-searched-{bpw:g}bpw.gguf"
    row = SweepFile(type_name=f"{bpw:g} bpw", recipe="searched", path=path)
    if path.exists():
        say(f"{row.label}: {path.name} already there")
        return row
    say(f"search {bpw:g} bits per weight → {path.name}")
    started = time.perf_counter()
    search_settings = replace(settings.search, imatrix=matrix, threads=settings.threads,
                              eval_file=settings.eval_file, eval_limit=settings.limit)
    result = search_quantization(reference, SearchTarget(bits_per_weight=bpw), search_settings,
                                 work_dir=out_dir / SEARCH_FOLDER, say=say, verbose=verbose)
    build_searched(result, path, work_dir=out_dir / SEARCH_FOLDER, say=say, verbose=verbose,
                   evaluate=False)                  # the sweep measures every file on its evaluation set
    row.built_s = time.perf_counter() - started
    row.planned = result.tensor_types
    return row


def _reduced_dim(model, wanted: int | None) -> int:
    dim = model.embedding_length
    if wanted is None:
        return REDUCED_DIM if dim > REDUCED_DIM else max(MIN_MRL_DIM, dim // 2)
    if not MIN_MRL_DIM <= wanted < dim:
        raise UserError(f"--dim {wanted} is outside {MIN_MRL_DIM}…{dim - 1} (this model has {dim} dimensions)")
    return wanted
