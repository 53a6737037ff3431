"""Progress on stderr: bars, shown only when asked for and when stderr is a terminal, and sizes in words."""

from __future__ import annotations

import contextlib
import sys

from tqdm import tqdm


@contextlib.contextmanager
def progress_bar(*, total: int, enabled: bool, unit: str, desc: str | None = None):
    """A tqdm bar, or None when disabled; callers call `bar.update(n)` only if it exists."""
    if not enabled:
        yield None
        return
    with tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, file=sys.stderr,
              dynamic_ncols=True, disable=not sys.stderr.isatty(), leave=False) as bar:
        yield bar


def size_text(n_bytes: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")
