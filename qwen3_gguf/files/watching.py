"""Keeping a collection in step with its folders as files change (`qwen3-gguf index --watch`).

The folders are watched with watchfiles; changes are gathered into debounced batches, and each
batch re-runs `Collection.index` over the folders with pruning, so new and edited files are
embedded (unchanged ones are skipped by their hash) and deleted ones are forgotten. Every batch
commits as `index` does, so a stop (Ctrl-C, or `stop` set) keeps every finished batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import UserError
from .store import Collection, IndexReport

WAKE_MS = 200          # how often the watcher wakes without changes (to notice `stop`, and to say it is ready)


@dataclass(frozen=True)
class WatchBatch:
    number: int             # 0: the catch-up index when watching starts, then 1, 2, ...
    changes: int            # file events in the batch (creations, edits, deletions)
    report: IndexReport
    files: int              # the collection's files and chunks after the batch
    chunks: int


def watch(collection: Collection, paths: Sequence[str], *, on_batch: Callable[[WatchBatch], None],
          stop: threading.Event | None = None, debounce_ms: int = 1600, **index_options) -> int:
    """Index `paths` into `collection`, then again after every batch of changes under them, until `stop` is
    set (or KeyboardInterrupt); returns the number of change batches. `on_batch` is told of batch 0 (the
    catch-up, once the watcher is live: changes made after it are seen) and of every batch after."""
    from watchfiles import watch as file_changes

    for path in paths:
        if path == "-":
            raise UserError("--watch follows files and folders; stdin (-) cannot be watched")
        if not os.path.exists(path):
            raise UserError(f"no such file or folder: {path}")
    batches = 0
    live = False
    for changes in file_changes(*paths, debounce=debounce_ms, rust_timeout=WAKE_MS, yield_on_timeout=True,
                                stop_event=stop):
        if live and not changes:
            continue
        report = collection.index(paths, prune=True, **index_options)
        batches += live
        on_batch(WatchBatch(batches, len(changes), report, collection.document_count, len(collection)))
        live = True
    return batches
