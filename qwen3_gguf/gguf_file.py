"""Read and check a GGUF file before llama.cpp sees it.

llama.cpp can crash the whole process on a malformed file, so every file is parsed here first:
magic and version, every count and length against the bytes that remain, tensor types, shapes,
alignment, and that each tensor's data lies inside the file. The parser walks the memory-mapped
header only (a few MB for the 151k-token Qwen vocabulary) and skips string arrays it does not
need, so it costs a fraction of a second where `gguf.GGUFReader` takes about ten.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType, PoolingType
from gguf.quants import dequantize

from .errors import UserError
from .tensor_names import CLASSIFIER, TOKEN_EMBEDDING

GGUF_MAGIC = b"GGUF"
MIN_FILE_SIZE = 24  # magic, version, tensor count, key/value count
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
SUPPORTED_ARCHITECTURE = "qwen3"
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS: llama.cpp aborts the process on more

# String arrays are skipped unless their values are needed; numbers are always read.
KEPT_STRING_ARRAYS = {"tokenizer.ggml.tokens"}

_U64 = struct.Struct("<Q")
_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]      # GGML order: shape[0] is the row length
    type: GGMLQuantizationType
    offset: int                 # from the start of the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, object]   # skipped string arrays hold their length only
    tensors: list[TensorInfo]
    file_size: int


@dataclass(frozen=True)
class ModelFile:
    """What a Qwen3 GGUF says about itself."""

    path: Path
    name: str
    kind: str                   # "embedding" or "reranker"
    embedding_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    context_length: int
    feed_forward_length: int
    pooling: str | None         # "last", "rank", ... or None when the file does not say
    add_eos_token: bool | None  # None when the file does not say
    eos_token: str | None
    file_type: str
    tensor_types: dict[str, int]
    n_params: int
    tensor_bytes: int
    file_size: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / self.n_params


def read_model_file(path: str | Path) -> ModelFile:
    """Validate `path` as a Qwen3 GGUF and describe it; any defect is a UserError."""
    path = Path(path)
    header = read_header(path)
    fields = header.fields

    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise UserError(f"{path} has no general.architecture; it is not a GGUF model file")
    if arch != SUPPORTED_ARCHITECTURE:
        raise UserError(f"{path} is a {arch!r} model; qwen3-gguf runs Qwen3 embedding and reranker GGUFs only")

    def number(key: str) -> int:
        value = fields.get(f"{arch}.{key}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{path} has no valid {arch}.{key}; it cannot be run as a Qwen3 model")
        return int(value)

    tensor_names = {t.name for t in header.tensors}
    pooling_value = fields.get(f"{arch}.pooling_type")
    try:
        pooling = PoolingType(pooling_value).name.lower() if pooling_value is not None else None
    except ValueError:
        raise UserError(f"{path} has an unknown pooling type {pooling_value}") from None
    kind = "reranker" if CLASSIFIER in tensor_names or pooling == "rank" else "embedding"
    if kind == "reranker" and CLASSIFIER not in tensor_names:
        raise UserError(f"{path} says it is a reranker but has no {CLASSIFIER} tensor")
    if TOKEN_EMBEDDING not in tensor_names:
        raise UserError(f"{path} has no {TOKEN_EMBEDDING} tensor; it is not a complete Qwen3 model")
    _check_attention_shape(path, fields, arch, number)
    if number("block_count") > MAX_LAYERS:
        raise UserError(f"{path} says it has {number('block_count')} layers; llama.cpp allows at most {MAX_LAYERS}")
    for tensor in header.tensors:
        if len(tensor.shape) == 1 and tensor.type != GGMLQuantizationType.F32:
            # llama.cpp's CPU kernels multiply by norm weights in F32 only and abort otherwise.
            raise UserError(f"{path}: the 1-D tensor {tensor.name} is {tensor.type.name}; it must be F32")

    tokens = _vocabulary(path, fields)
    eos_id = fields.get("tokenizer.ggml.eos_token_id")
    eos_token = tokens[eos_id] if isinstance(eos_id, int) and 0 <= eos_id < len(tokens) else None
    add_eos = fields.get("tokenizer.ggml.add_eos_token")
    tensor_types = Counter(t.type.name for t in header.tensors)

    return ModelFile(
        path=path,
        name=str(fields.get("general.name") or path.stem),
        kind=kind,
        embedding_length=number("embedding_length"),
        block_count=number("block_count"),
        head_count=number("attention.head_count"),
        head_count_kv=number("attention.head_count_kv"),
        context_length=number("context_length"),
        feed_forward_length=number("feed_forward_length"),
        pooling=pooling,
        add_eos_token=add_eos if isinstance(add_eos, bool) else None,
        eos_token=eos_token,
        file_type=_file_type_name(fields.get("general.file_type")),
        tensor_types=dict(tensor_types.most_common()),
        n_params=sum(t.n_elements for t in header.tensors),
        tensor_bytes=sum(t.n_bytes for t in header.tensors),
        file_size=header.file_size,
    )


def _check_attention_shape(path: Path, fields: dict[str, object], arch: str, number) -> None:
    """Head sizes as llama.cpp derives them; its Qwen3 graph aborts the process unless they agree."""
    head_count, head_count_kv = number("attention.head_count"), number("attention.head_count_kv")
    if head_count % head_count_kv:
        raise UserError(f"{path} has {head_count} attention heads, not a multiple of its {head_count_kv} KV heads")
    default_head = number("embedding_length") // head_count
    key = fields.get(f"{arch}.attention.key_length", default_head)
    value = fields.get(f"{arch}.attention.value_length", default_head)
    rope = fields.get(f"{arch}.rope.dimension_count", key)
    if not key == value == rope:
        raise UserError(f"{path} has inconsistent head sizes (key {key}, value {value}, rope {rope}); "
                        "a Qwen3 model needs them equal")


def _vocabulary(path: Path, fields: dict[str, object]) -> list[str]:
    """The token list (empty if there is none), checked where llama.cpp would abort the process."""
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        return []
    if len(set(tokens)) != len(tokens):
        duplicate = next(t for t, n in Counter(tokens).items() if n > 1)
        raise UserError(f"{path} has a damaged vocabulary: the token {duplicate!r} appears twice")
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        values = fields.get(key)
        if values is not None and (not isinstance(values, list) or len(values) != len(tokens)):
            raise UserError(f"{path} has a damaged vocabulary: {key} does not match the {len(tokens)} tokens")
    return tokens


def require_kind(model: ModelFile, kind: str) -> None:
    """Refuse an embedding GGUF where a reranker is needed, and the other way round."""
    if model.kind != kind:
        described = {"embedding": "an embedding model", "reranker": "a reranker"}
        use = {"embedding": "qwen3-gguf embed / Embedder", "reranker": "qwen3-gguf rerank / Reranker"}
        raise UserError(f"{model.path} is {described[model.kind]}, not {described[kind]}; "
                        f"use {use[model.kind]} for it")


def read_header(path: Path, *, keep_strings: frozenset[str] | set[str] = KEPT_STRING_ARRAYS) -> GGUFHeader:
    """Parse and check the header and tensor table of a GGUF file (a UserError if damaged).

    String arrays are decoded only for the keys in `keep_strings` (the others hold their length).
    The last few headers parsed are kept: a search or a sweep reads the same files' headers dozens
    of times, and the Qwen vocabulary makes each parse cost about 0.2 s. A kept header is given
    again only while the file has the same size and the same header bytes (a hash of them, a few
    milliseconds), so a file rewritten or replaced is always parsed anew. Callers must not change
    what they are given.
    """
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the path of a .gguf file")
    try:
        with path.open("rb") as f:
            file_size = f.seek(0, 2)
            if file_size < MIN_FILE_SIZE:
                raise UserError(f"{path} is not a GGUF file (only {file_size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if data[:4] != GGUF_MAGIC:
                    raise UserError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
                key = (str(path.resolve()), frozenset(keep_strings))
                kept = _kept_header(key, data)
                if kept is not None:
                    return kept
                parser = _HeaderParser(data, keep_strings)
                try:
                    header = parser.parse()
                except _Damaged as exc:
                    raise UserError(f"{path} is a corrupted or truncated GGUF: {exc}") from None
                _keep_header(key, _KeptHeader(header, parser.pos, _digest(data, parser.pos)))
                return header
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class _KeptHeader:
    header: GGUFHeader
    n_bytes: int                # the header's bytes: key/values and tensor table
    digest: bytes


KEPT_HEADERS = 16
_KEPT: OrderedDict[tuple, _KeptHeader] = OrderedDict()
_KEPT_LOCK = threading.Lock()


def _digest(data: mmap.mmap, n_bytes: int) -> bytes:
    return hashlib.blake2b(data[:n_bytes], digest_size=16).digest()


def _kept_header(key: tuple, data: mmap.mmap) -> GGUFHeader | None:
    with _KEPT_LOCK:
        kept = _KEPT.get(key)
    if kept is None or kept.header.file_size != len(data) or _digest(data, kept.n_bytes) != kept.digest:
        return None
    with _KEPT_LOCK:
        if key in _KEPT:
            _KEPT.move_to_end(key)
    return kept.header


def _keep_header(key: tuple, kept: _KeptHeader) -> None:
    with _KEPT_LOCK:
        _KEPT[key] = kept
        while len(_KEPT) > KEPT_HEADERS:
            _KEPT.popitem(last=False)


class _Damaged(Exception):
    pass


class _HeaderParser:
    """A bounds-checked reader over the header bytes; every count is checked against them."""

    def __init__(self, data: mmap.mmap, keep_strings: frozenset[str] | set[str] = KEPT_STRING_ARRAYS):
        self.keep_strings = keep_strings
        self.data = data
        self.file_size = len(data)
        self.pos = 4

    def parse(self) -> GGUFHeader:
        version = self._scalar("<I")
        if version not in SUPPORTED_VERSIONS:
            raise _Damaged(f"unsupported GGUF version {version} (expected 2 or 3)")
        n_tensors = self._count("<Q", min_item_bytes=8 + 4 + 8 + 4 + 8, what="tensor count")
        n_fields = self._count("<Q", min_item_bytes=8 + 4, what="key/value count")
        fields: dict[str, object] = {}
        for _ in range(n_fields):
            key = self._string()
            if key in fields:
                raise _Damaged(f"key {key!r} appears twice")
            fields[key] = self._value(self._value_type(), keep_strings=key in self.keep_strings)
        infos = [self._tensor_info() for _ in range(n_tensors)]

        alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _Damaged(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-self.pos // alignment) * alignment
        tensors, names = [], set()
        for name, shape, ggml_type, relative_offset in infos:
            if name in names:
                raise _Damaged(f"tensor {name} appears twice")
            names.add(name)
            block, block_bytes = GGML_QUANT_SIZES[ggml_type]
            if shape[0] % block:
                raise _Damaged(f"tensor {name}: row length {shape[0]} is not a multiple of {block} "
                               f"for {ggml_type.name}")
            n_bytes = shape[0] // block * block_bytes
            for dim in shape[1:]:
                n_bytes *= dim
            offset = data_start + relative_offset
            if relative_offset % alignment:
                raise _Damaged(f"tensor {name}: data offset {relative_offset} is not aligned to {alignment}")
            if offset + n_bytes > self.file_size:
                raise _Damaged(f"tensor {name} ends at byte {offset + n_bytes}, "
                               f"past the end of the file ({self.file_size})")
            tensors.append(TensorInfo(name, shape, ggml_type, offset, n_bytes))
        return GGUFHeader(version=version, fields=fields, tensors=tensors, file_size=self.file_size)

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise _Damaged(f"the file ends early (at byte {len(self.data)}, needed {self.pos + n})")

    def _scalar(self, fmt: str):
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def _count(self, fmt: str, *, min_item_bytes: int, what: str) -> int:
        count = self._scalar(fmt)
        if count * min_item_bytes > len(self.data) - self.pos:
            raise _Damaged(f"{what} {count} cannot fit in the file")
        return count

    def _string(self) -> str:
        length = self._scalar("<Q")
        self._need(length)
        raw = bytes(self.data[self.pos:self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Damaged(f"a string at byte {self.pos - length} is not UTF-8") from None

    def _value_type(self) -> GGUFValueType:
        raw = self._scalar("<I")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise _Damaged(f"unknown value type {raw} at byte {self.pos - 4}") from None

    def _value(self, value_type: GGUFValueType, *, keep_strings: bool = True):
        if value_type == GGUFValueType.STRING:
            return self._string()
        if value_type != GGUFValueType.ARRAY:
            return self._scalar(_SCALARS[value_type])
        item_type = self._value_type()
        if item_type == GGUFValueType.ARRAY:
            raise _Damaged("nested arrays are not used by GGUF models")
        if item_type == GGUFValueType.STRING:
            count = self._count("<Q", min_item_bytes=8, what="string array length")
            return self._string_array(count, keep_strings)
        fmt = _SCALARS[item_type]
        size = struct.calcsize(fmt)
        count = self._count("<Q", min_item_bytes=size, what="array length")
        values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.data, self.pos))
        self.pos += count * size
        return values

    def _string_array(self, count: int, keep: bool) -> list[str] | int:
        """`count` strings (or, not kept, their count): a tight loop, as the Qwen vocabulary and
        merges are 151k strings each and this parse is on every command's path to a model."""
        data, end, pos = self.data, len(self.data), self.pos
        unpack = _U64.unpack_from
        raw = []
        for _ in range(count):
            if pos + 8 > end:
                raise _Damaged(f"the file ends early (at byte {end}, needed {pos + 8})")
            (length,) = unpack(data, pos)
            pos += 8
            if pos + length > end:
                raise _Damaged(f"the file ends early (at byte {end}, needed {pos + length})")
            if keep:
                raw.append(data[pos:pos + length])
            pos += length
        if not keep:
            self.pos = pos
            return count
        try:
            strings = [item.decode("utf-8") for item in raw]
        except UnicodeDecodeError:
            raise _Damaged(f"a string in the array at byte {self.pos} is not UTF-8") from None
        self.pos = pos
        return strings

    def _tensor_info(self) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
        name = self._string()
        n_dims = self._scalar("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Damaged(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(self._scalar("<Q") for _ in range(n_dims))
        if any(dim == 0 for dim in shape) or any(dim > self.file_size for dim in shape):
            raise _Damaged(f"tensor {name} has an impossible shape {shape}")
        raw_type = self._scalar("<I")
        try:
            ggml_type = GGMLQuantizationType(raw_type)
        except ValueError:
            raise _Damaged(f"tensor {name} has unknown type {raw_type}") from None
        if ggml_type not in GGML_QUANT_SIZES:
            raise _Damaged(f"tensor {name} has type {ggml_type.name}, which has no known size")
        return name, shape, ggml_type, self._scalar("<Q")


def read_tensors(path: Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The values of the (small) tensors named, those present, as float32 rows, dequantized."""
    header = read_header(Path(path), keep_strings=frozenset())
    wanted = set(names)
    values = {}
    with Path(path).open("rb") as f:
        for info in header.tensors:
            if info.name in wanted:
                f.seek(info.offset)
                raw = np.frombuffer(f.read(info.n_bytes), dtype=np.uint8)
                rows = info.n_elements // info.shape[0]
                values[info.name] = np.asarray(
                    dequantize(raw.reshape(rows, -1), info.type), dtype=np.float32).reshape(rows, info.shape[0])
    return values


def _file_type_name(value) -> str:
    if value is None:
        return "unknown"
    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        return str(value)


HASH_BLOCK_BYTES = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (a GGUF's content identity: records and collections compare it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()
