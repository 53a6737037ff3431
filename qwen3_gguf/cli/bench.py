"""`qwen3-gguf bench`: documents and queries tokens/s of an embedding GGUF on this machine, or of
a full-precision GGUF quantized to several types, with each file's fidelity and the fastest one
that meets a floor."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click

from ..errors import UserError
from ..quantization.bench import (
    DEFAULT_MAX_DELTA_P,
    DEFAULT_MIN_COSINE,
    QUERIES_PER_ROUND,
    SPEED_KINDS,
    STOCK_TYPES,
)
from ._common import runtime_options


@click.command()
@click.argument("model")
@runtime_options
@click.option("--seconds", type=click.FloatRange(min=1), default=20, show_default=True,
              help="Time spent measuring each file, after loading and one warm-up round.")
@click.option("--types", "types_spec", metavar="LIST",
              help="Quantize MODEL (F32, F16 or BF16) to these comma-separated types and compare them with "
                   f"MODEL itself; 'all' or 'stock' = {','.join(STOCK_TYPES)}.")
@click.option("--min-cosine", type=float,
              help="With --types, embedding models: the fidelity floor of the file named fastest, as mean cosine "
                   "to MODEL's own vectors. 0.99 is a floor for search (which documents come back, not the "
                   "vectors' exact values); ask 0.999 when new vectors must sit in one index with vectors made "
                   f"by another file. [default: {DEFAULT_MIN_COSINE}]")
@click.option("--max-delta-p", type=float,
              help="With --types, rerankers: the fidelity floor of the file named fastest, as mean |P(yes) - "
                   "MODEL's P(yes)| over query-document pairs; 0.01 is one point of probability. "
                   f"[default: {DEFAULT_MAX_DELTA_P}]")
@click.option("--fastest-for", type=click.Choice(SPEED_KINDS),
              help="With --types: which speed names the fastest file: documents (indexing, or rerank pairs) or "
                   "queries (search; embedding models) [default: documents].")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False),
              help="With --types: where the quantized files are kept and reused [default: the user cache "
                   "folder, e.g. ~/.cache/qwen3-gguf/bench].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def bench(model: str, device: str, threads: int | None, seconds: float, types_spec: str | None,
          min_cosine: float | None, max_delta_p: float | None, fastest_for: str | None, work_dir: Path | None,
          as_json: bool) -> None:
    """Measure how fast an embedding MODEL (GGUF file or catalog name) runs here; with --types,
    which type of MODEL is fastest here at a fidelity floor.

    Alternates 512-token documents (one per call) and batches of 8 short queries under the
    default instruction, and prints the median tokens/s of each: the numbers to choose a
    quantization type for this machine by. Tokens are counted as the model sees them (the
    query instruction and the EOS included).

    With --types, MODEL (an F32, F16 or BF16 GGUF, embedding model or reranker) is quantized to
    each type (files kept in --work-dir), all files are measured with their rounds interleaved,
    each file's outputs are compared with MODEL's own (exact numerics: cosine of vectors, or
    |ΔP(yes)| of a reranker's query-document pairs), and one table names the fastest file that
    meets --min-cosine (--max-delta-p for a reranker). MODEL's own row meets any floor, so the
    answer is MODEL itself when no quantized file is both faster and faithful enough.
    """
    if types_spec is None:
        given = [name for name, value in [("--min-cosine", min_cosine), ("--max-delta-p", max_delta_p),
                                          ("--fastest-for", fastest_for), ("--work-dir", work_dir)]
                 if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} compare the files of --types; give --types too")
        _bench_one(model, device, threads, seconds, as_json)
        return
    if min_cosine is not None and not 0 < min_cosine <= 1:
        raise UserError(f"--min-cosine must be in (0, 1], got {min_cosine:g}")
    if max_delta_p is not None and not 0 <= max_delta_p < 1:
        raise UserError(f"--max-delta-p must be in [0, 1), got {max_delta_p:g}")
    _bench_types(model, types_spec, device, threads, seconds, min_cosine, max_delta_p, fastest_for or "documents",
                 work_dir, as_json)


def _bench_one(model: str, device: str, threads: int | None, seconds: float, as_json: bool) -> None:
    from ..embed import Embedder
    from ..quantization.bench import EmbeddingWorkload, measure
    from ..runtime.backend import default_threads

    started = time.perf_counter()
    with Embedder(model, device=device, threads=threads) as embedder:
        loaded = time.perf_counter() - started
        results = measure({"model": embedder}, EmbeddingWorkload(embedder), seconds)["model"]
        facts = {"model": str(embedder.model_file.path), "file type": embedder.model_file.file_type,
                 "device": device, "threads": threads or default_threads(), "load_s": round(loaded, 2)}
    if as_json:
        click.echo(json.dumps({**facts, **{name: asdict(r) for name, r in results.items()}}))
        return
    click.echo(f"{facts['model']} ({facts['file type']}), device {device}, {facts['threads']} threads, "
               f"loaded in {loaded:.1f} s")
    click.echo(f"{'':<10} {'tokens/s':>9} {'texts/s':>8} {'rounds':>7}  input")
    described = {"documents": f"one document of {results['documents'].tokens_per_text:.0f} tokens per call",
                 "queries": f"{QUERIES_PER_ROUND} queries of {results['queries'].tokens_per_text:.0f} tokens "
                            "(instruction included) per call"}
    for name, r in results.items():
        click.echo(f"{name:<10} {r.tokens_per_s:>9.1f} {r.texts_per_s:>8.3g} {r.rounds:>7}  {described[name]}")


def _bench_types(model: str, types_spec: str, device: str, threads: int | None, seconds: float,
                 min_cosine: float | None, max_delta_p: float | None, fastest_for: str, work_dir: Path | None,
                 as_json: bool) -> None:
    from contextlib import ExitStack

    from ..catalog import resolve_model
    from ..embed import Embedder
    from ..gguf_file import read_model_file
    from ..quantization import bench as type_bench
    from ..rerank import Reranker
    from ..runtime.backend import default_threads

    def report(line: str) -> None:
        click.echo(line, err=True)

    source = read_model_file(resolve_model(model, None))
    type_bench.check_source(source)
    if source.kind == "embedding":
        if max_delta_p is not None:
            raise UserError(f"--max-delta-p is the floor of a reranker; {source.path} is an embedding model "
                            "(use --min-cosine)")
        runtime_class, workload_class = Embedder, type_bench.EmbeddingWorkload
        floor = type_bench.Floor(type_bench.COSINE, type_bench.DEFAULT_MIN_COSINE if min_cosine is None else min_cosine)
    else:
        if min_cosine is not None or fastest_for == "queries":
            raise UserError(f"{source.path} is a reranker: its floor is --max-delta-p, and it has no queries of "
                            "its own to be fastest for")
        runtime_class, workload_class = Reranker, type_bench.RerankerWorkload
        floor = type_bench.Floor(type_bench.DELTA_P,
                                 type_bench.DEFAULT_MAX_DELTA_P if max_delta_p is None else max_delta_p)
    names = type_bench.type_names(types_spec, source)
    work_dir = work_dir or type_bench.default_work_dir()
    source_name = source.file_type.removeprefix("ALL_")
    files = {source_name: source.path,
             **type_bench.quantized_files(source, names, work_dir, threads=threads, show_progress=True, report=report)}
    with ExitStack() as stack:
        models = {name: stack.enter_context(runtime_class(path, device=device, threads=threads))
                  for name, path in files.items()}
        workload = workload_class(models[source_name])
        report("running the fidelity texts through each file")
        reference = workload.outputs(models[source_name])
        fidelity = {name: workload.fidelity(reference, workload.outputs(model)) for name, model in models.items()}
        report(f"measuring {', '.join(files)} with their rounds interleaved, about {seconds * len(files):.0f} s")
        speeds = type_bench.measure(models, workload, seconds)
        rows = [type_bench.type_row(name, model.model_file, model.loaded_model.file_type, kind=workload.kind,
                                    is_source=name == source_name, speeds=speeds[name],
                                    fidelity_measure=workload.fidelity_measure, fidelity=fidelity[name])
                for name, model in models.items()]
    chosen = type_bench.fastest_meeting(rows, floor, fastest_for)
    choice = type_bench.choice_line(rows, floor, fastest_for)
    if as_json:
        click.echo(json.dumps({"model": str(source.path), "kind": source.kind, "device": device,
                               "threads": threads or default_threads(), "work_dir": str(work_dir),
                               "floor": asdict(floor), "fastest_for": fastest_for,
                               "types": [asdict(row) for row in rows],
                               "fastest": None if chosen is None else chosen.type_name, "choice": choice}))
        return
    click.echo(f"{source.path} ({source.file_type} {source.kind}; * = the source, the reference), device {device}, "
               f"{threads or default_threads()} threads")
    click.echo(workload.describe(rows[0].speeds))
    for line in type_bench.format_table(rows):
        click.echo(line)
    click.echo(choice)
