"""`qwen3-gguf convert`: a Hugging Face checkpoint folder to GGUF."""

from __future__ import annotations

from pathlib import Path

import click

from ..convert import KINDS, OUTTYPES
from ..progress import size_text


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The GGUF file to write.")
@click.option("--outtype", type=click.Choice(OUTTYPES), default="f16", show_default=True,
              help="Precision of the written weights.")
@click.option("--kind", type=click.Choice(["auto", *KINDS]), default="auto", show_default=True,
              help="Model kind; auto detects it from the checkpoint.")
def convert(src: Path, out: Path, outtype: str, kind: str) -> None:
    """Convert a Hugging Face Qwen3 checkpoint folder SRC to GGUF."""
    from ..convert import convert_checkpoint

    result = convert_checkpoint(src, out, outtype=outtype, kind=kind, progress=True)
    click.echo(f"{result.kind} model ({result.kind_reason})", err=True)
    click.echo(f"wrote {result.path} ({result.outtype}, {result.n_tensors} tensors, {size_text(result.n_bytes)})",
               err=True)
