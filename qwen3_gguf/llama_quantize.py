"""llama_model_quantize in a child process.

llama_model_quantize cannot be interrupted from Python (a Ctrl-C raised inside a ctypes
callback is swallowed), so it runs in a child Python process that the parent can kill. The
job goes to the child pickled on stdin; the child reports each tensor it starts on (read
off llama.cpp's log) and finally llama.cpp's status, one line each on stdout.

It sits at the package's top, outside `quantization`, because the child imports it: the
`quantization` package's own imports cost the child ~0.2 s more on every file quantized.

Tests interrupt a real quantization through HOLD_AT_FIRST_TENSOR: however fast the CPU, the
child is then provably mid-file when the test signals.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import re
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama
import numpy as np

from .atomic import write_text_atomically
from .errors import UserError

_TENSOR_LOG_LINE = re.compile(rb"^\[\s*\d+/\s*\d+\]")
# The child finds this package where the parent found it (last on its path: nothing is shadowed).
_CHILD_COMMAND = ("import sys; sys.path.append({root!r}); "
                  "from qwen3_gguf.llama_quantize import quantize_in_child; quantize_in_child()")
# For tests: a file the child writes (holding its pid) when it starts its first tensor; it then
# waits, with the output file open and unfinished, until its parent is gone or kills it.
HOLD_AT_FIRST_TENSOR = "QWEN3_GGUF_TEST_HOLD_QUANTIZER"


@dataclass(frozen=True)
class QuantizeJob:
    source: Path
    destination: Path
    file_type: int                                  # llama_ftype
    tensor_types: tuple[tuple[str, int], ...]       # (regex, ggml_type), first match wins
    importance: dict[str, np.ndarray] | None        # weight name → mean squared input per column
    threads: int
    verbose: bool = False


def run_quantize(job: QuantizeJob, *, on_tensor=None) -> None:
    """Quantize `job.source` into `job.destination`; `on_tensor()` is called as each tensor starts.

    A KeyboardInterrupt (or any exception from `on_tensor`) kills the child at once and
    propagates; the caller removes the partial file.
    """
    command = _CHILD_COMMAND.format(root=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             start_new_session=os.name == "posix")  # a terminal's Ctrl-C reaches us, not it
    status = None
    try:
        pickle.dump(job, child.stdin)
        child.stdin.close()
        for line in child.stdout:
            if line == b"tensor\n":
                if on_tensor is not None:
                    on_tensor()
            elif line.startswith(b"status "):
                status = int(line.split()[1])
        child.wait()
    except BaseException:
        child.kill()
        child.wait()
        raise
    finally:
        child.stdout.close()
    if status != 0:
        reason = f"status {status}" if status is not None else f"the process died with exit code {child.returncode}"
        raise UserError(f"llama.cpp could not quantize {job.source} ({reason}; run with --verbose to see why)")


def quantize_in_child() -> None:
    """The child's side of run_quantize: read the job from stdin, report on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides, and kills us
    report_to = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever llama.cpp prints itself must not mix into the reports
    job: QuantizeJob = pickle.load(sys.stdin.buffer)

    hold_marker = os.environ.get(HOLD_AT_FIRST_TENSOR)

    @llama.llama_log_callback
    def on_log(level, text, user_data):  # noqa: ARG001 - ctypes callback signature
        if _TENSOR_LOG_LINE.match(text):
            report_to.write("tensor\n")
            if hold_marker:
                _hold_until_parent_is_gone(Path(hold_marker), report_to)
        if job.verbose:
            sys.stderr.write(text.decode("utf-8", errors="replace"))

    llama.llama_log_set(on_log, ctypes.c_void_p())
    llama.llama_backend_init()
    params = llama.llama_model_quantize_default_params()
    params.nthread = job.threads
    params.ftype = job.file_type
    keep_alive = []  # what llama.cpp reads through pointers during the call
    if job.tensor_types:
        overrides = (llama.llama_model_tensor_override * (len(job.tensor_types) + 1))()
        for entry, (pattern, ggml_type) in zip(overrides, job.tensor_types):
            keep_alive.append(pattern.encode())
            entry.pattern, entry.type = keep_alive[-1], ggml_type
        overrides[-1].pattern = None
        params.tt_overrides = overrides
        keep_alive.append(overrides)
    if job.importance:
        entries = (llama.llama_model_imatrix_data * (len(job.importance) + 1))()
        for entry, (name, values) in zip(entries, job.importance.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep_alive += [name.encode(), values]
            entry.name = keep_alive[-2]
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = values.size
        entries[-1].name = None
        params.imatrix = entries
        keep_alive.append(entries)
    status = llama.llama_model_quantize(str(job.source).encode(), str(job.destination).encode(),
                                        ctypes.byref(params))
    report_to.write(f"status {status}\n")
    report_to.close()


def _hold_until_parent_is_gone(marker: Path, report_to) -> None:
    """Write our pid to `marker`, then block until the parent closes its end of the report pipe
    (it died, or it is killing us) and exit without writing another byte."""
    write_text_atomically(marker, str(os.getpid()))
    waiting = select.poll()
    waiting.register(report_to.fileno(), 0)  # a pipe's write end reports POLLERR once its reader is gone
    waiting.poll()
    os._exit(1)
