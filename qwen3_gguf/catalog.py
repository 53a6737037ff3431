"""The model catalog: names such as `qwen3-embedding-4b:q4_k_m` → GGUF files in the Hugging Face cache.

The catalog is `models.toml`, shipped inside the package. Files are resolved with
huggingface_hub, so its cache (`HF_HOME`, `HF_HUB_CACHE`) and offline mode (`HF_HUB_OFFLINE=1`)
apply as they do everywhere else.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .data import catalog_file
from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class GGUFSource:
    repo: str
    file: str


@dataclass(frozen=True)
class CatalogModel:
    name: str
    kind: str                       # "embedding" or "reranker"
    source: str                     # the Hugging Face checkpoint it is made from
    dimension: int
    layers: int
    context_length: int
    default_instruction: str
    quants: dict[str, GGUFSource]   # quant name → published GGUF
    default_quant: str | None = None
    mrl_min_dimension: int | None = None


@dataclass(frozen=True)
class CatalogEntry:
    """One model at one quant: what `NAME:QUANT` means."""

    model: CatalogModel
    quant: str
    gguf: GGUFSource

    @property
    def spec(self) -> str:
        return f"{self.model.name}:{self.quant}"


@functools.cache
def _catalog_file() -> dict:
    return tomllib.loads(catalog_file().read_text(encoding="utf-8"))


@functools.cache
def load_catalog() -> dict[str, CatalogModel]:
    """The models of models.toml by name."""
    models = {}
    for raw in _catalog_file()["model"]:
        fields = {key: value for key, value in raw.items() if key != "quants"}
        quants = {quant: GGUFSource(**source) for quant, source in raw["quants"].items()}
        models[raw["name"]] = CatalogModel(quants=quants, **fields)
    return models


def default_embedding_model() -> str:
    """The catalog name `qwen3-gguf embed` uses when no -m is given."""
    return _catalog_file()["default_embedding"]


def is_model_path(name_or_path: str | Path) -> bool:
    """A Path, a .gguf name, anything with a folder separator, or an existing file is a path."""
    if isinstance(name_or_path, Path):
        return True
    text = str(name_or_path)
    return text.lower().endswith(".gguf") or "/" in text or os.sep in text or os.path.exists(text)


def lookup(spec: str, kind: str | None = None) -> CatalogEntry:
    """The catalog entry for `NAME` or `NAME:QUANT` (any case); a UserError if there is none."""
    name, _, quant = spec.strip().lower().partition(":")
    catalog = load_catalog()
    model = catalog.get(name)
    if model is None:
        known = ", ".join(m.name for m in catalog.values() if kind is None or m.kind == kind)
        raise UserError(f"{spec!r} is neither a GGUF file nor a model in the catalog (known: {known}); "
                        "see qwen3-gguf models")
    if kind is not None and model.kind != kind:
        raise UserError(f"{model.name} is {'a reranker' if model.kind == 'reranker' else 'an embedding model'}, "
                        f"not {'a reranker' if kind == 'reranker' else 'an embedding model'}")
    if not model.quants:
        raise UserError(f"no published GGUF of {model.name} is known; convert its checkpoint: "
                        f"hf download {model.source} --local-dir {model.name} && "
                        f"qwen3-gguf convert {model.name} -o {model.name}.gguf")
    quant = quant or model.default_quant
    if quant not in model.quants:
        raise UserError(f"{model.name} has no {quant} GGUF in the catalog; available: {', '.join(model.quants)}")
    return CatalogEntry(model, quant, model.quants[quant])


def cached_path(entry: CatalogEntry) -> Path | None:
    """Where the entry's GGUF lies in the Hugging Face cache, or None if it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.gguf.repo, entry.gguf.file)
    return Path(found) if isinstance(found, str) else None


def download(entry: CatalogEntry) -> Path:
    """The entry's GGUF from the cache, downloading it first when online and not cached."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return Path(hf_hub_download(entry.gguf.repo, entry.gguf.file))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise UserError(
            f"{entry.spec} ({entry.gguf.file} from {entry.gguf.repo}) is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {why}; fetch it with: qwen3-gguf models --download {entry.spec} "
            f"(or: hf download {entry.gguf.repo} {entry.gguf.file})"
        ) from None
    except HfHubHTTPError as exc:
        reason = str(exc).splitlines()[0]
        raise UserError(f"could not download {entry.gguf.file} from {entry.gguf.repo}: {reason}") from None


def resolve_model(name_or_path: str | Path, kind: str) -> Path:
    """The GGUF file for a path or a catalog name (`qwen3-embedding-0.6b`, `…-4b:q4_k_m`)."""
    if is_model_path(name_or_path):
        return Path(name_or_path)
    return download(lookup(str(name_or_path), kind))
