"""`qwen3-gguf index`, `search`, `get` and `collections`: an incremental SQLite collection of file chunks,
searched by keywords and meaning and read back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..errors import UserError
from ..files.fusion import DEFAULT_FUSION
from ..files.walk import DEFAULT_CHUNK_TOKENS
from ._common import AppState, display_path, model_option, one_line, rate, runtime_options, token_progress

COLLECTION_HELP = "A named collection in your data folder (see qwen3-gguf collections) [default: 'default']."


def collection_option(command):
    return click.option("-c", "--collection", "name", metavar="NAME", help=COLLECTION_HELP)(command)


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--db", type=click.Path(path_type=Path), help="The SQLite collection to create or update, "
              "anywhere (instead of a named one).")
@collection_option
@click.option("--import", "imports", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Store vectors embedded elsewhere, without re-embedding: a .jsonl or .parquet file as "
                   "embed-files writes it (repeatable). Records carry their text and model; records that name no "
                   "model are taken to be of -m's (or the collection's) model.")
@model_option(help="Embedding GGUF or catalog name [default: the collection's model, "
                   "or the catalog default for a new collection].")
@click.option("--glob", "include", multiple=True, metavar="PATTERN", help="Index only files matching PATTERN.")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Skip files and folders matching PATTERN.")
@click.option("--chunk-tokens", type=click.IntRange(min=1), default=DEFAULT_CHUNK_TOKENS, show_default=True)
@click.option("--overlap", type=click.IntRange(min=0), help="[default: chunk-tokens / 8]")
@click.option("--dim", type=int, help="Store the first DIM Matryoshka dimensions (fixed per collection).")
@click.option("--instruction", help="The task description search queries get (fixed per collection).")
@click.option("--prune", is_flag=True, help="Remove files from the collection that no longer exist.")
@click.option("--watch", is_flag=True, help="Then keep following PATHS: re-index after each batch of changes "
              "(new, edited and deleted files), one line per batch, until Ctrl-C.")
@runtime_options
@click.pass_obj
def index(obj: AppState, paths, db, name, imports, model, include, exclude, chunk_tokens, overlap, dim, instruction,
          prune, watch, device, threads):
    """Embed the text files under PATHS into a searchable collection; unchanged files are skipped.

    One process writes a collection at a time: an index started while another is writing the same
    --db waits for it to finish (saying so), then embeds only what the first one did not. Searches
    run meanwhile answer from what is committed. An interrupted index keeps every finished batch
    of files; running it again goes on from there.
    """
    from ..files import collections
    from ..files.records import read_records
    from ..files.store import Collection

    if not paths and not imports:
        raise UserError("name the files or folders to index, or --import FILE")
    if watch and not paths:
        raise UserError("--watch follows the files and folders named: give PATHS")
    db = collections.resolve(db, name)
    started = time.perf_counter()
    with Collection(db, model=model, dim=dim, instruction=instruction, device=device, threads=threads,
                    verbose=obj.verbose, on_wait=lambda message: click.echo(message, err=True)) as collection:
        notes = []
        for source in imports:
            added = collection.add(read_records(source), model=model, written_at=source.stat().st_mtime)
            notes.append(f"imported {added.chunks} chunks of {added.documents} files from {source} "
                         f"({added.verified} match the files on disk)")
        if watch:
            _watch(collection, paths, db, include=include, exclude=exclude, chunk_tokens=chunk_tokens,
                   overlap=overlap)
            return
        if paths:
            with token_progress() as show:
                report = collection.index(paths, include=include, exclude=exclude, chunk_tokens=chunk_tokens,
                                          overlap=overlap, prune=prune,
                                          on_batch=lambda batch, report: show(report.counts))
            counts = report.counts
            notes += [f"indexed {report.embedded} new or changed files ({counts.chunks} chunks, {counts.tokens} "
                      f"tokens) in {rate(counts, started)}", f"{report.unchanged} unchanged, {report.pruned} pruned",
                      *counts.notes()]
        elif prune:
            notes.append(f"{collection.prune()} pruned")
        click.echo("; ".join([*notes, f"{db} holds {collection.document_count} files, {len(collection)} chunks"]),
                   err=True)


def _watch(collection, paths, db: Path, **index_options) -> None:
    """`index --watch`: one line per batch on stderr; Ctrl-C stops after the last finished batch."""
    from ..files.watching import watch

    def say(batch) -> None:
        report = batch.report
        what = "indexed" if batch.number == 0 else f"batch {batch.number}: {batch.changes} changes,"
        click.echo(f"{what} {report.embedded} new or changed files ({report.counts.chunks} chunks), "
                   f"{report.pruned} removed; {db} holds {batch.files} files, {batch.chunks} chunks"
                   + ("; watching for changes (Ctrl-C stops)" if batch.number == 0 else ""), err=True)

    try:
        batches = watch(collection, paths, on_batch=say, **index_options)
    except KeyboardInterrupt:
        click.echo(f"stopped watching; every finished batch is in {db}", err=True)
        return
    click.echo(f"stopped watching after {batches} batches", err=True)


MODES = ("hybrid", "vector", "keyword")


@click.command()
@click.argument("query")
@click.option("--db", help="The SQLite collection, anywhere (instead of a named one), or lance://PATH for a "
                           "LanceDB table of embed-files --engine ray.")
@collection_option
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--mode", type=click.Choice(MODES), help="hybrid: keyword and vector rankings fused (the default); "
              "vector: by cosine, exact; keyword: by BM25 over the chunk text, no model loaded. "
              "A lance:// table has vector search only.")
@click.option("--rrf-k", type=click.FloatRange(min=0), default=DEFAULT_FUSION.k, show_default=True,
              help="Hybrid: the reciprocal rank fusion constant (a larger k flattens the ranks' weights).")
@click.option("--keyword-weight", type=click.FloatRange(min=0), default=DEFAULT_FUSION.keyword_weight,
              show_default=True, help="Hybrid: the weight of the keyword (BM25) ranking.")
@click.option("--vector-weight", type=click.FloatRange(min=0), default=DEFAULT_FUSION.vector_weight,
              show_default=True, help="Hybrid: the weight of the vector (cosine) ranking.")
@model_option(help="Embedding GGUF or catalog name [default: the collection's model].")
@click.option("--rerank-model", help="Rerank the best candidates with this reranker (GGUF or catalog name).")
@click.option("--rerank-top", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many of the best candidates the reranker scores.")
@click.option("--no-instruction", is_flag=True, help="Embed the query as plain text, like the documents "
                                                     "(find passages similar to a passage).")
@click.option("--path-glob", metavar="PATTERN", help="Only chunks of files whose path matches PATTERN, e.g. "
              "'*.md' or 'notes/*' (a pattern not starting with / or * matches at any folder depth).")
@click.option("--min-score", type=float, help="Drop hits scoring below this (the score printed: fused, cosine, "
              "BM25, or P(yes) when reranked).")
@click.option("--files", "files_only", is_flag=True,
              help="Print each matching file once, in the order of its best hit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines (with each hit's BM25 and vector ranks "
                                                      "and fused score).")
@runtime_options
@click.pass_obj
def search(obj: AppState, query, db, name, k, mode, rrf_k, keyword_weight, vector_weight, model, rerank_model,
           rerank_top, no_instruction, path_glob, min_score, files_only, as_json, device, threads):
    """Find the chunks of a collection that answer QUERY best, best first.

    QUERY is searched as plain text in every mode: quotes, -, *, : and parentheses are not an
    operator language. Print a hit's whole file or chunk with: qwen3-gguf get PATH[#CHUNK].
    """
    from ..files import collections
    from ..files.fusion import Fusion
    from ..files.store import Collection

    if not query.strip():
        raise UserError("the query is empty")
    if db is not None and db.startswith("lance://"):
        from ..distributed.lance import LanceCollection

        if mode not in (None, "vector"):
            raise UserError(f"--mode {mode}: a lance:// table has vector search only")
        opened = LanceCollection(db, model=model, device=device, threads=threads, verbose=obj.verbose)
        options = {}
    else:
        opened = Collection(collections.resolve(db, name, must_exist=True), model=model, create=False,
                            device=device, threads=threads, verbose=obj.verbose)
        options = {"mode": mode or "hybrid", "fusion": Fusion(rrf_k, keyword_weight, vector_weight)}
    with opened as collection:
        reranker = None
        if rerank_model:
            from ..rerank import Reranker

            reranker = Reranker(rerank_model, device=device, threads=threads, verbose=obj.verbose)
        hits = collection.search(query, k=k, use_instruction=not no_instruction, reranker=reranker,
                                 rerank_top=rerank_top, path_glob=path_glob, min_score=min_score, **options)
    if files_only:
        best = {}
        for hit in hits:
            best.setdefault(hit.path, hit)
        for path, hit in best.items():
            click.echo(json.dumps({"path": path, "score": hit.score}) if as_json else display_path(path))
        return
    if as_json:
        for hit in hits:
            click.echo(json.dumps({"path": hit.path, "chunk": hit.chunk, "start": hit.start, "end": hit.end,
                                   "score": hit.score, "cosine": hit.cosine, "bm25": hit.bm25,
                                   "keyword_rank": hit.keyword_rank, "vector_rank": hit.vector_rank,
                                   "fused": hit.fused, "text": hit.text}, ensure_ascii=False))
        return
    for rank, hit in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {hit.score:.4f}  {display_path(hit.path)}#{hit.chunk}  {one_line(hit.text, 70)}")


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--db", help="The SQLite collection, anywhere (instead of a named one).")
@collection_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: path, chunk (null for a whole file), "
                                                      "start, end, text.")
def get(names, db, name, as_json):
    """Print stored text of a collection: a file by PATH, a chunk by PATH#CHUNK (as search prints
    hits), or every file matching a glob ('notes/*.md').

    Each passage is headed by a line `==> PATH[#CHUNK] [START:END] <==` (character offsets into
    the file); --json prints one JSON line per passage instead.
    """
    from ..files import collections
    from ..files.store import Collection

    with Collection(collections.resolve(db, name, must_exist=True), create=False) as collection:
        passages = [passage for name in names for passage in collection.get(name)]
    for passage in passages:
        if as_json:
            click.echo(json.dumps({"path": passage.path, "chunk": passage.chunk, "start": passage.start,
                                   "end": passage.end, "text": passage.text}, ensure_ascii=False))
            continue
        chunk = "" if passage.chunk is None else f"#{passage.chunk}"
        click.echo(f"==> {display_path(passage.path)}{chunk} [{passage.start}:{passage.end}] <==")
        click.echo(passage.text, nl=not passage.text.endswith("\n"))


@click.command("collections")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def list_collections(as_json: bool) -> None:
    """List the named collections (index -c NAME) with their model, files, chunks and size."""
    from ..files import collections

    entries = collections.listing()
    if as_json:
        for entry in entries:
            click.echo(json.dumps(vars(entry), ensure_ascii=False))
        return
    if not entries:
        click.echo(f"no collections in {collections.home()} yet; create one with: qwen3-gguf index PATH... -c NAME")
        return
    rows = [("NAME", "MODEL", "DIM", "FILES", "CHUNKS", "SIZE")]
    rows += [(e.name, Path(e.model).name, str(e.dim or "-"), str(e.files), str(e.chunks), _size(e.bytes))
             for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    scaled, unit = n_bytes / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, larger
    return f"{scaled:.1f} {unit}"
