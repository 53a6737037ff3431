"""The file commands of `qwen3-gguf`: `embed --files`, `index`, `search`, and `models`."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import click

from .errors import UserError
from .files import DEFAULT_CHUNK_TOKENS
from .outputs import FORMATS

DEVICES = click.Choice(["auto", "cpu", "gpu"])
FILE_OPTION_NAMES = ("include", "exclude", "chunk_tokens", "overlap", "fmt", "output")


def files_options(command):
    """The options `embed` takes in --files mode (applied to the embed command in cli.py)."""
    for option in reversed([
        click.option("--files", "files_mode", is_flag=True,
                     help="Treat the arguments as PATHs: files, folders (recursive) or - for stdin."),
        click.option("--glob", "include", multiple=True, metavar="PATTERN",
                     help="In folders, embed only files matching PATTERN (repeatable), e.g. '*.md'."),
        click.option("--exclude", multiple=True, metavar="PATTERN",
                     help="In folders, skip files and folders matching PATTERN (repeatable)."),
        click.option("--chunk-tokens", type=click.IntRange(min=0), default=DEFAULT_CHUNK_TOKENS, show_default=True,
                     help="Split files into chunks of this many tokens; 0 embeds each file whole (truncated)."),
        click.option("--overlap", type=click.IntRange(min=0), help="Tokens shared by neighbouring chunks "
                     "[default: chunk-tokens / 8]."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl",
                     show_default=True, help="npy writes a float32 matrix plus a .jsonl of its rows."),
        click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here instead of stdout."),
    ]):
        command = option(command)
    return command


def refuse_file_options(ctx: click.Context) -> None:
    """Options of --files mode given without --files are a mistake, not something to ignore."""
    from click.core import ParameterSource

    given = [param.opts[0] for param in ctx.command.params
             if param.name in FILE_OPTION_NAMES and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE]
    if given:
        raise UserError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --files")


def embed_files(paths: tuple[str, ...], *, model: str, instruction: str | None, dim: int | None,
                max_tokens: int, truncate: bool, device: str, threads: int | None, verbose: bool,
                include: tuple[str, ...], exclude: tuple[str, ...], chunk_tokens: int, overlap: int | None,
                fmt: str, output: Path | None) -> None:
    """`qwen3-gguf embed --files PATH...`: embed text files chunk by chunk and write the vectors."""
    from .embed import Embedder
    from .files import Chunker, Counts, TextFiles, embed_documents
    from .outputs import check_output, open_output

    counts = Counts()
    files = TextFiles(paths, include=include, exclude=exclude, counts=counts)
    check_output(output, fmt)
    embedder = Embedder(model, device=device, threads=threads, max_tokens=max_tokens, verbose=verbose)
    chunker = Chunker(embedder, chunk_tokens or None, overlap)
    started = time.perf_counter()
    with open_output(output, fmt) as writer, _progress() as show:
        for batch in embed_documents(embedder, files, chunker, counts=counts, dim=dim,
                                     instruction=instruction, truncate=truncate):
            writer.write(batch.chunks, batch.vectors)
            show(counts)
        if not counts.chunks:
            raise UserError(f"nothing to embed: {counts.summary()}")
    click.echo("; ".join([f"embedded {counts.totals()} in {_rate(counts, started)}", *counts.notes()]), err=True)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--db", type=click.Path(path_type=Path), default="vectors.db", show_default=True,
              help="The SQLite collection to create or update.")
@click.option("-m", "--model", help="Embedding GGUF or catalog name [default: the collection's model, "
                                    "or the catalog default for a new collection].")
@click.option("--glob", "include", multiple=True, metavar="PATTERN", help="Index only files matching PATTERN.")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Skip files and folders matching PATTERN.")
@click.option("--chunk-tokens", type=click.IntRange(min=1), default=DEFAULT_CHUNK_TOKENS, show_default=True)
@click.option("--overlap", type=click.IntRange(min=0), help="[default: chunk-tokens / 8]")
@click.option("--dim", type=int, help="Store the first DIM Matryoshka dimensions (fixed per collection).")
@click.option("--instruction", help="The task description search queries get (fixed per collection).")
@click.option("--prune", is_flag=True, help="Remove files from the collection that no longer exist.")
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
@click.pass_obj
def index(obj, paths, db, model, include, exclude, chunk_tokens, overlap, dim, instruction, prune, device, threads):
    """Embed the text files under PATHS into a searchable collection; unchanged files are skipped."""
    from .store import Collection

    started = time.perf_counter()
    with Collection(db, model=model, dim=dim, instruction=instruction, device=device, threads=threads,
                    verbose=obj.verbose) as collection, _progress() as show:
        report = collection.index(paths, include=include, exclude=exclude, chunk_tokens=chunk_tokens,
                                  overlap=overlap, prune=prune, on_batch=lambda batch, report: show(report.counts))
        counts = report.counts
        click.echo("; ".join([
            f"indexed {report.embedded} new or changed files ({counts.chunks} chunks, {counts.tokens} tokens) "
            f"in {_rate(counts, started)}",
            f"{report.unchanged} unchanged, {report.pruned} pruned",
            *counts.notes(),
            f"{db} holds {collection.document_count} files, {len(collection)} chunks",
        ]), err=True)


@click.command()
@click.argument("query")
@click.option("--db", type=click.Path(path_type=Path), default="vectors.db", show_default=True)
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("-m", "--model", help="Embedding GGUF or catalog name [default: the collection's model].")
@click.option("--rerank-model", help="Rerank the best candidates with this reranker (GGUF or catalog name).")
@click.option("--rerank-top", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many cosine candidates the reranker scores.")
@click.option("--no-instruction", is_flag=True, help="Embed the query as plain text, like the documents "
                                                     "(find passages similar to a passage).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
@click.pass_obj
def search(obj, query, db, k, model, rerank_model, rerank_top, no_instruction, as_json, device, threads):
    """Find the chunks of a collection closest to QUERY, best first."""
    from .cli import _one_line
    from .store import Collection

    with Collection(db, model=model, create=False, device=device, threads=threads, verbose=obj.verbose) as collection:
        reranker = None
        if rerank_model:
            from .rerank import Reranker

            reranker = Reranker(rerank_model, device=device, threads=threads, verbose=obj.verbose)
        hits = collection.search(query, k=k, use_instruction=not no_instruction, reranker=reranker,
                                 rerank_top=rerank_top)
    if as_json:
        for hit in hits:
            click.echo(json.dumps({"path": hit.path, "chunk": hit.chunk, "start": hit.start, "end": hit.end,
                                   "score": hit.score, "cosine": hit.cosine, "text": hit.text}, ensure_ascii=False))
        return
    for rank, hit in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {hit.score:.4f}  {_display_path(hit.path)}#{hit.chunk}  {_one_line(hit.text, 70)}")


@click.command()
@click.option("--download", "name", metavar="NAME[:QUANT]", help="Fetch this model into the Hugging Face cache.")
def models(name: str | None) -> None:
    """List the catalog's models and which are cached; --download fetches one."""
    from .catalog import cached_path, download, load_catalog, lookup
    from .cli import _size

    if name:
        entry = lookup(name)
        click.echo(str(download(entry)))
        return
    rows = []
    for model in load_catalog().values():
        if not model.quants:
            rows.append((model.name, model.kind, str(model.dimension), f"no published GGUF; convert {model.source}"))
        for quant in model.quants:
            entry = lookup(f"{model.name}:{quant}")
            path = cached_path(entry)
            default = " (default)" if quant == model.default_quant else ""
            where = f"cached {_size(path.stat().st_size)}" if path else "-"
            rows.append((entry.spec + default, model.kind, str(model.dimension), where))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    click.echo(f"{'name':<{widths[0]}}  {'kind':<{widths[1]}}  {'dim':>{widths[2]}}  cached")
    for row in rows:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")


# --- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress():
    """A tokens/s bar on stderr (on a terminal); call the function it gives after each batch."""
    from .progress import progress_bar

    with progress_bar(total=None, enabled=True, unit="tok", desc="embedding") as bar:
        shown = 0

        def show(counts) -> None:
            nonlocal shown
            if bar is not None:
                bar.update(counts.tokens - shown)
                bar.set_postfix(files=counts.files, chunks=counts.chunks, refresh=False)
            shown = counts.tokens

        yield show


def _rate(counts, started: float) -> str:
    seconds = time.perf_counter() - started
    return f"{seconds:.1f} s, {counts.tokens / max(seconds, 1e-9):.0f} tokens/s"


def _display_path(path: str) -> str:
    relative = Path(path)
    try:
        return str(relative.relative_to(Path.cwd()))
    except ValueError:
        return path
