"""Named collections: SQLite collections kept in the user's data folder, found from any folder.

    database("notes")        # ~/.local/share/qwen3-gguf/collections/notes.db on Linux
    for entry in listing():  # every named collection, with its model and size
        print(entry.name, entry.files, entry.chunks)

`index`, `search` and `mcp` take `-c NAME` for a named collection, `--db PATH` for a database
anywhere, and use the collection named `default` when given neither.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

DEFAULT_COLLECTION = "default"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SUFFIX = ".db"


def home() -> Path:
    """The folder holding the named collections (platformdirs' user data folder, so XDG_DATA_HOME on Linux)."""
    from platformdirs import user_data_path

    return user_data_path("qwen3-gguf", appauthor=False) / "collections"


def database(name: str, *, must_exist: bool = False) -> Path:
    """The database file of the collection `name`; with `must_exist`, a UserError when there is none."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"collection name {name!r}: use letters, digits, '.', '_' and '-' (at most 64, "
                        "starting with a letter or digit)")
    path = home() / f"{name}{SUFFIX}"
    if must_exist and not path.is_file():
        known = ", ".join(names()) or "none yet"
        raise UserError(f"no collection named {name!r} (collections: {known}); "
                        f"create it with: qwen3-gguf index PATH... -c {name}")
    if not must_exist:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def resolve(db: str | Path | None, name: str | None, *, must_exist: bool = False) -> Path:
    """The database that --db PATH or -c NAME means (the default collection when neither is given)."""
    if db is not None and name is not None:
        raise UserError("give either --db PATH or -c/--collection NAME, not both")
    if db is not None:
        return Path(db)
    return database(name or DEFAULT_COLLECTION, must_exist=must_exist)


def names() -> list[str]:
    folder = home()
    if not folder.is_dir():
        return []
    return sorted(path.name[: -len(SUFFIX)] for path in folder.glob(f"*{SUFFIX}")
                  if NAME_PATTERN.fullmatch(path.name[: -len(SUFFIX)]))


@dataclass(frozen=True)
class Listing:
    name: str
    model: str
    dim: int | None
    files: int
    chunks: int
    bytes: int          # the database and the vector files beside it


def listing() -> list[Listing]:
    """Every named collection with its model, files, chunks and size on disk."""
    from .store import Collection

    entries = []
    for name in names():
        path = database(name)
        with Collection(path, create=False) as collection:
            entries.append(Listing(name, collection.metadata.get("model", "-"), collection.dim,
                                   collection.document_count, len(collection), _size_on_disk(path)))
    return entries


def _size_on_disk(path: Path) -> int:
    siblings = [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", ".vectors", ".vectors-delta"))]
    return sum(os.path.getsize(p) for p in siblings if p.is_file())
