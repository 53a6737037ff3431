"""Where one document's decode spends its time, by kind of work: a Linux `perf` profile, bucketed.

    python benchmarks/profile_perf.py --file f16 --tokens 2048     # 4-layer 0.6B shape, as profile_documents.py
    python benchmarks/profile_perf.py --file q8_0 --tokens 512 --repeats 6

Runs the engine with its defaults on one random-token document under `perf record` (perf must be
installed; its samples cover the whole child, model load included, so the repeats keep the
decode dominant), then sums the samples of llama.cpp's CPU library by what the code does:
matrix kernels (tinyBLAS and the repacked GEMMs are static functions without symbols in the
wheel, so they count together), the attention scores (with an F32 KV cache Q·K goes through
ggml_vec_dot_f32, one dot product at a time, because the query reaches it permuted), softmax,
the mul_mat driver, copies. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import EOS, Engine, layered_models


def decode(file_type: str, n_tokens: int, repeats: int, layers: int) -> None:
    """The profiled child: one document of n_tokens, decoded `repeats` times with every default."""
    engine = Engine(layered_models(layers)[file_type], None, None, None, threads=2)
    tokens = [int(t) for t in np.random.default_rng(0).integers(1000, 100000, n_tokens - 1)] + [EOS]
    for _ in range(repeats):
        engine.seconds(tokens)


def bucket(dso: str, symbol: str) -> str:
    if "ggml-cpu" not in dso:
        return "memcpy/memmove (libc)" if "libc" in dso and "mem" in symbol else "outside ggml-cpu (Python, BLAS, ...)"
    if symbol.startswith("0x"):
        return "matrix kernels (tinyBLAS, repacked GEMM: no symbols)"
    if symbol == "ggml_vec_dot_f32":
        return "attention scores Q·K (ggml_vec_dot_f32)"
    if "soft_max" in symbol:
        return "attention softmax"
    if re.match(r"ggml_vec_dot_(q|iq)", symbol) or "gemm" in symbol or "gemv" in symbol:
        return "quantized dot products (ggml_vec_dot_q*)"
    if symbol.startswith("ggml_compute_forward_mul_mat"):
        return "mul_mat driver"
    return "other ggml-cpu ops (norms, RoPE, adds, copies)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default="f16", choices=("f16", "q8_0", "f32", "bf16"))
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        decode(args.file, args.tokens, args.repeats, args.layers)
        return
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "perf.data"
        subprocess.run(["perf", "record", "-q", "-o", str(data), sys.executable, __file__, "--child",
                        "--file", args.file, "--tokens", str(args.tokens), "--repeats", str(args.repeats),
                        "--layers", str(args.layers)], check=True)
        report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
                                 "--stdio", "-g", "none"], capture_output=True, text=True, check=True).stdout
    shares: dict[str, float] = defaultdict(float)
    for line in report.splitlines():
        found = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(\S+)", line)
        if found:
            shares[bucket(found.group(2), found.group(3))] += float(found.group(1))
    total = sum(shares.values())
    print(f"{args.file.upper()} file, one document of {args.tokens:,} tokens, {args.layers} layers of the 0.6B shape, "
          f"engine defaults, {args.repeats} decodes\n\n| time in | share |\n|---|---|")
    for name, share in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"| {name} | {100 * share / total:.1f}% |")


if __name__ == "__main__":
    main()
