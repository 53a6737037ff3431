"""`qwen3-gguf imatrix` and `qwen3-gguf quantize`: parse arguments, call the library, print."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ._common import runtime_options, threads_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The imatrix GGUF to write.")
@click.option("--calibration", multiple=True, type=click.Path(path_type=Path),
              help="Calibration text: JSONL records with 'query' and/or 'document', or plain text "
                   "(one document per paragraph). Repeatable. Default: the shipped multilingual set.")
@click.option("--chunk-tokens", type=int, default=512, show_default=True,
              help="Tokens per llama.cpp decode (the imatrix chunk size); longer inputs are cut.")
@click.option("--chunks", type=int, help="Stop after this many chunks (default: all of the calibration).")
@runtime_options
@click.pass_obj
def imatrix(obj, model: Path, output: Path, calibration: tuple[Path, ...], chunk_tokens: int,
            chunks: int | None, device: str, threads: int | None) -> None:
    """Collect an importance matrix for MODEL by running calibration text through llama.cpp.

    The text is formatted as the runtime formats it: queries in the Qwen3 instruction format and
    documents for an embedding model, full rerank prompts for a reranker.
    """
    from ..atomic import ensure_writable
    from ..quantization import collect_imatrix, write_imatrix

    ensure_writable(output)
    result = collect_imatrix(model, calibration, chunk_tokens=chunk_tokens, max_chunks=chunks, device=device,
                             threads=threads, verbose=obj.verbose, show_progress=True)
    write_imatrix(result.matrix, output)
    click.echo(f"wrote {output}: {len(result.matrix.sums)} tensors, {result.matrix.chunk_count} chunks, "
               f"{result.n_tokens:,} tokens in {result.seconds:.1f} s "
               f"({result.n_tokens / result.seconds:.0f} tokens/s)", err=True)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("type_name", metavar="[TYPE]", required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="The GGUF to write (not needed with --dry-run).")
@click.option("--target-bpw", type=float, metavar="B",
              help="Search a type for every tensor: the most faithful file of at most B bits per weight.")
@click.option("--target-size", metavar="SIZE", help="Search: the most faithful file of at most SIZE (400MiB, 1.2GB).")
@click.option("--min-cosine", type=float, metavar="C",
              help="Search (embedding models): the smallest file whose mean cosine to MODEL is at least C.")
@click.option("--max-delta-p", type=float, metavar="D",
              help="Search (rerankers): the smallest file whose mean |ΔP(yes)| to MODEL is at most D.")
@click.option("--fastest", is_flag=True,
              help="Search for speed: the fastest file on this CPU (measured kernel times) that meets "
                   "--min-cosine or --max-delta-p.")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Search: stop measuring further candidate types when this much time would be exceeded.")
@click.option("--work-dir", type=click.Path(path_type=Path),
              help="Search: where measurements are kept for later searches [default: .qwen3-gguf-search beside -o].")
@click.option("--no-imatrix", is_flag=True,
              help="Search without an importance matrix (none is collected; IQ types are not searched).")
@click.option("--imatrix", "imatrix_file", type=click.Path(path_type=Path),
              help="Importance matrix (GGUF or legacy .dat), from `qwen3-gguf imatrix` or llama-imatrix.")
@click.option("--recipe", metavar="NAME|FILE",
              help="A shipped recipe (llama-default, bump-attn-v-ffn-down, bump-edges, hybrid, hybrid-edges) "
                   "or a TOML file of your own.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=TYPE",
              help="Type for tensors whose name matches REGEX (first match wins). Repeatable.")
@click.option("--output-tensor-type", metavar="TYPE", help="Type of the output head (the tied token embedding).")
@click.option("--token-embedding-type", metavar="TYPE", help="Type of the token embedding.")
@click.option("--dry-run", is_flag=True, help="Print the per-tensor plan, size and bits per weight; write nothing.")
@threads_option
@click.pass_obj
def quantize(obj, model: Path, type_name: str | None, output: Path | None, target_bpw: float | None,
             target_size: str | None, min_cosine: float | None, max_delta_p: float | None, fastest: bool,
             budget_minutes: float | None, work_dir: Path | None, no_imatrix: bool, imatrix_file: Path | None,
             recipe: str | None, tensor_types: tuple[str, ...], output_tensor_type: str | None,
             token_embedding_type: str | None, dry_run: bool, threads: int | None) -> None:
    """Quantize MODEL (an F32, F16 or BF16 GGUF) to TYPE with llama.cpp's own quantizer, or
    search a type for every tensor when a target is given (--target-bpw, --target-size,
    --min-cosine, --max-delta-p).

    TYPE is a llama.cpp file type (Q4_K_M, Q8_0, IQ4_XS, ... case-insensitive) or a hybrid
    PRECISION_BASE such as bf16_q8_0 or f16_q4_k: the token embedding and output head stay at
    PRECISION, the rest follows BASE. IQ1/IQ2/IQ3_XXS types need --imatrix. A searched recipe
    (OUT.recipe.toml) names its own type: `quantize MODEL --recipe OUT.recipe.toml -o OUT.gguf`.
    """
    from ..quantization import plan_quantization, read_imatrix
    from ..quantization import quantize as run_plan

    if output is None and not dry_run:
        raise UserError("give the file to write with -o/--output (or look at the plan with --dry-run)")
    search_options = (target_bpw, target_size, min_cosine, max_delta_p)
    if fastest:
        from .fastest import check_fastest_target

        check_fastest_target(*search_options)
    if any(value is not None for value in search_options):
        if type_name or recipe or tensor_types or output_tensor_type or token_embedding_type or dry_run:
            raise UserError("a search target chooses every tensor's type: drop TYPE, --recipe, --tensor-type, "
                            "--output-tensor-type, --token-embedding-type and --dry-run")
        if no_imatrix and imatrix_file is not None:
            raise UserError("give --imatrix or --no-imatrix, not both")
        if fastest:
            from .fastest import run_fastest

            run_fastest(obj, model, output, min_cosine, max_delta_p, budget_minutes, work_dir, no_imatrix,
                        imatrix_file, threads)
            return
        _search(obj, model, output, target_bpw, target_size, min_cosine, max_delta_p, budget_minutes, work_dir,
                no_imatrix, imatrix_file, threads)
        return
    matrix = read_imatrix(imatrix_file) if imatrix_file is not None else None
    plan = plan_quantization(model, type_name, imatrix=matrix, recipe=recipe, tensor_types=tensor_types,
                             output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type)
    if dry_run:
        _print_plan(plan)
        return
    result = run_plan(plan, output, threads=threads, show_progress=True, verbose=obj.verbose)
    click.echo(f"wrote {result.path}: {plan.quant_type.name}, {_mib(result.file_size)}, "
               f"{plan.bits_per_weight:.2f} bits per weight, in {result.seconds:.1f} s", err=True)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Folder for the quantized files and the report (re-running resumes in it).")
@click.option("--types", metavar="LIST", help="Comma-separated quantization types [default: Q2_K, Q3_K_M, "
              "Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ3_M, IQ4_XS, bf16_q8_0].")
@click.option("--recipes", metavar="LIST", help="Comma-separated recipes (names or TOML files), each applied "
              "to every type [default: llama-default, bump-edges].")
@click.option("--imatrix", "imatrix_file", type=click.Path(path_type=Path),
              help="Use this importance matrix instead of collecting one.")
@click.option("--calibration", multiple=True, type=click.Path(path_type=Path),
              help="Collect the imatrix on this text (as `qwen3-gguf imatrix`). Default: the shipped set.")
@click.option("--chunks", type=click.IntRange(min=1),
              help="Collect the imatrix on at most this many 512-token chunks (default: all the calibration).")
@click.option("--eval", "eval_file", type=click.Path(path_type=Path),
              help="Evaluation JSONL: records with 'query' and/or 'document'. Default: the shipped multilingual set.")
@click.option("--reference", type=click.Choice(["f32", "bf16"], case_sensitive=False),
              help="Precision a checkpoint is converted to, the reference every file is measured against "
                   "[default: f32].")
@click.option("--limit", type=int, help="Evaluate on the first N records of the evaluation set only.")
@click.option("--max-tokens", type=int, default=512, show_default=True,
              help="Evaluation texts are cut to this many tokens (alike for every file).")
@click.option("--dim", type=int, help="The reduced Matryoshka dimension also measured [default: 256, or half "
              "of a smaller model's].")
@click.option("--mteb", "mteb_tasks", metavar="TASKS", help="Comma-separated MTEB tasks (or local task folders) "
              "scored on every file: each task's main score and its difference to the reference's.")
@click.option("--searched", metavar="LIST", help="Comma-separated bits-per-weight targets (3.5,4.5,5.5): add a "
              "searched file for each (as `quantize --target-bpw`).")
@threads_option
@click.pass_obj
def sweep(obj, src: Path, out_dir: Path, types: str | None, recipes: str | None, imatrix_file: Path | None,
          calibration: tuple[Path, ...], chunks: int | None, eval_file: Path | None, reference: str | None,
          limit: int | None, max_tokens: int, dim: int | None, mteb_tasks: str | None, searched: str | None,
          threads: int | None) -> None:
    """Build quants of SRC (a checkpoint folder or an unquantized GGUF) for every type and recipe,
    measure each against the reference on an evaluation set, and report size, fidelity and speed.

    Writes DIR/report.md (sorted by size, Pareto-optimal rows marked), DIR/report.json and, when
    matplotlib is installed, DIR/pareto.png.
    """
    import sys

    from tqdm import tqdm

    from ..progress import progress_bar
    from ..quantization.report import write_reports
    from ..quantization.sweep import DEFAULT_RECIPES, DEFAULT_TYPES, SweepSettings, count_steps, run_sweep

    settings = SweepSettings(
        types=_names(types, "--types") or DEFAULT_TYPES, recipes=_names(recipes, "--recipes") or DEFAULT_RECIPES,
        imatrix=imatrix_file, calibration=calibration, imatrix_chunks=chunks, eval_file=eval_file,
        reference=reference.lower() if reference else None, limit=limit, max_tokens=max_tokens,
        reduced_dim=dim, threads=threads, mteb_tasks=_names(mteb_tasks, "--mteb") or (), searched=_targets(searched),
    )
    with progress_bar(total=count_steps(settings), enabled=True, unit="step", desc="sweep") as bar:
        result = run_sweep(src, out_dir, settings, say=lambda line: tqdm.write(line, file=sys.stderr),
                           step=lambda: bar.update(1), verbose=obj.verbose)
    written, skipped = write_reports(result, out_dir)
    for path in written:
        click.echo(f"wrote {path}", err=True)
    if skipped:
        click.echo(f"pareto.png skipped: {skipped}", err=True)
    click.echo((out_dir / "report.md").read_text(encoding="utf-8"))


def _search(obj, model: Path, output: Path, target_bpw, target_size, min_cosine, max_delta_p, budget_minutes,
            work_dir: Path | None, no_imatrix: bool, imatrix_file: Path | None, threads: int | None) -> None:
    """quantize with a target: measure, choose, build OUT.gguf with its recipe and report."""
    from ..quantization import SearchTarget, build_searched, format_report, search_quantization
    from ..quantization.search import searched_paths

    target = SearchTarget(bits_per_weight=target_bpw, file_bytes=_bytes(target_size) if target_size else None,
                          min_cosine=min_cosine, max_delta_p=max_delta_p)
    from ._common import prepared_search

    work_dir, say, settings = prepared_search(model, output, work_dir, no_imatrix, imatrix_file, budget_minutes,
                                              threads)
    result = search_quantization(model, target, settings, work_dir=work_dir, say=say, show_progress=True,
                                 verbose=obj.verbose)
    result = build_searched(result, output, work_dir=work_dir, say=say, verbose=obj.verbose)
    click.echo(format_report(result))
    recipe_path, report_path = searched_paths(output)
    click.echo(f"wrote {output} ({_mib(result.file_size)}), {recipe_path} and {report_path}", err=True)


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _bytes(text: str) -> int:
    """'400MiB' → 419430400; '1.2GB' → 1200000000."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise UserError(f"--target-size {text!r} is not a size such as 400MiB, 1.2GB or 350000000")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def _targets(value: str | None) -> list[float]:
    targets = []
    for name in _names(value, "--searched") or []:
        try:
            targets.append(float(name))
        except ValueError:
            raise UserError(f"--searched {name!r} is not a number of bits per weight (e.g. 3.5,4.5,5.5)") from None
    return targets


def _names(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:

        raise UserError(f"{option} is empty; give a comma-separated list")
    return names


def _print_plan(plan) -> None:
    rows = [(t.name, " × ".join(map(str, t.shape)), t.type.name, t.why) for t in plan.tensors]
    header = ("tensor", "shape", "type", "why")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    source_bytes = plan.model.tensor_bytes
    click.echo(f"{plan.quant_type.name}: {len(rows)} tensors, {_mib(plan.n_bytes)} of tensor data, "
               f"{plan.bits_per_weight:.2f} bits per weight "
               f"(from {_mib(source_bytes)}, {8 * source_bytes / plan.n_elements:.2f} bits per weight)")


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"
