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
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..data import calibration_file
from ..errors import UserError
from ..gguf_file import read_header, read_model_file
from ..progress import progress_bar
from ..prompts import DEFAULT_INSTRUCTION, query_text
from .text_records import TextRecord, read_text_records

DEFAULT_CHUNK_TOKENS = 512
MIN_CHUNK_TOKENS = 128            # room for the reranker's fixed prompt around a document
MAX_SEQUENCES_PER_CHUNK = 64
IMATRIX_TYPE = "imatrix"
SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"


# --- the matrix ------------------------------------------------------------------------------

@dataclass
class ImportanceMatrix:
    """Per weight: the sum over calibration tokens of each input column's squared activation."""

    sums: dict[str, np.ndarray]            # weight name → float32 sums, one per input column
    counts: dict[str, int]                 # weight name → tokens summed
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def importance(self) -> dict[str, np.ndarray]:
        """Mean squared activation per column: what llama_model_quantize takes.

        A tensor that saw no tokens gets equal weights (llama-quantize does the same).
        """
        return {
            name: (sums / self.counts[name]).astype(np.float32) if self.counts[name] > 0
            else np.ones_like(sums, dtype=np.float32)
            for name, sums in self.sums.items()
        }


def write_imatrix(matrix: ImportanceMatrix, path: str | Path) -> Path:
    """Write `matrix` as a GGUF imatrix (to a temporary name, renamed when complete)."""
    path = Path(path)
    try:
        with atomic_path(path) as partial:
            _write_gguf_imatrix(matrix, partial)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _write_gguf_imatrix(matrix: ImportanceMatrix, partial: Path) -> None:
    from gguf import GGUFValueType, GGUFWriter, Keys

    writer = GGUFWriter(partial, arch=IMATRIX_TYPE)
    # llama-imatrix files carry no architecture; the writer always adds one.
    writer.kv_data[0].pop(Keys.General.ARCHITECTURE)
    writer.add_type(IMATRIX_TYPE)
    writer.add_array("imatrix.datasets", list(matrix.datasets))
    writer.add_key_value("imatrix.chunk_count", matrix.chunk_count, GGUFValueType.UINT32)
    writer.add_key_value("imatrix.chunk_size", matrix.chunk_size, GGUFValueType.UINT32)
    for name in sorted(matrix.sums):
        writer.add_tensor(name + SUMS_SUFFIX, np.asarray(matrix.sums[name], dtype=np.float32)[None, :])
        writer.add_tensor(name + COUNTS_SUFFIX, np.array([[matrix.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_imatrix(path: str | Path) -> ImportanceMatrix:
    """Read a GGUF imatrix or a legacy llama-imatrix `.dat` file; any defect is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"imatrix file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    return _read_gguf_imatrix(path) if magic == b"GGUF" else _read_legacy_imatrix(path)


def _read_gguf_imatrix(path: Path) -> ImportanceMatrix:
    from gguf import GGMLQuantizationType, GGUFReader

    # The strict header check first: it is fast and refuses a model file before its vocabulary.
    header = read_header(path)
    if header.fields.get("general.type") != IMATRIX_TYPE:
        raise UserError(f"{path} is not an imatrix (general.type is {header.fields.get('general.type')!r})")
    reader = GGUFReader(path)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    sums, counts = {}, {}
    for full_name, tensor in tensors.items():
        if not full_name.endswith(SUMS_SUFFIX):
            continue
        name = full_name.removesuffix(SUMS_SUFFIX)
        count = tensors.get(name + COUNTS_SUFFIX)
        if count is None:
            raise UserError(f"{path}: {name} has {SUMS_SUFFIX} but no {COUNTS_SUFFIX}")
        if (tensor.tensor_type, count.tensor_type) != (GGMLQuantizationType.F32, GGMLQuantizationType.F32):
            raise UserError(f"{path}: the sums and counts of {name} must be F32")
        if count.n_elements != 1:
            raise UserError(f"{path}: {name} has {count.n_elements} counts (a mixture-of-experts imatrix); "
                            "Qwen3 models have one matrix per tensor")
        sums[name] = np.array(tensor.data, dtype=np.float32).reshape(-1)
        counts[name] = int(round(float(np.asarray(count.data).reshape(-1)[0])))
    if not sums:
        raise UserError(f"{path} holds no {SUMS_SUFFIX} tensors")
    datasets = reader.get_field("imatrix.datasets")
    return ImportanceMatrix(
        sums=sums, counts=counts,
        datasets=list(datasets.contents()) if datasets is not None else [],
        chunk_count=int(header.fields.get("imatrix.chunk_count", 0)),
        chunk_size=int(header.fields.get("imatrix.chunk_size", 0)),
    )


def _read_legacy_imatrix(path: Path) -> ImportanceMatrix:
    """The old binary format: per entry (name, ncall, values = mean square × ncall)."""
    data = path.read_bytes()
    position = 0

    def take(fmt: str):
        nonlocal position
        size = struct.calcsize(fmt)
        if position + size > len(data):
            raise UserError(f"{path} is neither a GGUF imatrix nor a complete legacy .dat imatrix "
                            f"(it ends at byte {len(data)})")
        values = struct.unpack_from(fmt, data, position)
        position += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise UserError(f"{path} is not an imatrix (it starts with an entry count of {n_entries})")
    sums, counts = {}, {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length <= 1024:
            raise UserError(f"{path} is not a legacy imatrix (a tensor name of {length} bytes)")
        name = take(f"<{length}s")[0].decode("utf-8", errors="replace")
        ncall, n_values = take("<ii")
        if n_values < 1:
            raise UserError(f"{path}: entry {name} has {n_values} values")
        values = np.array(take(f"<{n_values}f"), dtype=np.float32)
        sums[name], counts[name] = values, max(ncall, 0)
    chunk_count, datasets = 0, []
    if position < len(data):
        (chunk_count,) = take("<i")
        if position < len(data):
            (length,) = take("<i")
            if length > 0:
                datasets.append(take(f"<{length}s")[0].decode("utf-8", errors="replace"))
    return ImportanceMatrix(sums=sums, counts=counts, datasets=datasets, chunk_count=chunk_count)


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
    from ..embed import Embedder
    from ..rerank import Reranker

    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise UserError(f"--chunk-tokens must be at least {MIN_CHUNK_TOKENS}, got {chunk_tokens}")
    if max_chunks is not None and max_chunks < 1:
        raise UserError(f"--chunks must be at least 1, got {max_chunks}")
    kind = read_model_file(model).kind
    items, datasets = load_calibration(calibration)
    runtime_class = Embedder if kind == "embedding" else Reranker
    with runtime_class(model, device=device, threads=threads, max_tokens=chunk_tokens, verbose=verbose) as runtime:
        sequences = (embedding_sequences if kind == "embedding" else reranker_sequences)(runtime, items)
        # Lazily: with --chunks only the calibration that is used gets tokenized.
        chunks = list(itertools.islice(pack_chunks(sequences, chunk_tokens), max_chunks))
        sums = _SquaredInputSums()
        observer = runtime.MatMulInputObserver(sums.add)
        settings = runtime.ContextSettings(
            pooling=runtime.POOLING_LAST if kind == "embedding" else runtime.POOLING_RANK,
            n_ctx=chunk_tokens, n_batch=chunk_tokens, n_seq_max=MAX_SEQUENCES_PER_CHUNK,
            threads=threads or runtime.default_threads(),
        )
        # A context of its own on the runtime's model (whose tokenizer made the sequences).
        context = runtime.PooledContext(runtime._llama, settings, eval_callback=observer.callback)
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
