"""A resumable job: embed a dataset into a sink, skipping what the sink already holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..files import Counts
from .pipeline import embed_dataset
from .sinks import Sink


@dataclass
class JobReport:
    counts: Counts = field(default_factory=Counts)   # files read and skipped; chunks and tokens embedded
    rows_written: int = 0
    rows_present: int = 0      # rows the sink held for this model before the job
    seconds: float = 0.0

    def summary(self) -> str:
        """The one line `embed-files` prints, plus what was written and what was already there."""
        rate = self.counts.tokens / max(self.seconds, 1e-9)
        return "; ".join([f"embedded {self.counts.totals()} in {self.seconds:.1f} s, {rate:.0f} tokens/s",
                          *self.counts.notes(),
                          f"wrote {self.rows_written} rows, {self.rows_present} already present"])


def embed_into(ds, sink: Sink, *, counts: Counts | None = None,
               progress: Callable[[JobReport], None] | None = None, **embed_options) -> JobReport:
    """Embed `ds` (see `embed_dataset` for the options) into `sink` and report.

    The ids already in the sink are skipped before embedding (the anti-join), so a job that
    crashed or was interrupted goes on where its last write ended. Rows still buffered when
    an error or Ctrl-C stops the job are written before it ends: they are complete.
    """
    report = JobReport(counts=counts if counts is not None else Counts())
    existing = sink.existing_ids()
    report.rows_present = len(existing)
    started = time.perf_counter()
    rows = embed_dataset(ds, sink.identity, skip_ids=existing, **embed_options)
    try:
        for batch in rows.iter_batches(batch_format="pyarrow", batch_size=None):
            sink.write(batch)
            report.counts.chunks += batch.num_rows
            report.counts.tokens += int(batch.column("n_tokens").to_numpy().sum()) if batch.num_rows else 0
            report.rows_written = sink.rows_written
            if progress is not None:
                progress(report)
    finally:
        sink.flush()
        report.rows_written = sink.rows_written
        report.seconds = time.perf_counter() - started
    return report
