"""The `qwen3-gguf` command line: one module per command family, each parsing its arguments,
calling the library and printing; `_common` holds the options and helpers they share."""

from __future__ import annotations

import click

from ._common import AppGroup, AppState
from .bench import bench
from .convert import convert
from .embed import embed, rerank
from .files import embed_files
from .info import info
from .mcp import mcp
from .models import models
from .mteb import mteb
from .quantize import imatrix, quantize, sweep
from .serve import serve
from .store import get, index, list_collections, search


@click.group(cls=AppGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qwen3-gguf")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log and full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Convert, inspect, quantize and run Qwen3 embedding and reranker models as GGUF on llama.cpp."""
    ctx.obj = AppState()
    ctx.obj.verbose = verbose


for command in (convert, info, embed, embed_files, rerank, models, index, search, get, list_collections, mcp, imatrix,
                quantize, sweep, bench, mteb):
    cli.add_command(command)
cli.add_command(serve)
