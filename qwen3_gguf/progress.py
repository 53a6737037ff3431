"""Progress bars on stderr, shown only when asked for and when stderr is a terminal."""

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
