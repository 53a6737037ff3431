"""The `qwen3-gguf` command line: parses arguments, calls the library, prints results."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

from .catalog import default_embedding_model
from .cli_files import embed_files, files_options, index, models, refuse_file_options, search
from .convert import KINDS, OUTTYPES
from .errors import UserError

DEVICES = click.Choice(["auto", "cpu", "gpu"])


class _Context:
    verbose = False


class _Group(click.Group):
    """Turns a UserError into one line on stderr and exit code 2 (a traceback with --verbose)."""

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)  # every truncation is told
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except UserError as exc:
                if ctx.obj is not None and ctx.obj.verbose:
                    raise
                click.echo(f"Error: {exc}", err=True)
                ctx.exit(2)
            except KeyboardInterrupt:
                click.echo("Interrupted; nothing partial was left behind.", err=True)
                ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qwen3-gguf")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log and full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Convert, inspect and run Qwen3 embedding and reranker models as GGUF on llama.cpp."""
    ctx.obj = _Context()
    ctx.obj.verbose = verbose


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The GGUF file to write.")
@click.option("--outtype", type=click.Choice(OUTTYPES), default="f16", show_default=True,
              help="Precision of the written weights.")
@click.option("--kind", type=click.Choice(["auto", *KINDS]), default="auto", show_default=True,
              help="Model kind; auto detects it from the checkpoint.")
def convert(src: Path, out: Path, outtype: str, kind: str) -> None:
    """Convert a Hugging Face Qwen3 checkpoint folder SRC to GGUF."""
    from .convert import convert_checkpoint

    result = convert_checkpoint(src, out, outtype=outtype, kind=kind, progress=True)
    click.echo(f"{result.kind} model ({result.kind_reason})", err=True)
    click.echo(f"wrote {result.path} ({result.outtype}, {result.n_tensors} tensors, {_size(result.n_bytes)})",
               err=True)


@cli.command()
@click.argument("texts", nargs=-1)
@click.option("-m", "--model", default=default_embedding_model(), show_default=True,
              help="Embedding GGUF file or catalog name (see qwen3-gguf models).")
@click.option("--query", "as_query", is_flag=True,
              help="Embed the texts as search queries (with the default retrieval instruction).")
@click.option("--instruction", help="Embed the texts as queries with this task description.")
@click.option("--dim", type=int, help="Keep the first DIM Matryoshka dimensions (renormalized).")
@click.option("--max-tokens", type=int, default=8192, show_default=True,
              help="Longer texts are truncated (keeping the EOS).")
@click.option("--no-truncate", is_flag=True, help="Fail on a text over --max-tokens instead of truncating it.")
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
@files_options
@click.pass_obj
def embed(obj: _Context, texts: tuple[str, ...], model: str, as_query: bool, instruction: str | None,
          dim: int | None, max_tokens: int, no_truncate: bool, device: str, threads: int | None,
          files_mode: bool, **file_options) -> None:
    """Embed TEXTS (or stdin, one text per line) and print one JSON object per text.

    With --files, the arguments are files and folders: each text file is split into chunks
    and one record per chunk is written (see --format).
    """
    from .embed import Embedder
    from .prompts import DEFAULT_INSTRUCTION

    if files_mode:
        return embed_files(texts, model=model, instruction=instruction or (DEFAULT_INSTRUCTION if as_query else None),
                           dim=dim, max_tokens=max_tokens, truncate=not no_truncate, device=device,
                           threads=threads, verbose=obj.verbose, **file_options)
    refuse_file_options(click.get_current_context())
    inputs = list(texts) or _stdin_lines()
    embedder = Embedder(model, device=device, threads=threads, max_tokens=max_tokens, verbose=obj.verbose)
    vectors = embedder.encode(
        inputs, prompt_name="query" if as_query else None, instruction=instruction, dim=dim,
        truncate=not no_truncate, show_progress=True,
    )
    for number, (text, vector) in enumerate(zip(inputs, vectors)):
        record = {"index": number, "text": text, "dim": len(vector), "embedding": [round(float(x), 7) for x in vector]}
        click.echo(json.dumps(record, ensure_ascii=False))


@cli.command()
@click.argument("documents", nargs=-1)
@click.option("-m", "--model", required=True, help="Reranker GGUF file or catalog name (see qwen3-gguf models).")
@click.option("-q", "--query", required=True, help="The query the documents are ranked against.")
@click.option("--instruction", help="Task description (default: web search retrieval).")
@click.option("-k", "--top-k", type=click.IntRange(min=1), help="Show only the best K documents.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option("--max-tokens", type=int, default=8192, show_default=True,
              help="Longer prompts have their document truncated.")
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
@click.pass_obj
def rerank(obj: _Context, documents: tuple[str, ...], model: str, query: str, instruction: str | None,
           top_k: int | None, as_json: bool, max_tokens: int, device: str, threads: int | None) -> None:
    """Rank DOCUMENTS (or stdin, one per line) by relevance to --query, best first."""
    from .rerank import Reranker

    docs = list(documents) or _stdin_lines()
    reranker = Reranker(model, device=device, threads=threads, max_tokens=max_tokens, verbose=obj.verbose)
    ranked = reranker.rank(query, docs, top_k=top_k, instruction=instruction, show_progress=True)
    if as_json:
        for item in ranked:
            click.echo(json.dumps({"index": item.index, "score": item.score, "text": item.text}, ensure_ascii=False))
        return
    click.echo(f"{'rank':>4}  {'score':>8}  {'index':>5}  document")
    for position, item in enumerate(ranked, 1):
        click.echo(f"{position:>4}  {item.score:8.4f}  {item.index:>5}  {_one_line(item.text, 80)}")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as one JSON object.")
def info(model: Path, as_json: bool) -> None:
    """Describe a Qwen3 GGUF: kind, dimensions, pooling, EOS handling, tensor types, size."""
    from .gguf_file import read_model_file

    m = read_model_file(model)
    facts = {
        "file": str(m.path),
        "name": m.name,
        "architecture": "qwen3",
        "kind": m.kind,
        "embedding length": m.embedding_length,
        "layers": m.block_count,
        "attention heads": f"{m.head_count} (kv {m.head_count_kv})",
        "feed-forward length": m.feed_forward_length,
        "context length": m.context_length,
        "pooling": m.pooling or "not set (the runtime pools the last token)",
        "EOS handling": _eos_handling(m),
        "file type": m.file_type,
        "tensor types": ", ".join(f"{name} ×{count}" for name, count in m.tensor_types.items()),
        "parameters": f"{m.n_params:,}",
        "size": _size(m.file_size),
        "bits per weight": f"{m.bits_per_weight:.2f}",
    }
    if as_json:
        click.echo(json.dumps({**facts, "tensor types": m.tensor_types, "parameters": m.n_params,
                               "size": m.file_size, "bits per weight": round(m.bits_per_weight, 4)}))
        return
    width = max(map(len, facts))
    for key, value in facts.items():
        click.echo(f"{key:<{width}}  {value}")


def _eos_handling(m) -> str:
    if m.kind == "reranker":
        return "none (the rerank prompt ends the sequence)"
    if m.add_eos_token and m.eos_token == "<|endoftext|>":
        return "appends <|endoftext|> (file says add_eos_token)"
    return "file lacks add_eos_token/<|endoftext|> EOS; the runtime appends <|endoftext|> itself"


def _stdin_lines() -> list[str]:
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("no input: pass texts as arguments or pipe them on stdin, one per line")
    lines = [line.rstrip("\r\n") for line in sys.stdin]
    lines = [line for line in lines if line]
    if not lines:
        raise UserError("stdin held no text (empty lines are skipped)")
    return lines


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"Warning: {message}", err=True)


cli.add_command(models)
cli.add_command(index)
cli.add_command(search)

from .cli_quantize import imatrix, quantize, sweep  # noqa: E402 - registered after the group is defined

cli.add_command(imatrix)
cli.add_command(quantize)
cli.add_command(sweep)
