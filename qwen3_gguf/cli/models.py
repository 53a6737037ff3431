"""`qwen3-gguf models`: the catalog, and what of it is cached."""

from __future__ import annotations

import click

from ._common import size_text


@click.command()
@click.option("--download", "name", metavar="NAME[:QUANT]", help="Fetch this model into the Hugging Face cache.")
def models(name: str | None) -> None:
    """List the catalog's models and which are cached; --download fetches one."""
    from ..catalog import cached_path, download, load_catalog, lookup

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
            where = f"cached {size_text(path.stat().st_size)}" if path else "-"
            rows.append((entry.spec + default, model.kind, str(model.dimension), where))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    click.echo(f"{'name':<{widths[0]}}  {'kind':<{widths[1]}}  {'dim':>{widths[2]}}  cached")
    for row in rows:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
