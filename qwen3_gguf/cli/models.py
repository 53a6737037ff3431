"""`qwen3-gguf models`: the catalog (published GGUFs, cached or not, and builds); fetch, build, remove."""

from __future__ import annotations

from datetime import datetime

import click

from ..errors import UserError
from ..progress import size_text
from ._common import runtime_options


@click.command()
@click.option("--download", "download_name", metavar="NAME", help="Fetch a published GGUF into the Hugging Face cache.")
@click.option("--build", "build_name", metavar="MODEL:TYPE[+RECIPE]",
              help="Build a name nobody published (download the checkpoint, convert, imatrix, quantize) "
                   "without running it; prints the file.")
@click.option("--remove", "remove_name", metavar="NAME",
              help="Delete a build (with its converted GGUF when no other build of the model uses it).")
@click.option("--imatrix-chunks", type=click.IntRange(min=1),
              help="With --build: collect the importance matrix on at most this many 512-token chunks of the "
                   "calibration set [default: all of it].")
@runtime_options
@click.pass_obj
def models(obj, download_name: str | None, build_name: str | None, remove_name: str | None,
           imatrix_chunks: int | None, device: str, threads: int | None) -> None:
    """List the catalog: published GGUFs (cached in the Hugging Face cache or not) and the builds.

    A name is MODEL[:TYPE[+RECIPE]]: TYPE any llama.cpp type or hybrid (q4_k_m, iq4_xs, bf16_q8_0),
    RECIPE a shipped recipe (bump-edges). A name with no published GGUF is built on first use, or
    with --build, into the build cache ($QWEN3_GGUF_BUILD_CACHE, default
    ~/.cache/qwen3-gguf/builds). Types under 6 bits per weight get an importance matrix collected
    on the shipped calibration set.
    """
    from ..builds import BuildSettings, build_model, remove_build
    from ..catalog import download, lookup

    if sum(name is not None for name in (download_name, build_name, remove_name)) > 1:
        raise UserError("give one of --download, --build and --remove at a time")
    if imatrix_chunks is not None and build_name is None:
        raise UserError("--imatrix-chunks applies to --build only")
    if download_name:
        entry = lookup(download_name)
        if entry.published is None:
            raise UserError(f"{entry.spec} has no published GGUF; build it with: "
                            f"qwen3-gguf models --build {entry.spec}")
        click.echo(str(download(entry)))
    elif build_name:
        settings = BuildSettings(device=device, threads=threads, imatrix_chunks=imatrix_chunks, verbose=obj.verbose)
        built = build_model(build_name, settings, say=lambda line: click.echo(line, err=True))
        click.echo(str(built.path))
    elif remove_name:
        freed = remove_build(remove_name)
        click.echo(f"removed {lookup(remove_name).spec} ({size_text(freed)} freed)")
    else:
        _list_models()


def _list_models() -> None:
    from ..catalog import build_cache_dir, cached_path, list_builds, load_catalog, lookup

    builds = list_builds()
    rows = []
    for model in load_catalog().values():
        for quant in model.quants:
            entry = lookup(f"{model.name}:{quant}")
            path = cached_path(entry)
            size, when = (size_text(path.stat().st_size), _when(path.stat().st_mtime)) if path else ("-", "-")
            rows.append((entry.spec, model.kind, str(model.dimension), "cached" if path else "-", size, when,
                         quant == model.default_quant))
        built_here = [b for b in builds if b["name"].partition(":")[0] == model.name]
        for manifest in built_here:
            rows.append((manifest["name"], model.kind, str(model.dimension), "built", size_text(manifest["size"]),
                         _when(datetime.fromisoformat(manifest["created"]).timestamp()),
                         manifest["name"] == f"{model.name}:{model.default_quant}"))
        if not model.quants and not built_here:
            rows.append((f"{model.name}:{model.default_quant}", model.kind, str(model.dimension), "to-build", "-",
                         "-", True))
    head = ("name", "kind", "dim", "status", "size", "when")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        default = "  (default)" if row is not head and row[6] else ""
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:<{widths[3]}}  "
                   f"{row[4]:>{widths[4]}}  {row[5]:<{widths[5]}}{default}".rstrip())
    click.echo(f"\nAny other MODEL:TYPE[+RECIPE] is built on first use (or with --build) in {build_cache_dir()}.")


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")
