"""Waiting on a process held at a point the test controls, so a signal or a kill lands there on
any CPU: the quantizer child held at its first tensor (llama_quantize.HOLD_AT_FIRST_TENSOR)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from qwen3_gguf.llama_quantize import HOLD_AT_FIRST_TENSOR

LIMIT_S = 300   # only a broken hold ever waits this long


def holding_quantizer(marker: Path) -> dict[str, str]:
    """Environment entries that hold the quantizer child at its first tensor, writing its pid to `marker`."""
    return {HOLD_AT_FIRST_TENSOR: str(marker)}


def held_quantizer_pid(marker: Path, process: subprocess.Popen) -> int:
    """The held child's pid, once it holds; fails if `process` ends first (then nothing was held)."""
    deadline = time.monotonic() + LIMIT_S
    while not marker.exists():
        assert process.poll() is None, f"the process ended (exit {process.returncode}) before the quantizer held"
        assert time.monotonic() < deadline, "the quantizer never held"
        time.sleep(0.01)
    return int(marker.read_text())


def wait_until_gone(pid: int) -> None:
    """Until `pid` has exited (a zombie waiting for a parent that is not ours counts as exited)."""
    deadline = time.monotonic() + LIMIT_S
    status = Path(f"/proc/{pid}/status")
    while status.exists():
        try:
            if "\nState:\tZ" in status.read_text():
                return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.01)
