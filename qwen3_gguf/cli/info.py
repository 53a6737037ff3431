"""`qwen3-gguf info`: what a GGUF holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..progress import size_text


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as one JSON object.")
def info(model: Path, as_json: bool) -> None:
    """Describe a Qwen3 GGUF: kind, dimensions, pooling, EOS handling, tensor types, size."""
    from ..gguf_file import read_model_file

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
        "size": size_text(m.file_size),
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
