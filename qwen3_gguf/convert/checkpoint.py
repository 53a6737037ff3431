"""The input: a local Hugging Face checkpoint folder, checked and indexed, weights unread."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .safetensors import TensorEntry, read_weights


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder with its config.json parsed and its tensors indexed (not read)."""

    folder: Path
    config: dict[str, Any]
    tensors: dict[str, TensorEntry]

    @property
    def name(self) -> str:
        """The model's name: the README title, else the Hub repository or folder name."""
        return readme_title(self.folder) or folder_names(self.folder)[-1]


def open_checkpoint(src: Path) -> Checkpoint:
    """Check that `src` holds a checkpoint, parse config.json and index the safetensors."""
    if not src.exists():
        raise UserError(f"checkpoint folder {src} does not exist")
    if not src.is_dir():
        raise UserError(f"{src} is not a folder (expected a Hugging Face checkpoint folder)")
    for required in ("config.json", "tokenizer.json"):
        if not (src / required).is_file():
            raise UserError(f"{src}: missing {required}")
    return Checkpoint(src, read_json(src / "config.json"), read_weights(src))


def read_json(path: Path) -> Any:
    """Parse a JSON file, as a UserError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise UserError(f"{path}: cannot read JSON ({error})") from None


def readme_title(folder: Path) -> str | None:
    """The first Markdown heading of README.md (after any YAML front matter), or None."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL)
    heading = re.search(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, flags=re.MULTILINE)
    return heading.group(1) if heading else None


def folder_names(folder: Path) -> list[str]:
    """Names that may identify the model: the folder's own, then, inside a Hugging Face cache
    (models--Org--Name/snapshots/<revision>), the repository's."""
    names = [folder.resolve().name]
    for parent in folder.resolve().parents:
        if parent.name.startswith("models--"):
            names.append(parent.name.rsplit("--", 1)[-1])
            break
    return names
