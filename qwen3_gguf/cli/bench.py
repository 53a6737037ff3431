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
from ..quantization.bench import DEFAULT_MIN_COSINE, DOCUMENT_TOKENS, QUERIES_PER_ROUND, SPEED_KINDS, STOCK_TYPES
from ._common import runtime_options

__all__ = ["DOCUMENT_TOKENS", "bench"]


@click.command()
@click.argument("model")
@runtime_options
@click.option("--seconds", type=click.FloatRange(min=1), default=20, show_default=True,
              help="Time spent measuring each file, after loading and one warm-up round.")
@click.option("--types", "types_spec", metavar="LIST",
              help="Quantize MODEL (F32, F16 or BF16) to these comma-separated types and compare them with "
                   f"MODEL itself; 'all' or 'stock' = {','.join(STOCK_TYPES)}.")
@click.option("--min-cosine", type=float,
              help="With --types: the fidelity floor of the file named fastest, as mean cosine to MODEL's own "
                   "vectors. 0.99 is a floor for search (which documents come back, not the vectors' exact "
                   "values); ask 0.999 when new vectors must sit in one index with vectors made by another "
                   f"file. [default: {DEFAULT_MIN_COSINE}]")
@click.option("--fastest-for", type=click.Choice(SPEED_KINDS),
              help="With --types: which speed names the fastest file: documents (indexing) or queries (search) "
                   "[default: documents].")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False),
              help="With --types: where the quantized files are kept and reused [default: the user cache "
                   "folder, e.g. ~/.cache/qwen3-gguf/bench].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def bench(model: str, device: str, threads: int | None, seconds: float, types_spec: str | None,
          min_cosine: float | None,
          fastest_for: str | None, work_dir: Path | None, as_json: bool) -> None:
    """Measure how fast an embedding MODEL (GGUF file or catalog name) runs here.

    Alternates 512-token documents (one per call) and batches of 8 short queries under the
    default instruction, and prints the median tokens/s of each: the numbers to choose a
    quantization type for this machine by. Tokens are counted as the model sees them (the
    query instruction and the EOS included).

    With --types, MODEL (an F32, F16 or BF16 GGUF) is quantized to each type (files kept in
    --work-dir), all files are measured with their rounds interleaved, each file's vectors are
    compared with MODEL's own (exact numerics), and one table names the fastest file whose mean
    cosine reaches --min-cosine. MODEL's own row meets any floor, so the answer is MODEL itself
    when no quantized file is both faster and faithful enough.
    """
    if types_spec is None:
        given = [name for name, value in [("--min-cosine", min_cosine), ("--fastest-for", fastest_for),
                                          ("--work-dir", work_dir)] if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} compare the files of --types; give --types too")
        _bench_one(model, device, threads, seconds, as_json)
        return
    min_cosine = DEFAULT_MIN_COSINE if min_cosine is None else min_cosine
    if not 0 < min_cosine <= 1:
        raise UserError(f"--min-cosine must be in (0, 1], got {min_cosine:g}")
    _bench_types(model, types_spec, device, threads, seconds, min_cosine, fastest_for or "documents", work_dir,
                 as_json)


def _bench_one(model: str, device: str, threads: int | None, seconds: float, as_json: bool) -> None:
    from ..embed import Embedder
    from ..quantization.bench import bench_texts, measure
    from ..runtime.backend import default_threads

    started = time.perf_counter()
    with Embedder(model, device=device, threads=threads) as embedder:
        loaded = time.perf_counter() - started
        results = measure({"model": embedder}, bench_texts(embedder), seconds)["model"]
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


def _bench_types(model: str, types_spec: str, device: str, threads: int | None, seconds: float, min_cosine: float,
                 fastest_for: str, work_dir: Path | None, as_json: bool) -> None:
    from contextlib import ExitStack

    import numpy as np

    from ..catalog import resolve_model
    from ..embed import Embedder
    from ..gguf_file import read_model_file
    from ..quantization import bench as type_bench
    from ..quantization.fidelity import row_cosines
    from ..runtime.backend import default_threads

    def report(line: str) -> None:
        click.echo(line, err=True)

    source = read_model_file(resolve_model(model, "embedding"))
    type_bench.check_source(source)
    names = type_bench.type_names(types_spec, source)
    work_dir = work_dir or type_bench.default_work_dir()
    source_name = source.file_type.removeprefix("ALL_")
    files = {source_name: source.path,
             **type_bench.quantized_files(source, names, work_dir, threads=threads, show_progress=True, report=report)}
    with ExitStack() as stack:
        embedders = {name: stack.enter_context(Embedder(path, device=device, threads=threads))
                     for name, path in files.items()}
        texts = type_bench.bench_texts(embedders[source_name])
        report(f"embedding {len(texts.documents)} documents and {len(texts.queries)} queries with each file")
        reference = type_bench.embed_all(embedders[source_name], texts)
        cosines = {name: row_cosines(reference, type_bench.embed_all(embedder, texts))
                   for name, embedder in embedders.items() if name != source_name}
        cosines[source_name] = np.ones(len(reference))  # the reference itself
        report(f"measuring {', '.join(files)} with their rounds interleaved, about {seconds * len(files):.0f} s")
        speeds = type_bench.measure(embedders, texts, seconds)
        rows = [type_bench.type_row(name, embedder.model_file, embedder.loaded_model.file_type,
                                    is_source=name == source_name, speeds=speeds[name], cosines=cosines[name])
                for name, embedder in embedders.items()]
    chosen = type_bench.fastest_meeting(rows, min_cosine, fastest_for)
    choice = type_bench.choice_line(rows, min_cosine, fastest_for)
    if as_json:
        click.echo(json.dumps({"model": str(source.path), "device": device, "threads": threads or default_threads(),
                               "work_dir": str(work_dir), "min_cosine": min_cosine, "fastest_for": fastest_for,
                               "types": [asdict(row) for row in rows],
                               "fastest": None if chosen is None else chosen.type_name, "choice": choice}))
        return
    click.echo(f"{source.path} ({source.file_type}; * = the source, the reference), device {device}, "
               f"{threads or default_threads()} threads; documents of {rows[0].documents.tokens_per_text:.0f} "
               f"tokens, queries of {rows[0].queries.tokens_per_text:.0f}")
    for line in type_bench.format_table(rows):
        click.echo(line)
    click.echo(choice)
