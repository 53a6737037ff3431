"""The model catalog: names such as `qwen3-embedding-4b:q4_k_m` → GGUF files.

The catalog is `models.toml`, shipped with the package. A name is `MODEL[:TYPE[+RECIPE]]`, TYPE any
llama.cpp type or hybrid (q4_k_m, iq4_xs, bf16_q8_0) and RECIPE a shipped recipe (bump-edges):

- a published GGUF of that TYPE (and no recipe) resolves through huggingface_hub's cache, so its
  `HF_HOME`, tokens and offline mode (`HF_HUB_OFFLINE=1`) apply as everywhere else;
- any other name is a build, made from the model's source checkpoint by `qwen3_gguf.builds` and
  kept in the build cache (`build_cache_dir()`): it resolves once its manifest is written.

`hf://OWNER/REPO/FILE.gguf` names any GGUF on the Hub; anything else is a path.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import hub
from .data import catalog_file
from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

BUILD_CACHE_ENV = "QWEN3_GGUF_BUILD_CACHE"
NAME = re.compile(r"^(?P<model>[^:+]+)(?::(?P<quant>[^:+]+)(?:\+(?P<recipe>[^:+]+))?)?$")
DEFAULT_RECIPE = "llama-default"   # the type's own choices: what published GGUFs are


@dataclass(frozen=True)
class GGUFSource:
    repo: str
    file: str


@dataclass(frozen=True)
class CatalogModel:
    name: str
    kind: str                       # "embedding" or "reranker"
    source: str                     # the Hugging Face checkpoint it is made from (builds)
    dimension: int                  # listed by `qwen3-gguf models`
    default_quant: str              # the TYPE of a name without one
    quants: dict[str, GGUFSource]   # TYPE → published GGUF


@dataclass(frozen=True)
class CatalogEntry:
    """One model at one type and recipe: what `MODEL:TYPE[+RECIPE]` means."""

    model: CatalogModel
    quant: str                      # lower case, as written: q4_k_m, bf16_q8_0
    recipe: str | None              # None: the type's own per-tensor choices
    published: GGUFSource | None    # None: made by a build

    @property
    def spec(self) -> str:
        return f"{self.model.name}:{self.quant}" + (f"+{self.recipe}" if self.recipe else "")


class NotBuilt(UserError):
    """A name with no published GGUF whose build has not been made (qwen3_gguf.builds makes it)."""

    def __init__(self, entry: CatalogEntry):
        super().__init__(f"{entry.spec} has no published GGUF and is not built yet; build it with: "
                         f"qwen3-gguf models --build {entry.spec} (from Python: "
                         f"qwen3_gguf.builds.build_model({entry.spec!r}))")
        self.entry = entry


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
    """The catalog entry for `MODEL[:TYPE[+RECIPE]]` (any case); a UserError naming close matches
    if the model is unknown. TYPE and RECIPE of a build are checked by `qwen3_gguf.builds`."""
    catalog = load_catalog()
    match = NAME.match(spec.strip().lower())
    model = catalog.get(match["model"]) if match else None
    if model is None:
        known = [m.name for m in catalog.values() if kind is None or m.kind == kind]
        hint = did_you_mean(match["model"] if match else spec.strip().lower(), known)
        raise UserError(f"{spec!r} is neither a GGUF file nor a model in the catalog ({hint}known: "
                        f"{', '.join(known)}); see qwen3-gguf models")
    if kind is not None and model.kind != kind:
        raise UserError(f"{model.name} is {_kind_phrase(model.kind)}, not {_kind_phrase(kind)}")
    quant = match["quant"] or model.default_quant
    recipe = match["recipe"] if match["recipe"] != DEFAULT_RECIPE else None
    published = model.quants.get(quant) if recipe is None else None
    return CatalogEntry(model, quant, recipe, published)


def did_you_mean(word: str, choices: list[str]) -> str:
    """'did you mean X? ' naming the closest of `choices` (all that are equally close), or ''."""
    scores = {choice: difflib.SequenceMatcher(None, word, choice).ratio() for choice in choices}
    best = max(scores.values(), default=0.0)
    close = [choice for choice, score in scores.items() if score >= max(best, 0.6)]
    return f"did you mean {' or '.join(close)}? " if close else ""


def _kind_phrase(kind: str) -> str:
    return "a reranker" if kind == "reranker" else "an embedding model"


# --- published GGUFs -------------------------------------------------------------------------


def cached_path(entry: CatalogEntry) -> Path | None:
    """Where the entry's published GGUF lies in the Hugging Face cache, or None if it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.published.repo, entry.published.file)
    return Path(found) if isinstance(found, str) else None


def download(entry: CatalogEntry) -> Path:
    """The entry's published GGUF from the cache, downloading it first when the Hub can be reached."""
    return hub.hub_file(entry.published.repo, entry.published.file,
                        what=f"{entry.spec} ({entry.published.file} from {entry.published.repo})",
                        fetch=f"qwen3-gguf models --download {entry.spec}")


# --- builds ----------------------------------------------------------------------------------


def build_cache_dir() -> Path:
    """Where builds live: $QWEN3_GGUF_BUILD_CACHE, else $XDG_CACHE_HOME/qwen3-gguf/builds
    (~/.cache/qwen3-gguf/builds)."""
    if configured := os.environ.get(BUILD_CACHE_ENV):
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwen3-gguf" / "builds"


@dataclass(frozen=True)
class BuildPaths:
    gguf: Path
    manifest: Path


def build_paths(entry: CatalogEntry) -> BuildPaths:
    """BUILDS/MODEL/MODEL-TYPE[+RECIPE].gguf and its manifest .json beside it."""
    stem = entry.spec.replace(":", "-")
    folder = build_cache_dir() / entry.model.name
    return BuildPaths(folder / f"{stem}.gguf", folder / f"{stem}.json")


def read_build(paths: BuildPaths) -> dict | None:
    """The manifest of a finished build (its GGUF present, of the size it records), else None."""
    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
        if paths.gguf.stat().st_size == manifest["size"]:
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def list_builds() -> list[dict]:
    """The manifests of every finished build in the build cache, by name."""
    found = []
    for manifest_path in sorted(build_cache_dir().glob("*/*.json")):
        manifest = read_build(BuildPaths(manifest_path.with_suffix(".gguf"), manifest_path))
        if manifest is not None:
            found.append(manifest)
    return found


def resolve_model(name_or_path: str | Path, kind: str | None) -> Path:
    """The GGUF file for a path, an hf:// reference or a catalog name of `kind` (None: either kind):
    a published GGUF or a finished build (NotBuilt, a UserError, when the name needs a build that was
    not made)."""
    if isinstance(name_or_path, str) and hub.hf_reference(name_or_path):
        return hub.hf_gguf(name_or_path)
    if is_model_path(name_or_path):
        return Path(name_or_path)
    entry = lookup(str(name_or_path), kind)
    if entry.published is not None:
        return download(entry)
    paths = build_paths(entry)
    if read_build(paths) is None:
        raise NotBuilt(entry)
    return paths.gguf
