"""`qwen3-gguf mteb`: MTEB task scores of an embedding GGUF, in mteb's own results layout."""

from __future__ import annotations

from pathlib import Path

import click

from ..catalog import default_embedding_model
from ..errors import UserError
from ._common import AppState, max_tokens_option, model_option, runtime_options

DEFAULT_OUT = "mteb-results"


@click.command("mteb")
@model_option(default=default_embedding_model())
@click.option("--tasks", required=True, metavar="LIST",
              help="Comma-separated MTEB task names (NFCorpus,SciFact) or folders of local retrieval tasks "
                   "(corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
@click.option("--dim", type=int, help="Keep the first DIM Matryoshka dimensions (renormalized).")
@click.option("--instruction", "instructions", multiple=True, metavar="KEY=TEXT",
              help="Query instruction for a task name, task type (Retrieval, STS, …) or 'query' (all queries); "
                   "repeatable. Default: the task's own instruction, else Qwen3's retrieval instruction.")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Folder of mteb's results (DIR/results/MODEL/REVISION/TASK.json) and the embedding cache.")
@max_tokens_option
@runtime_options
@click.pass_obj
def mteb(obj: AppState, model: str, tasks: str, dim: int | None, instructions: tuple[str, ...], out_dir: Path,
         max_tokens: int, device: str, threads: int | None) -> None:
    """Run MTEB tasks on an embedding GGUF and print each task's main score.

    Queries get the task's Qwen3 instruction, documents none, as in the published Qwen3-Embedding runs.
    Embeddings are cached in DIR/embeddings by file sha256, task, split and dim: a re-run embeds nothing again.
    """
    from ..catalog import resolve_model
    from ..embed import Embedder
    from ..gguf_file import read_model_file, require_kind
    from ..limits import check_dim

    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise UserError("--tasks is empty; give a comma-separated list of MTEB task names")
    mapping = parse_instructions(instructions)
    model_file = read_model_file(resolve_model(model, "embedding"))
    require_kind(model_file, "embedding")
    check_dim(dim, model_file.embedding_length)
    from ..mteb_tasks import load_tasks, resolve_tasks, run_tasks  # mteb takes seconds to import: after the checks

    chosen = resolve_tasks(names)
    load_tasks(chosen)
    embedder = Embedder(model, device=device, threads=threads, max_tokens=max_tokens, verbose=obj.verbose)
    scores, encoder = run_tasks(embedder, chosen, dim=dim, instructions=mapping, results_dir=out_dir,
                                cache_dir=out_dir / "embeddings", progress=True)
    width = max(len(s.task) for s in scores)
    click.echo(f"{'task'.ljust(width)}  {'metric'.ljust(12)}  {'score':>7}  splits")
    for s in scores:
        click.echo(f"{s.task.ljust(width)}  {s.main_score.ljust(12)}  {s.score:7.5f}  {', '.join(s.splits)}")
    click.echo(f"results in {out_dir / 'results'}; {encoder.embedded_texts} texts embedded, "
               f"{encoder.cached_texts} read from the cache", err=True)


def parse_instructions(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise UserError(f"--instruction {pair!r}: expected KEY=TEXT (a task name, task type or 'query')")
        mapping[key.strip()] = text.strip()
    return mapping
