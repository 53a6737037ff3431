"""Peak memory and time of `convert_checkpoint` on a 0.6B-shaped checkpoint.

The goal: peak RSS stays near the largest single tensor, not the checkpoint size (an 8B
checkpoint is 16 GB on a 24 GB machine). The checkpoint is synthetic: Qwen3-0.6B shapes
(hidden 1024, 28 layers, 16/8 heads, head_dim 128, FFN 3072, vocab 151,669, tied), random
BF16 weights and the real Qwen tokenizer files from tests/checkpoints.py (benchmarks/common.py
builds it). Each output type is converted in a fresh subprocess that reports
its own peak RSS (VmHWM, which counts memory-mapped file pages too).

    python benchmarks/convert_rss.py [--outtypes f16,bf16,q8_0,f32] [--workdir DIR]

Prints a table and writes benchmarks/convert_rss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import BENCH, MIB, ROOT, SHAPE, build_checkpoint, tensor_shapes

from qwen3_gguf.atomic import write_text_atomically

BYTES_PER_VALUE = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32}  # of the GGUF matrices

# Runs in the child: convert, then report time and this process's peak RSS. VmHWM (Linux)
# starts afresh at exec; ru_maxrss would include the RSS of the parent that forked us.
CHILD = f"""
import json, sys, time
sys.path.insert(0, {str(BENCH)!r})
from common import peak_rss
from qwen3_gguf.convert import convert_checkpoint

baseline = peak_rss()
start = time.perf_counter()
result = convert_checkpoint(sys.argv[1], sys.argv[2], outtype=sys.argv[3], kind="embedding")
seconds = time.perf_counter() - start
peak = peak_rss()
print(json.dumps({{"seconds": seconds, "peak_rss": peak, "import_rss": baseline,
                  "n_bytes": result.n_bytes, "n_tensors": result.n_tensors}}))
"""


def measure(checkpoint: Path, outtype: str, out_dir: Path) -> dict:
    out = out_dir / f"bench-{outtype}.gguf"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(checkpoint), str(out), outtype],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    out.unlink()
    return {"outtype": outtype, **json.loads(child.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outtypes", default="f16,bf16,q8_0,f32")
    parser.add_argument("--workdir", type=Path, help="keep the synthetic checkpoint here (reused)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        checkpoint = build_checkpoint(workdir / "qwen3-0.6b-shaped")
        shapes = tensor_shapes()
        largest = max(int(np.prod(shape)) * 2 for shape in shapes.values())
        checkpoint_bytes = (checkpoint / "model.safetensors").stat().st_size
        rows = [measure(checkpoint, outtype, workdir) for outtype in args.outtypes.split(",")]

    print(f"checkpoint: {checkpoint_bytes / MIB:,.0f} MiB BF16; largest tensor "
          f"(embed_tokens) {largest / MIB:,.0f} MiB BF16")
    columns = ("outtype", "seconds", "peak RSS MiB", "largest out tensor MiB", "GGUF MiB")
    print("  ".join(f"{c:>{max(len(c), 8)}}" for c in columns))
    for row in rows:
        row["largest_output_tensor"] = largest // 2 * BYTES_PER_VALUE[row["outtype"]]
        values = (row["outtype"], f"{row['seconds']:.1f}", f"{row['peak_rss'] / MIB:,.0f}",
                  f"{row['largest_output_tensor'] / MIB:,.0f}", f"{row['n_bytes'] / MIB:,.0f}")
        print("  ".join(f"{v:>{max(len(c), 8)}}" for c, v in zip(columns, values)))
    report = {
        "shape": SHAPE, "checkpoint_bytes": checkpoint_bytes, "largest_tensor_bytes": largest,
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "results": rows,
    }
    write_text_atomically(BENCH / "convert_rss.json", json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
