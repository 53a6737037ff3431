"""What limits one long document: tokens/s by length for each engine setting, next to transformers,
and (`--ops`) where a document's time goes, operation by operation.

    python benchmarks/profile_documents.py                     # 4-layer 0.6B shape, 512-8,192 tokens
    python benchmarks/profile_documents.py --layers 28 --lengths 8192 --systems q8_0,transformers
    python benchmarks/profile_documents.py --ops --layers 28   # per-op profile, 128/512/2,048 tokens

The model has the Qwen3-Embedding-0.6B shape per layer (hidden 1024, 16/8 heads, head_dim 128,
FFN 3072, the real vocabulary) with random weights; `--layers` below 28 keeps every layer's work
and the ratio between systems while making a run short (attention and matrices both scale with
the layer count). Systems: llama.cpp through this project's runner at each KV cache type, flash
attention on/off and piece size (tokens per decode), for F16 and Q8_0 files; transformers fp32
(sdpa attention), one sequence. One process, systems alternating within each repetition,
medians of `--runs`. Prints a table and writes benchmarks/profile_documents.json.

`--ops`: for each file type (F16, Q8_0, Q4_K_M, Q4_0) and each numerics (the shipped ones for the
file, and the fast ones: F16 KV cache with flash attention), one document per length is decoded
unprofiled (its wall time) and then with runtime/op_profile.py's OpTimer, which times every graph
node (each weight matmul by tensor family, attention's Q·K, softmax and ·V, norms, RoPE, KV writes,
the rest). Timing node by node costs each node a fixed amount (the profiled decode's extra wall
time over the node count), which is subtracted from every node; "graph, threads, Python" is the
unprofiled wall time minus the sum of the nodes.
Settings alternate within each repetition; medians of `--runs`. Prints a table per length, writes
benchmarks/profile_ops.json and the "profile-ops" section of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import BENCH, EOS, Engine, cpu_kind, layered_models, log, write_section

from qwen3_gguf.atomic import write_text_atomically

OUT = BENCH / "profile_documents.json"
OPS_OUT = BENCH / "profile_ops.json"
OPS_TYPES = ("f16", "q8_0", "q4_k_m", "q4_0")
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


def layered_file(paths: dict[str, Path], file_type: str) -> Path:
    """The layered checkpoint's GGUF of `file_type`: converted ones from layered_models, the
    others quantized from its F32 GGUF (cached beside them)."""
    if file_type in paths:
        return paths[file_type]
    from qwen3_gguf.quantization import plan_quantization, quantize

    out = paths["f32"].with_name(paths["f32"].name.replace("-f32.gguf", f"-{file_type}.gguf"))
    if not out.is_file():
        log(f"quantizing to {file_type}")
        quantize(plan_quantization(paths["f32"], file_type), out)
    return out


class ProfiledEngine:
    """One file at one numerics: `wall(tokens)` times a document as the engine runs it, `ops(tokens)`
    returns seconds per operation group for one more decode of it (OpTimer on every node)."""

    def __init__(self, model, numerics, threads: int):
        from qwen3_gguf import runtime
        from qwen3_gguf.runtime.batching import PooledRunner
        from qwen3_gguf.runtime.op_profile import OpTimer

        self.timer = OpTimer()
        self.runner = PooledRunner(model, pooling=runtime.POOLING_LAST, threads=threads, numerics=numerics,
                                   op_timer=self.timer)

    def wall(self, tokens: list[int]) -> float:
        self.timer.enabled = False
        start = time.perf_counter()
        self.runner.run([tokens])
        return time.perf_counter() - start

    def ops(self, tokens: list[int]) -> tuple[float, dict[str, float], dict[str, int]]:
        """(wall seconds of the profiled decode, seconds per group, nodes per group)."""
        self.timer.enabled = True
        self.timer.reset()
        start = time.perf_counter()
        self.runner.run([tokens])
        wall = time.perf_counter() - start
        self.timer.enabled = False
        return wall, dict(self.timer.seconds), dict(self.timer.nodes)


OVERHEAD = "graph, threads, Python"


def profile_ops(args) -> None:
    from qwen3_gguf import runtime
    from qwen3_gguf.runtime.precision import EXACT, FAST

    runtime.init_backend()
    lengths = [int(n) for n in args.lengths.split(",")]
    paths = layered_models(args.layers)
    engines = {}
    for file_type in args.types.split(","):
        model = runtime.LlamaModel(layered_file(paths, file_type))
        for numerics in (EXACT, FAST):
            engines[f"{file_type} {numerics.short}"] = ProfiledEngine(model, numerics, args.threads)
    rng = np.random.default_rng(0)
    results = {"layers": args.layers, "threads": args.threads, "runs": args.runs, "cpu": cpu_kind(),
               "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "lengths": {}}
    for length in lengths:
        tokens = [int(t) for t in rng.integers(100, 150000, length - 1)] + [EOS]
        walls = {name: [] for name in engines}
        ops = {name: [] for name in engines}
        for engine in engines.values():  # warm-up: contexts sized, pages in
            engine.wall(tokens)
        for _ in range(args.runs):
            for name, engine in engines.items():
                walls[name].append(engine.wall(tokens))
                ops[name].append(engine.ops(tokens))
        table = {}
        for name in engines:
            wall = statistics.median(walls[name])
            # Computing node by node costs a few hundred microseconds per node (a wake-up of the
            # thread pool and the callbacks): that cost, the profiled decode's wall time minus the plain
            # one's, is taken off every node alike.
            per_node = statistics.median((profiled_wall - plain) / sum(nodes.values())
                                         for (profiled_wall, _, nodes), plain in zip(ops[name], walls[name]))
            groups = {group for _, seconds, _ in ops[name] for group in seconds}
            row = {group: statistics.median(seconds.get(group, 0.0) - nodes.get(group, 0) * per_node
                                            for _, seconds, nodes in ops[name]) for group in groups}
            row[OVERHEAD] = wall - sum(row.values())
            table[name] = {"wall_s": wall, "tokens_per_s": length / wall, "ops_s": row,
                           "profiling_cost_per_node_s": per_node}
            log(f"{length} tokens, {name}: {length / wall:.1f} tok/s, profiling cost {per_node * 1e6:.0f} µs/node")
        results["lengths"][str(length)] = table
    write_text_atomically(OPS_OUT, json.dumps(results, indent=1) + "\n")
    tables = ops_tables(results)
    write_section("profile-ops", "### Where one document's time goes, per operation\n\n" + tables)
    print(tables)


def ops_tables(results: dict) -> str:
    """One table per length: ms per operation group (and its share of the wall time) per setting."""
    out = [f"Where one document's time goes ({results['layers']} layers of the 0.6B shape, {results['threads']} "
           f"threads, {results['cpu']}, median of {results['runs']}): ms per operation group, % of the "
           "document's wall time in parentheses\n"]
    for length, table in results["lengths"].items():
        names = list(table)
        groups = sorted({g for row in table.values() for g in row["ops_s"]} - {OVERHEAD},
                        key=lambda g: -max(row["ops_s"].get(g, 0.0) for row in table.values()))
        out.append(f"**{int(length):,} tokens**\n")
        out.append("| operation | " + " | ".join(names) + " |")
        out.append("|---|" + "---:|" * len(names))
        for group in [*groups, OVERHEAD]:
            cells = []
            for name in names:
                seconds = table[name]["ops_s"].get(group, 0.0)
                cells.append(f"{seconds * 1e3:,.0f} ({seconds / table[name]['wall_s']:.0%})")
            out.append(f"| {group} | " + " | ".join(cells) + " |")
        out.append("| **tokens/s** | " + " | ".join(f"**{table[n]['tokens_per_s']:.1f}**" for n in names) + " |\n")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--systems", default=",".join([*ENGINE_SYSTEMS, "transformers"]).replace(" ", "_"),
                        help="comma-separated; spaces in names written as _")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", action="store_true", help="profile per operation (see the module docstring)")
    parser.add_argument("--types", default=",".join(OPS_TYPES), help="--ops: file types, comma-separated")
    args = parser.parse_args()
    if args.ops:
        if args.lengths == parser.get_default("lengths"):
            args.lengths = "128,512,2048"
        profile_ops(args)
        return
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
