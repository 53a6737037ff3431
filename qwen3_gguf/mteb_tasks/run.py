"""Running MTEB tasks on a GGUF: tasks resolved and their data loaded first (so a bad name or an
uncached dataset is refused before a model loads), then mteb.evaluate over GGUFEncoder, writing
mteb's own results layout (DIR/<model>/<revision>/<task>.json) when a folder is given."""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..embed import Embedder
from ..errors import UserError
from ..hub import offline, why_offline
from .cache import EmbeddingCache
from .encoder import GGUFEncoder
from .local_task import LocalRetrievalTask, is_local_task, local_retrieval_task


@dataclass(frozen=True)
class TaskScore:
    task: str
    main_score: str        # the metric mteb ranks the task by, e.g. ndcg_at_10
    score: float           # its mean over the task's evaluation splits and subsets
    splits: tuple[str, ...]


def resolve_tasks(names: Sequence[str]):
    """mteb tasks by name, or local task folders; an unknown name lists the close ones."""
    import mteb

    tasks = []
    for name in names:
        if is_local_task(name):
            tasks.append(local_retrieval_task(name))
            continue
        try:
            tasks.append(mteb.get_task(name))
        except KeyError:
            known = [task.metadata.name for task in mteb.get_tasks()]
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see mteb's task list (mteb.get_tasks())"
            raise UserError(f"unknown MTEB task {name!r} (and no such folder){hint}") from None
    return tasks


def load_tasks(tasks) -> None:
    """Load every task's data now: offline, a dataset not in the Hugging Face cache is one line."""
    for task in tasks:
        if task.data_loaded:
            continue
        if isinstance(task, LocalRetrievalTask):
            task.load_data()
            continue
        try:
            with _cache_only_when_offline():
                task.load_data()
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for "not cached"; offline says it all
            if not offline():
                raise
            name, dataset = task.metadata.name, task.metadata.dataset["path"]
            raise UserError(
                f"MTEB task {name}: its dataset {dataset} is not in the Hugging Face cache and {why_offline()}; "
                f"fetch it once with network access: python -c \"import mteb; mteb.get_task('{name}').load_data()\""
            ) from exc


def run_tasks(embedder: Embedder, tasks, *, dim: int | None = None, instructions: Mapping[str, str] | None = None,
              results_dir: str | Path | None = None, cache_dir: str | Path | None = None,
              progress: bool = False, batch_size: int = 32) -> tuple[list[TaskScore], GGUFEncoder]:
    """Evaluate `embedder` on `tasks` (resolved and loaded); returns each task's main score and the encoder
    (whose `embedded_texts` and `cached_texts` count what was embedded and what was read from the cache).
    `results_dir` gets mteb's layout: results/<model>/<revision>/<task>.json."""
    import mteb

    load_tasks(tasks)
    encoder = GGUFEncoder(embedder, dim=dim, instructions=instructions,
                          cache=EmbeddingCache(cache_dir) if cache_dir is not None else None, progress=progress)
    bars = progress and sys.stderr.isatty()
    with _library_bars(bars):
        cache = mteb.ResultCache(results_dir) if results_dir is not None else None
        results = mteb.evaluate(encoder, tasks, cache=cache,
                                overwrite_strategy="always", show_progress_bar=bars,
                                encode_kwargs={"batch_size": batch_size, "show_progress_bar": bars})
    main_scores = {task.metadata.name: task.metadata.main_score for task in tasks}
    scores = [TaskScore(task=result.task_name, main_score=main_scores[result.task_name],
                        score=float(result.get_score()), splits=tuple(result.scores))
              for result in results.task_results]
    return scores, encoder


@contextlib.contextmanager
def _cache_only_when_offline():
    """Offline (HF_HUB_OFFLINE=1, or a Hub that the probe of qwen3_gguf.hub found unreachable, which
    puts huggingface_hub offline), datasets is told so too while the data loads: the cache answers
    at once instead of after rounds of retries."""
    import datasets.config

    if not offline():
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _library_bars(shown: bool):
    """The datasets library's progress bars only where ours are shown: asked for, on a terminal."""
    import datasets

    if shown or not datasets.is_progress_bar_enabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()
