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
from ._common import AppState, max_tokens_option, model_option, rate, runtime_options, token_progress


@click.command("embed-files")
@click.argument("paths", nargs=-1, required=True)
@model_option(default=default_embedding_model())
@click.option("--query", "as_query", is_flag=True,
              help="Embed the chunks as search queries (with the default retrieval instruction).")
@click.option("--instruction", help="Embed the chunks as queries with this task description.")
@click.option("--dim", type=int, help="Keep the first DIM Matryoshka dimensions (renormalized).")
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
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl",
              show_default=True, help="npy writes a float32 matrix plus a .jsonl of its rows.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here instead of stdout.")
@runtime_options
@click.pass_obj
def embed_files(obj: AppState, paths: tuple[str, ...], model: str, as_query: bool, instruction: str | None,
                dim: int | None, max_tokens: int, no_truncate: bool, include: tuple[str, ...],
                exclude: tuple[str, ...], chunk_tokens: int, overlap: int | None, fmt: str, output: Path | None,
                device: str, threads: int | None) -> None:
    """Embed the text files under PATHS (files, folders walked recursively, or - for stdin) chunk by
    chunk and write one record per chunk (see --format)."""
    from ..embed import Embedder
    from ..files import Chunker, Counts, TextFiles, embed_documents
    from ..files.outputs import check_output, open_output
    from ..prompts import DEFAULT_INSTRUCTION

    instruction = instruction or (DEFAULT_INSTRUCTION if as_query else None)
    counts = Counts()
    files = TextFiles(paths, include=include, exclude=exclude, counts=counts)
    check_output(output, fmt)
    embedder = Embedder(model, device=device, threads=threads, max_tokens=max_tokens, verbose=obj.verbose)
    chunker = Chunker(embedder, chunk_tokens or None, overlap)
    started = time.perf_counter()
    with open_output(output, fmt) as writer, token_progress() as show:
        for batch in embed_documents(embedder, files, chunker, counts=counts, dim=dim,
                                     instruction=instruction, truncate=not no_truncate):
            writer.write(batch.chunks, batch.vectors)
            show(counts)
        if not counts.chunks:
            raise UserError(f"nothing to embed: {counts.summary()}")
    click.echo("; ".join([f"embedded {counts.totals()} in {rate(counts, started)}", *counts.notes()]), err=True)
