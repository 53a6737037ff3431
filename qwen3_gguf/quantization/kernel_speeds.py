"""Kernel speeds: seconds per token of each weight matrix at each type, measured on this CPU and kept.

    type T ─ every quantizable tensor of MODEL at T (a uniform plan) ─▶ a temporary file, loaded
             the normal way (x86 repacks Q4_0, IQ4_NL and Q4_K here, so that is measured too)
           ─ decode one document (OpTimer on every graph node) ─▶ seconds per weight family
           ─ ÷ layers ÷ tokens ──────────────────────────────────▶ seconds per token per matrix shape

The matrices of a family have one shape in every layer, so a family's time over the layer count is
one matrix's. The token embedding's row lookup is timed too, and "rest" is what the decode spends
outside the weights (attention, norms, RoPE, graph and threads): a file's predicted seconds per
token are its matrices' seconds plus the rest.

The table is kept as JSON in the work folder, one file per machine identity (CPU model and flags,
the llama.cpp build and its system info, threads, document length): another CPU or another build
reads another file and measures again.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from gguf import GGMLQuantizationType

from ..atomic import write_text_atomically
from ..gguf_file import read_header
from .importance import ImportanceMatrix
from .llama_choice import quantizable
from .plan import plan_quantization
from .quantizer import quantize

DEFAULT_DOCUMENT_TOKENS = 512        # the runtime's default piece: what one long document is decoded in
RUNS = 3                             # median of this many decodes, after one to warm up
TOKEN_LOOKUP = "token embedding lookup"
FAMILY = re.compile(r"blk\.\d+\.(\w+)\.weight$")


@dataclass(frozen=True)
class MachineIdentity:
    """What a kernel speed depends on besides the matrix: the CPU, the llama.cpp build, threads."""

    cpu: str
    build: str
    threads: int

    def key(self, document_tokens: int) -> str:
        text = json.dumps([self.cpu, self.build, self.threads, document_tokens])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def this_machine(threads: int) -> MachineIdentity:
    """The CPU's model name and feature flags (/proc/cpuinfo, else platform) and llama.cpp's version
    and system info (the instruction sets it was built for)."""
    import llama_cpp

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        fields = dict(re.findall(r"^(model name|flags|Features)\s*:\s*(.*)$", cpuinfo.read_text(), re.MULTILINE))
        cpu = " | ".join(fields.get(k, "") for k in ("model name", "flags", "Features")) or cpu
    system = llama_cpp.llama_print_system_info().decode(errors="replace")
    return MachineIdentity(cpu=cpu, build=f"llama-cpp-python {llama_cpp.__version__} | {system}", threads=threads)


@dataclass(frozen=True)
class TypeSpeeds:
    """One type measured on one model: seconds per token of one matrix of each shape, and the rest."""

    kernels: dict[str, float]          # shape "ROWxCOLS" → seconds per token
    rest: float                        # seconds per token outside the weights


# A measurement: (model, type, file type, document tokens, threads, folder for the temporary file,
# importance matrix for the IQ types) → TypeSpeeds
Measure = Callable[[Path, GGMLQuantizationType, str, int, int, Path, ImportanceMatrix | None], TypeSpeeds]


def shape_key(shape) -> str:
    return "x".join(str(n) for n in shape)


def model_shapes(model: Path) -> dict[str, str]:
    """Tensor name → shape key, for the tensors a plan can type."""
    return {t.name: shape_key(t.shape) for t in read_header(model).tensors if quantizable(t)}


def model_signature(model: Path) -> str:
    """The rest of a decode depends on the model's shape (layers, heads, vocabulary), not its weights."""
    shapes = sorted(f"{name}:{shape}" for name, shape in model_shapes(model).items())
    return hashlib.sha256("\n".join(shapes).encode()).hexdigest()[:12]


class KernelSpeedCache:
    """The kernel-speed table of one machine identity, measured type by type on demand."""

    def __init__(self, work_dir: str | Path, machine: MachineIdentity, *,
                 document_tokens: int = DEFAULT_DOCUMENT_TOKENS, measure: Measure | None = None,
                 say: Callable[[str], None] = lambda line: None):
        self.machine, self.document_tokens, self.say = machine, document_tokens, say
        self.measure = measure or measure_type
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / f"kernel-speeds-{machine.key(document_tokens)}.json"
        self.measured_now = self.reused = 0
        if self.path.is_file():
            self.table = json.loads(self.path.read_text(encoding="utf-8"))
        else:
            self.table = {"machine": asdict(machine), "document_tokens": document_tokens, "kernels": {}, "rest": {}}

    def speeds(self, model: Path, ggml_type: GGMLQuantizationType, file_type: str,
               imatrix: ImportanceMatrix | None = None) -> TypeSpeeds:
        """`model`'s shapes at `ggml_type`: from the table when every shape and the rest are there,
        else measured (one uniform file of `file_type`, one document) and added to it."""
        shapes = set(model_shapes(model).values())
        kernels = self.table["kernels"].setdefault(ggml_type.name, {})
        rest_key = f"{ggml_type.name} {model_signature(model)}"
        if shapes <= set(kernels) and rest_key in self.table["rest"]:
            self.reused += 1
            return TypeSpeeds({s: kernels[s] for s in shapes}, self.table["rest"][rest_key])
        self.say(f"kernel speeds: {ggml_type.name} on this CPU ({self.document_tokens}-token document)")
        measured = self.measure(model, ggml_type, file_type, self.document_tokens, self.machine.threads,
                                self.work_dir, imatrix)
        kernels.update(measured.kernels)
        self.table["rest"][rest_key] = measured.rest
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path, json.dumps(self.table, indent=1) + "\n")
        self.measured_now += 1
        return TypeSpeeds({s: kernels[s] for s in shapes if s in kernels}, measured.rest)


# --- measuring ----------------------------------------------------------------------------------------

def measure_type(model: Path, ggml_type: GGMLQuantizationType, file_type: str, document_tokens: int, threads: int,
                 folder: Path, imatrix: ImportanceMatrix | None) -> TypeSpeeds:
    """Quantize every quantizable tensor of `model` to `ggml_type` in a file of `file_type` (the runtime
    picks its numerics by file type), decode one document, and turn the per-family matmul times into
    seconds per token of one matrix of each shape."""
    shapes = model_shapes(model)
    plan = plan_quantization(model, file_type, imatrix=imatrix,
                             tensor_types=[f"^{re.escape(n)}$={ggml_type.name}" for n in shapes])
    folder.mkdir(parents=True, exist_ok=True)
    uniform = folder / f"uniform-{ggml_type.name}.gguf"
    try:
        quantize(plan, uniform, threads=threads)
        wall, ops, n_layers, n_tokens = decode_document(uniform, document_tokens, threads)
    finally:
        uniform.unlink(missing_ok=True)
    kernels: dict[str, list[float]] = {}
    timed = 0.0
    for name, shape in shapes.items():
        family = FAMILY.search(name)
        if family and name.startswith("blk.0."):
            seconds = ops.get(f"matmul {family.group(1)}", 0.0)
            kernels.setdefault(shape, []).append(seconds / n_layers / n_tokens)
            timed += seconds
        elif name == "token_embd.weight":
            kernels.setdefault(shape, []).append(ops.get(TOKEN_LOOKUP, 0.0) / n_tokens)
            timed += ops.get(TOKEN_LOOKUP, 0.0)
    return TypeSpeeds({s: statistics.mean(v) for s, v in kernels.items()}, max(0.0, wall - timed) / n_tokens)


def decode_document(path: Path, document_tokens: int, threads: int) -> tuple[float, dict[str, float], int, int]:
    """One document decoded as the runtime decodes it: the median unprofiled wall time, the median
    seconds per operation group (OpTimer), the layer count and the tokens decoded.

    Timing every node costs a callback per node; the groups' seconds are scaled by the unprofiled
    over the profiled wall time, so that they add up to what an unprofiled decode spends."""
    import time

    import numpy as np

    from .. import runtime
    from ..gguf_file import read_model_file
    from ..runtime.batching import PooledRunner
    from ..runtime.op_profile import OpTimer

    runtime.init_backend()
    model = runtime.LlamaModel(path)
    pooling = runtime.POOLING_LAST if read_model_file(path).kind == "embedding" else runtime.POOLING_RANK
    timer = OpTimer()
    runner = PooledRunner(model, pooling=pooling, threads=threads, reuse_prefix=False, op_timer=timer)
    n_tokens = min(document_tokens, model.n_ctx_train)
    tokens = [int(t) for t in np.random.default_rng(0).integers(100, model.n_vocab, n_tokens)]
    walls, profiled_walls, ops = [], [], []
    try:
        timer.enabled = False
        runner.run([tokens])                               # warm-up: context sized, pages in
        for _ in range(RUNS):
            timer.enabled = False
            started = time.perf_counter()
            runner.run([tokens])
            walls.append(time.perf_counter() - started)
            timer.enabled = True
            timer.reset()
            started = time.perf_counter()
            runner.run([tokens])
            profiled_walls.append(time.perf_counter() - started)
            ops.append(dict(timer.seconds))
    finally:
        runner.close()
        model.close()
    groups = {g for run in ops for g in run}
    wall = statistics.median(walls)
    scale = wall / statistics.median(profiled_walls)
    medians = {g: scale * statistics.median(run.get(g, 0.0) for run in ops) for g in groups}
    n_layers = sum(1 for t in read_header(path).tensors if t.name.endswith("attn_norm.weight"))
    return wall, medians, n_layers, n_tokens
