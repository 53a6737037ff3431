"""Importance matrix: how much each input column of every weight matrix matters.

llama.cpp's quantizer weighs each column's rounding error by the mean square of the
activations that column multiplies. We collect those sums with llama.cpp itself: calibration
text runs through the model while an eval callback copies out the input rows of every blk.*
matrix multiplication. The calibration is formatted exactly as the runtime formats inputs —
queries in the Qwen3 instruction format and documents, each ending in <|endoftext|>, for an
embedding model; full yes/no prompts for a reranker — by the Embedder's and Reranker's own
tokenizers.

Files are the GGUF imatrix format llama-imatrix writes and llama-quantize reads
(`<tensor>.in_sum2`, `<tensor>.counts`, `imatrix.datasets`, `imatrix.chunk_count`,
`imatrix.chunk_size`); legacy `.dat` files from older llama-imatrix builds are read too.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runtime
from ..data import calibration_file
from ..embed import Embedder
from ..errors import UserError
from ..gguf_file import read_model_file
from ..progress import progress_bar
from ..prompts import DEFAULT_INSTRUCTION, query_text
from ..rerank import Reranker
from .importance import ImportanceMatrix
from .text_records import TextRecord, read_text_records

DEFAULT_CHUNK_TOKENS = 512
MIN_CHUNK_TOKENS = 128            # room for the reranker's fixed prompt around a document
MAX_SEQUENCES_PER_CHUNK = 64


# --- calibration -----------------------------------------------------------------------------

def load_calibration(paths: Sequence[str | Path] = ()) -> tuple[list[TextRecord], list[str]]:
    """Calibration items from JSONL files (query/document/instruction records) or plain text
    files (each blank-line-separated paragraph a document); the shipped set when none given.

    Returns the items and the dataset names recorded in the imatrix.
    """
    if not paths:
        return (read_text_records(calibration_file(), "calibration file"),
                [f"qwen3-gguf:{calibration_file().name}"])
    items = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"calibration file not found: {path}")
        items.extend(read_text_records(path, "calibration file"))
    return items, [str(p) for p in paths]


def embedding_sequences(embedder, items: Iterable[TextRecord]) -> Iterator[list[int]]:
    """Token ids of each query (in the instruction format) and document, as Embedder encodes them."""
    for item in items:
        if item.query is not None:
            yield embedder.tokenize(query_text(item.query, item.instruction or DEFAULT_INSTRUCTION))[0]
        if item.document is not None:
            yield embedder.tokenize(item.document)[0]


def reranker_sequences(reranker, items: Sequence[TextRecord]) -> Iterator[list[int]]:
    """Rerank prompts as Reranker scores them: each query with its own document (a "yes")
    and with the next item's document (most likely a "no")."""
    pairs = [item for item in items if item.query is not None and item.document is not None]
    if not pairs:
        raise UserError("a reranker is calibrated on query/document pairs; the calibration has none "
                        "(use JSONL records with both 'query' and 'document')")
    for item, neighbour in zip(pairs, pairs[1:] + pairs[:1]):
        instruction = item.instruction or DEFAULT_INSTRUCTION
        yield reranker.tokenize(item.query, item.document, instruction)[0]
        if len(pairs) > 1:
            yield reranker.tokenize(item.query, neighbour.document, instruction)[0]


def pack_chunks(sequences: Iterable[list[int]], chunk_tokens: int) -> Iterator[list[list[int]]]:
    """Group sequences, in order, into decodes of at most `chunk_tokens` tokens."""
    current: list[list[int]] = []
    used = 0
    for sequence in sequences:
        if current and (used + len(sequence) > chunk_tokens or len(current) == MAX_SEQUENCES_PER_CHUNK):
            yield current
            current, used = [], 0
        current.append(sequence)
        used += len(sequence)
    if current:
        yield current


# --- collection ------------------------------------------------------------------------------

class _SquaredInputSums:
    """Accumulates, per weight, the squared input activations column by column (in float64)."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, rows: np.ndarray) -> None:
        squares = np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        if name in self.sums:
            self.sums[name] += squares
            self.counts[name] += rows.shape[0]
        else:
            self.sums[name] = squares
            self.counts[name] = rows.shape[0]


@dataclass(frozen=True)
class CollectionResult:
    matrix: ImportanceMatrix
    n_tokens: int
    seconds: float


def collect_imatrix(model: str | Path, calibration: Sequence[str | Path] = (), *,
                    chunk_tokens: int = DEFAULT_CHUNK_TOKENS, max_chunks: int | None = None,
                    device: str = "auto", threads: int | None = None, verbose: bool = False,
                    show_progress: bool = False) -> CollectionResult:
    """Run the calibration through `model` on llama.cpp and sum the squared inputs of every
    blk.* weight. `max_chunks` stops after that many decodes of up to `chunk_tokens` tokens."""
    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise UserError(f"--chunk-tokens must be at least {MIN_CHUNK_TOKENS}, got {chunk_tokens}")
    if max_chunks is not None and max_chunks < 1:
        raise UserError(f"--chunks must be at least 1, got {max_chunks}")
    kind = read_model_file(model).kind
    items, datasets = load_calibration(calibration)
    front_class = Embedder if kind == "embedding" else Reranker
    with front_class(model, device=device, threads=threads, max_tokens=chunk_tokens, verbose=verbose) as front:
        sequences = (embedding_sequences if kind == "embedding" else reranker_sequences)(front, items)
        # Lazily: with --chunks only the calibration that is used gets tokenized.
        chunks = list(itertools.islice(pack_chunks(sequences, chunk_tokens), max_chunks))
        sums = _SquaredInputSums()
        observer = runtime.MatMulInputObserver(sums.add)
        settings = runtime.ContextSettings(
            pooling=runtime.POOLING_LAST if kind == "embedding" else runtime.POOLING_RANK,
            n_ctx=chunk_tokens, n_batch=chunk_tokens, n_seq_max=MAX_SEQUENCES_PER_CHUNK,
            threads=threads or runtime.default_threads(),
        )
        # A context of its own on the front's model (whose tokenizer made the sequences).
        context = runtime.PooledContext(front.loaded_model, settings, eval_callback=observer.callback)
        try:
            started = time.perf_counter()
            n_tokens = _decode(context, observer, chunks, show_progress)
            seconds = time.perf_counter() - started
        finally:
            context.close()
    for name, values in sums.sums.items():
        if not np.all(np.isfinite(values)):
            raise UserError(f"the activations of {name} overflowed (inf/NaN); the model's weights are broken")
    matrix = ImportanceMatrix(
        sums={name: values.astype(np.float32) for name, values in sums.sums.items()},
        counts=dict(sums.counts), datasets=datasets, chunk_count=len(chunks), chunk_size=chunk_tokens,
    )
    return CollectionResult(matrix=matrix, n_tokens=n_tokens, seconds=seconds)


def _decode(context, observer, chunks: list[list[list[int]]], show_progress: bool) -> int:
    """Decode each chunk (the observer sums as llama.cpp computes); returns the tokens decoded."""
    started, n_tokens = time.perf_counter(), 0
    with progress_bar(total=len(chunks), enabled=show_progress, unit="chunk", desc="imatrix") as bar:
        for chunk in chunks:
            context.pooled(chunk)
            observer.raise_pending()
            n_tokens += sum(len(s) for s in chunk)
            if bar is not None:
                bar.set_postfix_str(f"{n_tokens / (time.perf_counter() - started):.0f} tokens/s", refresh=False)
                bar.update(1)
    return n_tokens
