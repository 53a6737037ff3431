"""Streaming a GGUF to disk, one tensor in memory at a time, published only when complete."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from ..atomic import atomic_path
from ..errors import UserError
from ..progress import progress_bar
from .metadata import ARCHITECTURE
from .tensors import PlannedTensor

METADATA_ALLOWANCE = 64 << 20  # bytes reserved for the header when checking free space


def check_output_path(out: Path) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if out.is_dir():
        raise UserError(f"output {out} is a folder; give a file name such as {out / 'model.gguf'}")
    if not out.parent.is_dir():
        raise UserError(f"output folder {out.parent} does not exist")


def write_gguf(
    out: Path,
    add_metadata: Callable[[GGUFWriter], None],
    tensors: Sequence[PlannedTensor],
    *,
    progress: bool = False,
) -> None:
    """Write header, metadata and tensor table, then each tensor's data in turn, to a hidden
    temporary file next to `out`; rename it to `out` only once everything is on disk.

    Any failure or interruption removes the temporary file and leaves an existing `out` as it was.
    """
    total_bytes = sum(tensor.nbytes for tensor in tensors)
    _check_free_space(out, total_bytes + METADATA_ALLOWANCE)
    with atomic_path(out) as partial:
        writer = GGUFWriter(partial, arch=ARCHITECTURE)
        try:
            add_metadata(writer)
            for tensor in tensors:
                writer.add_tensor_info(
                    tensor.name, tensor.byte_shape, np.dtype(np.uint8), tensor.nbytes, tensor.type
                )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            with progress_bar(total=total_bytes, enabled=progress, unit="B", desc="Converting") as bar:
                for tensor in tensors:
                    writer.write_tensor_data(tensor.encode())
                    if bar is not None:
                        bar.update(tensor.nbytes)
        finally:
            writer.close()


def _check_free_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if free < needed:
        raise UserError(
            f"not enough free space in {out.parent}: the GGUF needs about {needed / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB are free"
        )
