"""Carrying out a plan with llama.cpp's quantizer, checked against the plan before the rename."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import temporary_path_for
from ..errors import UserError
from ..gguf_file import read_header
from ..llama_quantize import QuantizeJob, run_quantize
from ..progress import progress_bar
from ..runtime import default_threads
from .plan import QuantPlan


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    plan: QuantPlan
    file_size: int
    seconds: float


def quantize(plan: QuantPlan, output: str | Path, *, threads: int | None = None, show_progress: bool = False,
             verbose: bool = False) -> QuantizeResult:
    """Carry out `plan` with llama_model_quantize into `output` (written under a temporary
    name and renamed once its tensor types are checked against the plan)."""
    output = Path(output)
    if output.exists() and output.resolve() == plan.model.path.resolve():
        raise UserError(f"the output {output} is the input model; choose another file name")
    partial = temporary_path_for(output)
    started = time.perf_counter()
    job = QuantizeJob(
        source=plan.model.path, destination=partial, file_type=int(plan.quant_type.file_type.ftype),
        tensor_types=plan.overrides, importance=plan.imatrix.importance() if plan.imatrix else None,
        threads=threads or default_threads(), verbose=verbose,
    )
    try:
        with progress_bar(total=len(plan.tensors), enabled=show_progress, unit="tensor",
                          desc=f"quantize {plan.quant_type.name}") as bar:
            run_quantize(job, on_tensor=(lambda: bar.update(1)) if bar is not None else None)
        written = {t.name: t.type for t in read_header(partial).tensors}
        planned = {t.name: t.type for t in plan.tensors}
        if written != planned:
            differing = sorted(name for name in planned if written.get(name) != planned[name])
            raise RuntimeError(f"llama.cpp wrote other tensor types than planned for {', '.join(differing[:5])}")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return QuantizeResult(path=output, plan=plan, file_size=output.stat().st_size,
                          seconds=time.perf_counter() - started)
