"""The conversion pipeline: read the checkpoint, decide its kind, describe it, stream the tensors,
publish the file."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import UserError
from .checkpoint import open_checkpoint, read_json
from .hparams import Qwen3HParams
from .kind import KINDS, decide_kind
from .metadata import add_metadata
from .tensors import RERANK_LABELS, find_embedding, output_type_named, plan_tensors
from .vocab import read_vocabulary
from .writer import check_output_path, write_gguf


@dataclass(frozen=True)
class ConversionResult:
    path: Path  # the written GGUF
    kind: str  # "embedding" | "reranker"
    kind_reason: str  # why this kind was chosen, e.g. "--kind reranker"
    outtype: str  # "f32" | "f16" | "bf16" | "q8_0"
    n_tensors: int
    n_bytes: int  # file size


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    outtype: str = "f16",
    kind: str = "auto",
    progress: bool = False,
) -> ConversionResult:
    """Convert the Hugging Face Qwen3 embedding or reranker checkpoint in `src` to the GGUF `out`.

    `kind` is "auto" (detected, see `detect_kind`), "embedding" or "reranker". Raises
    UserError for anything wrong with the input; never leaves a partial `out` behind.
    """
    output_type = output_type_named(outtype)
    if kind not in ("auto", *KINDS):
        raise UserError(f"unknown kind {kind!r} (valid: auto, {', '.join(KINDS)})")
    out = Path(out)
    check_output_path(out)

    checkpoint = open_checkpoint(Path(src))
    hparams = Qwen3HParams.from_config(checkpoint.config)
    if kind == "auto":
        kind, kind_reason = decide_kind(checkpoint.folder, checkpoint.config, checkpoint.tensors)
    else:
        kind_reason = f"--kind {kind}"

    embed_rows = find_embedding(checkpoint.tensors).shape[0]
    vocab = read_vocabulary(read_json(checkpoint.folder / "tokenizer.json"), n_rows=embed_rows)
    rerank_rows = None
    if kind == "reranker":
        rerank_rows = tuple(
            vocab.require(label, "the reranker's score head") for label in RERANK_LABELS
        )
    tensors = plan_tensors(checkpoint.tensors, hparams, output_type, rerank_rows)

    tokenizer_config_path = checkpoint.folder / "tokenizer_config.json"
    tokenizer_config = read_json(tokenizer_config_path) if tokenizer_config_path.is_file() else {}
    describe = partial(
        add_metadata,
        name=checkpoint.name,
        kind=kind,
        hparams=hparams,
        vocab=vocab,
        output_type=output_type,
        config=checkpoint.config,
        tokenizer_config=tokenizer_config,
    )
    write_gguf(out, describe, tensors, progress=progress)
    n_bytes = out.stat().st_size
    return ConversionResult(out, kind, kind_reason, output_type.name, len(tensors), n_bytes)
