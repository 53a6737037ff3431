"""The one way this project writes a file: into a temporary name beside the target, then rename.

A reader never sees a half-written file under the real name: the data is flushed and fsynced
before the rename, and an error or Ctrl-C removes the temporary file and leaves an existing
target as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

TEMPORARY_SUFFIX = ".partial"


def temporary_path_for(target: Path) -> Path:
    """A new, empty, hidden file beside `target`; creating it proves the folder writable."""
    if target.is_dir():
        raise UserError(f"{target} is a folder; give a file name to write")
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    try:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileNotFoundError:
        raise UserError(f"cannot write {target}: the folder {target.parent} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}") from None
    return temporary


def ensure_writable(target: str | Path) -> None:
    """Refuse, before any work, a target that could not be written."""
    temporary_path_for(Path(target)).unlink()


@contextlib.contextmanager
def atomic_paths(*targets: str | Path) -> Iterator[list[Path]]:
    """Temporary paths for `targets`, renamed onto them (in reverse order) when the block succeeds.

    Several targets that belong together (a .npy and its sidecar) appear together: the first
    target is renamed last, so its presence means the others are complete.
    """
    final = [Path(t) for t in targets]
    temporaries: list[Path] = []
    try:
        for target in final:
            temporaries.append(temporary_path_for(target))
        yield temporaries
        for temporary in temporaries:
            _fsync(temporary)
        for temporary, target in zip(reversed(temporaries), reversed(final)):
            os.replace(temporary, target)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {final[0]}; nothing was written") from None
        raise
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """One temporary path for `target`; see `atomic_paths`."""
    with atomic_paths(target) as (temporary,):
        yield temporary


def write_text_atomically(target: str | Path, text: str) -> Path:
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes_atomically(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)
    return Path(target)


def _fsync(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
