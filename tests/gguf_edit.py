"""Rewrite a GGUF with some metadata keys removed: to imitate older or foreign GGUF files."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def copy_without_keys(src: Path, dst: Path, drop: set[str], *, architecture: str | None = None) -> Path:
    """Copy `src` to `dst` leaving out the `drop` keys; optionally relabel the architecture."""
    reader = GGUFReader(src)
    arch = architecture or reader.get_field("general.architecture").contents()
    writer = GGUFWriter(dst, arch=arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture" or field.name in drop:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return dst
