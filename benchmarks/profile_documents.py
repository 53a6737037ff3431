"""What limits one long document: tokens/s by length for each engine setting, next to transformers.

    python benchmarks/profile_documents.py                     # 4-layer 0.6B shape, 512-8,192 tokens
    python benchmarks/profile_documents.py --layers 28 --lengths 8192 --systems q8_0,transformers

The model has the Qwen3-Embedding-0.6B shape per layer (hidden 1024, 16/8 heads, head_dim 128,
FFN 3072, the real vocabulary) with random weights; `--layers` below 28 keeps every layer's work
and the ratio between systems while making a run short (attention and matrices both scale with
the layer count). Systems: llama.cpp through this project's runner at each KV cache type, flash
attention on/off and piece size (tokens per decode), for F16 and Q8_0 files; transformers fp32
(sdpa attention), one sequence. One process, systems alternating within each repetition,
medians of `--runs`. Prints a table and writes benchmarks/profile_documents.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import BENCH, EOS, Engine, layered_models, log

from qwen3_gguf.atomic import write_text_atomically

OUT = BENCH / "profile_documents.json"
# name: (file type, KV type, flash attention, piece tokens)
ENGINE_SYSTEMS = {
    "q8_0 kv-f16 fa 512": ("q8_0", "f16", True, 512),      # llama.cpp's defaults, the engine before
    "q8_0 kv-f16 no-fa 512": ("q8_0", "f16", False, 512),
    "q8_0 kv-f32 fa 512": ("q8_0", "f32", True, 512),
    "q8_0 kv-f32 no-fa 512": ("q8_0", "f32", False, 512),
    "q8_0 kv-f32 no-fa 1024": ("q8_0", "f32", False, 1024),
    "q8_0 kv-f32 no-fa 2048": ("q8_0", "f32", False, 2048),
    "q8_0 kv-f16 no-fa 2048": ("q8_0", "f16", False, 2048),
    "f16 kv-f16 fa 512": ("f16", "f16", True, 512),
    "f16 kv-f16 no-fa 512": ("f16", "f16", False, 512),
    "f16 kv-f32 no-fa 512": ("f16", "f32", False, 512),
    "f16 kv-f32 no-fa 2048": ("f16", "f32", False, 2048),
    "q8_0 defaults": ("q8_0", None, None, None),
    "f16 defaults": ("f16", None, None, None),
}


class Transformers:
    def __init__(self, checkpoint: Path, threads: int):
        import torch
        from transformers import AutoModel

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModel.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="sdpa").eval()

    def seconds(self, tokens: list[int]) -> float:
        ids = self.torch.tensor([tokens])
        with self.torch.inference_mode():
            start = time.perf_counter()
            self.model(input_ids=ids)
            return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--systems", default=",".join([*ENGINE_SYSTEMS, "transformers"]).replace(" ", "_"),
                        help="comma-separated; spaces in names written as _")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    names = [n.replace("_", " ") for n in args.systems.split(",")]
    names = [n.replace("q8 0", "q8_0") for n in names]
    paths = layered_models(args.layers)
    systems = {}
    for name in names:
        if name == "transformers":
            systems[name] = Transformers(paths["checkpoint"], args.threads)
        else:
            file_type, kv, flash, piece = ENGINE_SYSTEMS[name]
            systems[name] = Engine(paths[file_type], kv, flash, piece, args.threads)
    rng = np.random.default_rng(0)
    results = {"layers": args.layers, "threads": args.threads,
               "runs": args.runs, "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "tokens_per_s": {}}
    for length in lengths:
        tokens = [int(t) for t in rng.integers(100, 150000, length - 1)] + [EOS]
        seconds = {name: [] for name in systems}
        for system in systems.values():  # warm-up at this length: contexts sized, pages in
            system.seconds(tokens[:min(length, 1024)])
        for _ in range(args.runs):
            for name, system in systems.items():
                seconds[name].append(system.seconds(tokens))
        for name in systems:
            speed = length / statistics.median(seconds[name])
            results["tokens_per_s"].setdefault(name, {})[str(length)] = speed
            log(f"{length} tokens, {name}: {speed:.1f} tok/s {[round(s, 2) for s in seconds[name]]}")
    write_text_atomically(OUT, json.dumps(results, indent=1) + "\n")
    base = results["tokens_per_s"].get("transformers")
    print(f"tokens/s of one document by length ({args.layers} layers of the 0.6B shape, {args.threads} threads, "
          f"median of {args.runs}; × transformers fp32 in parentheses)\n")
    print("| system | " + " | ".join(f"{n:,}" for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for name, speeds in results["tokens_per_s"].items():
        cells = [f"{speeds[str(n)]:.1f}" + (f" ({speeds[str(n)] / base[str(n)]:.2f}×)" if base else "")
                 for n in lengths]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
