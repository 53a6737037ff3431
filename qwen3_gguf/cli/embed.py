"""`qwen3-gguf embed` and `qwen3-gguf rerank`: texts in, vectors or scores out."""

from __future__ import annotations

import json

import click

from ..catalog import default_embedding_model
from ._common import (
    AppState,
    embedding_options,
    max_tokens_option,
    model_option,
    one_line,
    runtime_options,
    stdin_lines,
)


@click.command()
@click.argument("texts", nargs=-1)
@model_option(default=default_embedding_model())
@embedding_options
@max_tokens_option
@click.option("--no-truncate", is_flag=True, help="Fail on a text over --max-tokens instead of truncating it.")
@runtime_options
@click.pass_obj
def embed(obj: AppState, texts: tuple[str, ...], model: str, as_query: bool, instruction: str | None,
          dim: int | None, max_tokens: int, no_truncate: bool, device: str, threads: int | None) -> None:
    """Embed TEXTS (or stdin, one text per line) and print one JSON object per text.

    For files and folders use `qwen3-gguf embed-files` (`embed --files` is the same command).
    """
    from ..embed import Embedder

    inputs = list(texts) or stdin_lines()
    embedder = Embedder(model, device=device, threads=threads, max_tokens=max_tokens, verbose=obj.verbose)
    vectors = embedder.encode(
        inputs, prompt_name="query" if as_query else None, instruction=instruction, dim=dim,
        truncate=not no_truncate, show_progress=True,
    )
    for number, (text, vector) in enumerate(zip(inputs, vectors)):
        record = {"index": number, "text": text, "dim": len(vector), "embedding": [round(float(x), 7) for x in vector]}
        click.echo(json.dumps(record, ensure_ascii=False))


@click.command()
@click.argument("documents", nargs=-1)
@model_option(kind="Reranker", required=True)
@click.option("-q", "--query", required=True, help="The query the documents are ranked against.")
@click.option("--instruction", help="Task description (default: web search retrieval).")
@click.option("-k", "--top-k", type=click.IntRange(min=1), help="Show only the best K documents.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@max_tokens_option
@runtime_options
@click.pass_obj
def rerank(obj: AppState, documents: tuple[str, ...], model: str, query: str, instruction: str | None,
           top_k: int | None, as_json: bool, max_tokens: int, device: str, threads: int | None) -> None:
    """Rank DOCUMENTS (or stdin, one per line) by relevance to --query, best first."""
    from ..rerank import Reranker

    docs = list(documents) or stdin_lines()
    reranker = Reranker(model, device=device, threads=threads, max_tokens=max_tokens, verbose=obj.verbose)
    ranked = reranker.rank(query, docs, top_k=top_k, instruction=instruction, show_progress=True)
    if as_json:
        for item in ranked:
            click.echo(json.dumps({"index": item.index, "score": item.score, "text": item.text}, ensure_ascii=False))
        return
    click.echo(f"{'rank':>4}  {'score':>8}  {'index':>5}  document")
    for position, item in enumerate(ranked, 1):
        click.echo(f"{position:>4}  {item.score:8.4f}  {item.index:>5}  {one_line(item.text, 80)}")
