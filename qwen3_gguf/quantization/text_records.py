"""Query/document text files: the calibration set of `imatrix` and the evaluation set of `sweep`.

A JSONL file holds one record per line with "query", "document" or both (a query and a
document that answers it), and optionally "instruction" (the query's task description). Any
other file is plain text: each blank-line-separated paragraph is a document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class TextRecord:
    """A query, a document that answers it, or both."""

    query: str | None = None
    document: str | None = None
    instruction: str | None = None    # the query's task description; the default one if None


def read_text_records(path: Path, what: str) -> list[TextRecord]:
    """The records of `path`; `what` names the file in errors ("calibration file", ...)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    if path.suffix == ".jsonl":
        records = [_record(path, number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        records = [TextRecord(document=p.strip()) for p in text.split("\n\n") if p.strip()]
    if not records:
        raise UserError(f"{what} {path} holds no text")
    return records


def _record(path: Path, number: int, line: str) -> TextRecord:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}:{number}: not a JSON object")
    values = {key: record.get(key) for key in ("query", "document", "instruction")}
    for key, value in values.items():
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UserError(f"{path}:{number}: {key!r} must be a non-empty string")
    if values["query"] is None and values["document"] is None:
        raise UserError(f"{path}:{number}: a record needs a 'query', a 'document' or both")
    return TextRecord(**values)
