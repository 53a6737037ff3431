"""The importance matrix and its files: the GGUF imatrix format llama-imatrix writes and
llama-quantize reads (`<weight>.in_sum2`, `<weight>.counts`, `imatrix.*` keys), and the legacy `.dat`."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import UserError
from ..gguf_file import read_header

IMATRIX_TYPE = "imatrix"
SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"


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
