"""`qwen3-gguf quantize MODEL --fastest --min-cosine C`: the search's measurements, chosen for speed."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError


def check_fastest_target(target_bpw: float | None, target_size: str | None, min_cosine: float | None,
                         max_delta_p: float | None) -> None:
    """--fastest minimizes time under a fidelity floor; a size target would be a second objective."""
    if target_bpw is not None or target_size is not None:
        raise UserError("--fastest chooses the fastest file that meets a fidelity floor; drop --target-bpw and "
                        "--target-size and give --min-cosine C (rerankers --max-delta-p D)")
    if min_cosine is None and max_delta_p is None:
        raise UserError("--fastest needs a fidelity floor: --min-cosine C (embedding models) or --max-delta-p D "
                        "(rerankers)")


def run_fastest(obj, model: Path, output: Path, min_cosine: float | None, max_delta_p: float | None,
                budget_minutes: float | None, work_dir: Path | None, no_imatrix: bool, imatrix_file: Path | None,
                threads: int | None) -> None:
    """Search, choose for speed, build OUT.gguf with its recipe, and report predicted against measured."""
    from ..quantization import SearchTarget
    from ..quantization.fastest import build_fastest, fastest_quantization, format_fastest, speed_path
    from ..quantization.search import searched_paths
    from ._common import prepared_search

    target = SearchTarget(min_cosine=min_cosine, max_delta_p=max_delta_p)
    work_dir, say, settings = prepared_search(model, output, work_dir, no_imatrix, imatrix_file, budget_minutes,
                                              threads)
    result = fastest_quantization(model, target, settings, work_dir=work_dir, say=say, show_progress=True,
                                  verbose=obj.verbose)
    result = build_fastest(result, output, work_dir=work_dir, say=say, verbose=obj.verbose)
    click.echo(format_fastest(result))
    recipe_path, report_path = searched_paths(output)
    click.echo(f"wrote {output}, {recipe_path}, {report_path} and {speed_path(output)}", err=True)
