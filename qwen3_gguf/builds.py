"""Builds of catalog names nobody published: checkpoint → GGUF → importance matrix → quant, cached.

`qwen3-reranker-4b:q4_k_m` or `qwen3-embedding-8b:q5_k_m+bump-edges` with no published GGUF is
made here, step by step, each step's file written atomically and reused by the next call:

    download   the checkpoint files the converter reads, into huggingface_hub's cache
    convert    to BF16 (F16 for a float16 checkpoint): BUILDS/MODEL/REVISION/MODEL-bf16.gguf
    imatrix    on the shipped calibration set, when the type gains from one: BUILDS/MODEL/REVISION/imatrix-all.gguf
    quantize   with the recipe: BUILDS/MODEL/NAME.gguf
    manifest   BUILDS/MODEL/NAME.json, written last: without it the build does not exist

BUILDS is `catalog.build_cache_dir()`. An interrupted build leaves nothing that resolves; the
next call starts again after the last finished step.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import hub
from .atomic import write_text_atomically
from .catalog import CatalogEntry, build_paths, did_you_mean, is_model_path, lookup, read_build
from .convert import convert_checkpoint
from .data import calibration_file
from .errors import UserError
from .gguf_file import file_sha256
from .progress import size_text
from .quantization import (
    collect_imatrix,
    load_recipe,
    parse_type,
    plan_quantization,
    quantize,
    read_imatrix,
    recipe_names,
    write_imatrix,
)
from .quantization.types import FILE_TYPES, NEEDS_IMATRIX, bits_per_weight

# Imatrix rule: every type under 6 bits per weight gains from an importance matrix (the IQ types
# and Q2_K…Q5_K, Q4_0, Q5_0; IQ1/IQ2/IQ3_XXS cannot be made without one); Q6_K, Q8_0 and the
# unquantized types are built without (llama.cpp's own measurements show no gain there).
IMATRIX_BELOW_BITS = 6.0
CONVERTED_TYPES = {"float16": "f16"}  # any other checkpoint dtype converts to bf16 (F32's range, half the size)

Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BuildSettings:
    """How a build runs. `imatrix_chunks` caps the calibration text the importance matrix is
    collected on (None: all of it); the manifest records what was used."""

    device: str = "auto"
    threads: int | None = None
    imatrix_chunks: int | None = None
    verbose: bool = False


@dataclass(frozen=True)
class Build:
    """A finished build: the GGUF and what its manifest says."""

    name: str
    path: Path
    manifest: dict


def wants_imatrix(type_name: str) -> bool:
    """Whether a build of `type_name` collects an importance matrix (see IMATRIX_BELOW_BITS)."""
    return bits_per_weight(parse_type(type_name).file_type.base) < IMATRIX_BELOW_BITS


def build_if_needed(name_or_path: str | Path, kind: str, *, say: Say = _stderr) -> None:
    """Build a catalog name that has no published GGUF and is not built yet; anything else (paths,
    hf:// references, published names) is left to `catalog.resolve_model`."""
    if is_model_path(name_or_path):
        return
    entry = lookup(name_or_path, kind)
    if entry.published is None:
        build(entry, say=say)


def build_model(name: str, settings: BuildSettings = BuildSettings(), *, say: Say = _stderr) -> Build:
    """Build the catalog name `name` (MODEL:TYPE[+RECIPE]) unless it is built already."""
    entry = lookup(name)
    if entry.published is not None:
        raise UserError(f"{entry.spec} is published ({entry.published.file} in {entry.published.repo}); "
                        f"fetch it with: qwen3-gguf models --download {entry.spec}")
    return build(entry, settings, say=say)


def build(entry: CatalogEntry, settings: BuildSettings = BuildSettings(), *, say: Say = _stderr) -> Build:
    """Make `entry`'s GGUF from its source checkpoint (see the module docstring); a finished
    build is returned as it is. Everything that can be refused is refused before the download."""
    if (done := finished_build(entry)) is not None:
        return done
    quant_type, imatrix_wanted = _check_request(entry)
    files = hub.checkpoint_files(entry.model.source, fetch=f"qwen3-gguf models --build {entry.spec}")
    paths = build_paths(entry)
    revision_folder = paths.gguf.parent / files.revision
    _check_space(files, revision_folder, quant_type)

    started = time.perf_counter()
    with _locked(paths.gguf.parent):
        if (done := finished_build(entry)) is not None:   # built by another process meanwhile
            return done
        _remove_leftovers(paths.gguf.parent)
        revision_folder.mkdir(exist_ok=True)
        say(f"building {entry.spec} from {files.repo} (revision {files.revision[:10]}) in {paths.gguf.parent}")
        checkpoint = _step(say, "download", lambda: _download(files))
        converted = _step(say, "convert", lambda: _convert(entry, checkpoint, revision_folder))
        imatrix = _step(say, "imatrix", lambda: _imatrix(converted, revision_folder, imatrix_wanted, settings))
        plan = _step(say, "quantize", lambda: _quantize(entry, converted, imatrix, paths.gguf, settings))
        manifest = _manifest(entry, files, converted, imatrix, plan, paths.gguf)
        write_text_atomically(paths.manifest, json.dumps(manifest, indent=2) + "\n")
    say(f"built {entry.spec}: {size_text(manifest['size'])}, {manifest['bits_per_weight']:.2f} bits per weight, "
        f"in {time.perf_counter() - started:.0f} s: {paths.gguf}")
    return Build(entry.spec, paths.gguf, manifest)


def finished_build(entry: CatalogEntry) -> Build | None:
    """`entry`'s build if its manifest and GGUF are both there and agree on the size."""
    paths = build_paths(entry)
    manifest = read_build(paths)
    return Build(entry.spec, paths.gguf, manifest) if manifest is not None else None


def remove_build(name: str) -> int:
    """Delete the build of `name` (the manifest first, so nothing resolves meanwhile) and, when no
    other build of the model uses them, its converted GGUF and imatrix. Returns the bytes freed."""
    entry = lookup(name)
    paths = build_paths(entry)
    if not paths.manifest.is_file() and not paths.gguf.is_file():
        if entry.published is not None:
            raise UserError(f"{entry.spec} is a published GGUF, not a build; it lives in the Hugging Face cache "
                            f"(delete it with: hf cache delete)")
        raise UserError(f"{entry.spec} is not built (see qwen3-gguf models)")
    with _locked(paths.gguf.parent):
        freed = 0
        revision = None
        if paths.manifest.is_file():
            revision = json.loads(paths.manifest.read_text(encoding="utf-8"))["source"]["revision"]
            freed += _unlink(paths.manifest)
        freed += _unlink(paths.gguf)
        still_used = {json.loads(m.read_text(encoding="utf-8"))["source"]["revision"]
                      for m in paths.gguf.parent.glob("*.json")}
        for folder in paths.gguf.parent.iterdir():
            if folder.is_dir() and folder.name not in still_used and (revision is None or folder.name == revision):
                freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                shutil.rmtree(folder)
    return freed


# --- the steps -------------------------------------------------------------------------------


def _check_request(entry: CatalogEntry):
    """The type, and whether an imatrix is collected; a name that cannot be built is refused here,
    before any download, with the close matches of a misspelt type or recipe."""
    try:
        quant_type = parse_type(entry.quant)
    except UserError:
        names = [name.lower() for name in FILE_TYPES]
        hint = did_you_mean(entry.quant, names)
        raise UserError(f"{entry.spec}: {entry.quant!r} is not a llama.cpp type ({hint}valid: {', '.join(names)}, "
                        "or a hybrid such as bf16_q8_0)") from None
    try:
        recipe = load_recipe(entry.recipe or "llama-default")
    except UserError:
        hint = did_you_mean(entry.recipe, recipe_names())
        raise UserError(f"{entry.spec}: no recipe {entry.recipe!r} ({hint}shipped: "
                        f"{', '.join(recipe_names())})") from None
    if recipe.keeps and quant_type.keep is None:
        raise UserError(f"recipe {recipe.name!r} keeps tensors at a hybrid's precision; ask for a hybrid type "
                        f"such as {entry.model.name}:bf16_{quant_type.file_type.name.lower()}+{recipe.name}")
    imatrix_wanted = wants_imatrix(entry.quant)
    if imatrix_wanted:
        try:
            calibration_file()
        except FileNotFoundError as exc:
            if quant_type.file_type.base in NEEDS_IMATRIX:
                raise UserError(f"{entry.spec} cannot be built: {quant_type.file_type.name} needs an importance "
                                f"matrix and {exc}") from None
            imatrix_wanted = False
    return quant_type, imatrix_wanted


def _check_space(files: hub.CheckpointFiles, revision_folder: Path, quant_type) -> None:
    """Refuse, before downloading, a build the disks cannot hold (each disk checked for its share)."""
    from huggingface_hub import constants

    converted = 0 if any(revision_folder.glob("*-*16.gguf")) else files.weight_bytes
    quantized = int(files.weight_bytes * min(1.0, (bits_per_weight(quant_type.file_type.base) + 1) / 16))
    needs = [(Path(constants.HF_HUB_CACHE), "the checkpoint download", files.missing_bytes),
             (revision_folder, "the converted GGUF", converted),
             (revision_folder.parent, f"the {quant_type.name} GGUF", quantized)]
    by_disk: dict[int, list[tuple[Path, str, int]]] = {}
    for folder, what, size in needs:
        if size:
            existing = _existing_parent(folder)
            by_disk.setdefault(existing.stat().st_dev, []).append((existing, what, size))
    for parts in by_disk.values():
        total = sum(size for _, _, size in parts)
        free = shutil.disk_usage(parts[0][0]).free
        if free < total:
            detail = ", ".join(f"{what} {size_text(size)}" for _, what, size in parts)
            raise UserError(f"not enough free space in {parts[0][0]} to build: it needs {size_text(total)} ({detail}) "
                            f"and {size_text(free)} are free")


def _step(say: Say, name: str, run: Callable[[], tuple[object, str, bool]]):
    """Run one step and print its line: what it made (or reused) and how long it took."""
    started = time.perf_counter()
    result, detail, worked = run()
    say(f"  {name:<9} {detail}" + (f" in {time.perf_counter() - started:.1f} s" if worked else ""))
    return result


def _download(files: hub.CheckpointFiles):
    count = f"{len(files.sizes)} files, {size_text(sum(files.sizes.values()))}"
    folder = hub.download_checkpoint(files)
    if files.missing:
        return folder, f"{count}, {size_text(files.missing_bytes)} downloaded", True
    return folder, f"reused {count} in the Hugging Face cache", False


def _convert(entry: CatalogEntry, checkpoint: Path, revision_folder: Path):
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    outtype = CONVERTED_TYPES.get(str(config.get("torch_dtype") or config.get("dtype")), "bf16")
    converted = revision_folder / f"{entry.model.name}-{outtype}.gguf"
    if converted.is_file():
        return converted, f"reused {converted.name}, {size_text(converted.stat().st_size)}", False
    result = convert_checkpoint(checkpoint, converted, outtype=outtype, kind=entry.model.kind, progress=True)
    return converted, f"{result.outtype.upper()}, {result.n_tensors} tensors, {size_text(result.n_bytes)}", True


def _imatrix(converted: Path, revision_folder: Path, wanted: bool, settings: BuildSettings):
    path = revision_folder / f"imatrix-{settings.imatrix_chunks or 'all'}.gguf"
    if not wanted:
        return None, "skipped: the type gains nothing from an importance matrix", False
    if path.is_file():
        matrix = read_imatrix(path)
        return matrix, f"reused {path.name}, {matrix.chunk_count} chunks", False
    result = collect_imatrix(converted, max_chunks=settings.imatrix_chunks, device=settings.device,
                             threads=settings.threads, verbose=settings.verbose, show_progress=True)
    write_imatrix(result.matrix, path)
    return result.matrix, (f"{result.matrix.chunk_count} chunks ({result.n_tokens:,} tokens) "
                           "of the shipped calibration set"), True


def _quantize(entry: CatalogEntry, converted: Path, imatrix, out: Path, settings: BuildSettings):
    plan = plan_quantization(converted, entry.quant, imatrix=imatrix, recipe=entry.recipe)
    what = f"{plan.quant_type.name}" + (f" with {plan.recipe.name}" if entry.recipe else "")
    if out.is_file():   # quantized before an interruption, the manifest not yet written
        return plan, f"reused {out.name}, {size_text(out.stat().st_size)}", False
    result = quantize(plan, out, threads=settings.threads, show_progress=True, verbose=settings.verbose)
    return plan, f"{what}, {size_text(result.file_size)}, {plan.bits_per_weight:.2f} bits per weight", True


def _manifest(entry: CatalogEntry, files: hub.CheckpointFiles, converted: Path, imatrix, plan, gguf: Path) -> dict:
    return {
        "name": entry.spec,
        "kind": entry.model.kind,
        "file": gguf.name,
        "source": {"repo": files.repo, "revision": files.revision, "files": sorted(files.sizes)},
        "converted": converted.name,
        "type": plan.quant_type.name,
        "recipe": plan.recipe.name,
        "imatrix": None if imatrix is None else {
            "datasets": list(imatrix.datasets), "chunks": imatrix.chunk_count, "chunk_tokens": imatrix.chunk_size},
        "bits_per_weight": round(plan.bits_per_weight, 4),
        "size": gguf.stat().st_size,
        "sha256": file_sha256(gguf),
        "qwen3_gguf_version": metadata.version("qwen3-gguf"),
        "llama_cpp_python_version": metadata.version("llama-cpp-python"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One build per model folder at a time (an advisory lock the kernel drops if we are killed)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of a build that was killed (under the lock, so none is in use)."""
    for leftover in folder.rglob(".*partial*"):
        leftover.unlink(missing_ok=True)


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _unlink(path: Path) -> int:
    if not path.is_file():
        return 0
    size = path.stat().st_size
    path.unlink()
    return size

