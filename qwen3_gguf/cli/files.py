"""`qwen3-gguf embed-files` (also `embed --files`): text files and folders, chunk by chunk, to
JSONL, NPY or Parquet."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..catalog import default_embedding_model
from ..errors import UserError
from ..files.outputs import FORMATS
from ..files.walk import DEFAULT_CHUNK_TOKENS
from ._common import AppState, embedding_options, max_tokens_option, model_option, rate, runtime_options, token_progress

ENGINES = ("local", "ray")


@click.command("embed-files")
@click.argument("paths", nargs=-1, required=True)
@model_option(default=default_embedding_model())
@embedding_options
@max_tokens_option
@click.option("--no-truncate", is_flag=True, help="Fail on a chunk over --max-tokens instead of truncating it.")
@click.option("--glob", "include", multiple=True, metavar="PATTERN",
              help="In folders, embed only files matching PATTERN (repeatable), e.g. '*.md'.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="In folders, skip files and folders matching PATTERN (repeatable).")
@click.option("--chunk-tokens", type=click.IntRange(min=0), default=DEFAULT_CHUNK_TOKENS, show_default=True,
              help="Split files into chunks of this many tokens; 0 embeds each file whole (truncated).")
@click.option("--overlap", type=click.IntRange(min=0), help="Tokens shared by neighbouring chunks "
              "[default: chunk-tokens / 8].")
@click.option("--format", "fmt", type=click.Choice((*FORMATS, "lance")),
              help="npy writes a float32 matrix plus a .jsonl of its rows; lance (a LanceDB table) is for "
                   "--engine ray. [default: jsonl, or parquet with --engine ray]")
@click.option("-o", "--output", type=click.Path(), help="Write here instead of stdout (with --engine ray: "
              "a folder for Parquet, or lance://PATH).")
@click.option("--no-text", is_flag=True, help="Leave the chunk text out of the records (they still name the model).")
@runtime_options
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="local embeds in this process; ray runs actors on Ray Data (pip install 'qwen3-gguf[ray]').")
@click.option("--address", metavar="auto|HOST:PORT|ray://HOST:PORT",
              help="[ray] The Ray cluster to use [default: start Ray on this machine].")
@click.option("--workers", type=click.IntRange(min=1), help="[ray] Actors, each with its own copy of the model "
              "[default: the cluster's CPUs / --cpus-per-worker].")
@click.option("--cpus-per-worker", type=click.IntRange(min=1),
              help="[ray] CPUs (llama.cpp threads) per actor [default: 4, or a node's CPUs if fewer].")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="[ray] GPUs per actor; above 0 the model is offloaded to it.")
@click.option("--text-column", metavar="NAME",
              help="[ray] Read PATHS as Parquet or JSONL tables and embed this column.")
@click.option("--id-column", metavar="NAME", help="[ray] With --text-column: the column naming each row "
              "[default: a hash of the row's text].")
@click.pass_obj
def embed_files(obj: AppState, paths: tuple[str, ...], model: str, as_query: bool, instruction: str | None,
                dim: int | None, max_tokens: int, no_truncate: bool, include: tuple[str, ...],
                exclude: tuple[str, ...], chunk_tokens: int, overlap: int | None, fmt: str | None,
                output: str | None, no_text: bool, device: str, threads: int | None, engine: str,
                **ray_options) -> None:
    """Embed the text files under PATHS (files, folders walked recursively, or - for stdin) chunk by
    chunk and write one record per chunk (see --format): where the chunk is, its text (unless
    --no-text), the model that made it (catalog name or file name, GGUF sha256) and its vector.

    With --engine ray the chunks are embedded by actors on Ray Data (this machine, or a cluster
    with --address) into Parquet partitioned by model or a LanceDB table; a rerun skips the rows
    already written, so an interrupted job resumes."""
    from ..embed import Embedder
    from ..files import Chunker, Counts, TextFiles, embed_documents
    from ..files.outputs import Provenance, check_output, open_output
    from ..prompts import DEFAULT_INSTRUCTION

    instruction = instruction or (DEFAULT_INSTRUCTION if as_query else None)
    if engine == "ray":
        _refuse_options(("device", "threads", "no_truncate", "no_text"), "with --engine ray (use --cpus-per-worker and "
                        "--gpus-per-worker)")
        embed_files_on_ray(paths, model=model, instruction=instruction, dim=dim, max_tokens=max_tokens,
                           include=include, exclude=exclude, chunk_tokens=chunk_tokens, overlap=overlap, fmt=fmt,
                           output=output, verbose=obj.verbose, **ray_options)
        return
    _refuse_options(tuple(ray_options), "only with --engine ray")
    if fmt == "lance":
        raise UserError("--format lance needs --engine ray")
    fmt = fmt or "jsonl"
    output = Path(output) if output is not None else None
    counts = Counts()
    files = TextFiles(paths, include=include, exclude=exclude, counts=counts)
    check_output(output, fmt)
    embedder = Embedder(model, device=device, threads=threads, max_tokens=max_tokens, verbose=obj.verbose)
    chunker = Chunker(embedder, chunk_tokens or None, overlap)
    provenance = Provenance.of(model, embedder.model_file, instruction, text=not no_text)
    started = time.perf_counter()
    with open_output(output, fmt, provenance) as writer, token_progress() as show:
        for batch in embed_documents(embedder, files, chunker, counts=counts, dim=dim,
                                     instruction=instruction, truncate=not no_truncate):
            writer.write(batch.chunks, batch.vectors)
            show(counts)
        if not counts.chunks:
            raise UserError(f"nothing to embed: {counts.summary()}")
    click.echo("; ".join([f"embedded {counts.totals()} in {rate(counts, started)}", *counts.notes()]), err=True)


# --- --engine ray ------------------------------------------------------------------------------------


def _refuse_options(names: tuple[str, ...], when: str) -> None:
    """Options typed on the command line that do not apply are a mistake, not something to ignore."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = [param.opts[-1] for param in ctx.command.params
             if param.name in names and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE]
    if given:
        raise UserError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {when}")


def embed_files_on_ray(paths: tuple[str, ...], *, model: str, instruction: str | None, dim: int | None,
                       max_tokens: int, include: tuple[str, ...], exclude: tuple[str, ...], chunk_tokens: int,
                       overlap: int | None, fmt: str | None, output: str | None, verbose: bool, address: str | None,
                       workers: int | None, cpus_per_worker: int | None, gpus_per_worker: float,
                       text_column: str | None, id_column: str | None) -> None:
    """`embed-files --engine ray`: files or tables → actors on Ray Data → Parquet or LanceDB, resumable."""
    from ..distributed import ModelIdentity, embed_into, open_sink, ray_session, read_files, read_table, require_ray
    from ..distributed.pipeline import default_pool
    from ..files import Counts

    require_ray()
    if output is None:
        raise UserError("--engine ray writes a folder (Parquet) or a LanceDB table: give it with -o")
    if id_column and not text_column:
        raise UserError("--id-column applies only with --text-column")
    if text_column and (include or exclude):
        raise UserError("--glob and --exclude apply to folders of text files, not to tables (--text-column)")
    identity = ModelIdentity.of(model, dim)
    sink = open_sink(output, identity, fmt=fmt)         # another model's or dim's output: refused before Ray starts
    counts = Counts()
    with ray_session(address, verbose=verbose):
        if text_column:
            ds = read_table(paths, text_column=text_column, id_column=id_column)
        else:
            ds = read_files(paths, include=include, exclude=exclude, counts=counts)
        pool, cpus = default_pool(workers, cpus_per_worker)
        report = embed_into(ds, sink, counts=counts, text_column=text_column or "text",
                            id_column=id_column if text_column else "path", instruction=instruction,
                            chunk_tokens=chunk_tokens or None, overlap=overlap, max_tokens=max_tokens,
                            workers=pool, cpus_per_worker=cpus, gpus_per_worker=gpus_per_worker)
    if not report.rows_written and not report.rows_present:
        raise UserError(f"nothing to embed: {report.counts.summary()}")
    click.echo(report.summary(), err=True)
