"""Where the time of a long document goes: llama_decode per 512-token piece as the KV cache
grows, next to transformers fp32 on the same tokens.

    python benchmarks/profile_documents.py     # after benchmarks/run.py has built its models

One 2,048-token input is decoded in four 512-token pieces (as the Embedder does); each piece's
tokens/s is printed by the depth of the cache it attends to, for F16, Q8_0 and Q4_K_M. The matrix
work of every piece is the same, so the fall with depth is attention's cost.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
sys.path.insert(0, str(ROOT))

PIECE = 512
DEPTHS = (0, 512, 1024, 1536)
EOS = 151643


def llama_pieces(path: Path, tokens: list[int], threads: int) -> dict[int, float]:
    """Best-of-2 tokens/s of each 512-token piece of `tokens`, by the cells already cached."""
    import llama_cpp as llama

    from qwen3_gguf import runtime

    runtime.init_backend()
    model = runtime.LlamaModel(path)
    context = runtime.PooledContext(model, runtime.ContextSettings(
        pooling=runtime.POOLING_LAST, n_ctx=len(tokens), n_batch=PIECE, n_seq_max=1, threads=threads))
    best = {depth: float("inf") for depth in DEPTHS}
    for _ in range(2):
        llama.llama_memory_clear(context._memory, True)
        for depth in DEPTHS:
            start = time.perf_counter()
            context._decode([(1, tokens[depth:depth + PIECE], depth)], keep_rows=[PIECE - 1])
            best[depth] = min(best[depth], time.perf_counter() - start)
    context.close()
    model.close()
    return {depth: PIECE / seconds for depth, seconds in best.items()}


def transformers_whole(tokens: list[int], threads: int) -> dict[int, float]:
    """tokens/s of transformers fp32 on the first 512 and on all 2,048 tokens."""
    import torch
    from transformers import AutoModel

    torch.set_num_threads(threads)
    model = AutoModel.from_pretrained(CACHE / "embedding-0.6b-shaped", dtype=torch.float32).eval()
    out = {}
    for n in (PIECE, len(tokens)):
        ids = torch.tensor([tokens[:n]])
        with torch.inference_mode():
            model(input_ids=ids)
            start = time.perf_counter()
            model(input_ids=ids)
            out[n] = n / (time.perf_counter() - start)
    return out


def main() -> None:
    threads = 2
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(100, 150000, DEPTHS[-1] + PIECE - 1)] + [EOS]
    for quant in ("f16", "q8_0", "q4_k_m"):
        speeds = llama_pieces(CACHE / f"embedding-0.6b-shaped-{quant}.gguf", tokens, threads)
        print(f"llama.cpp {quant.upper()}, 512-token piece after N cached cells: "
              + ", ".join(f"N={depth} {speed:.1f} tok/s" for depth, speed in speeds.items()))
    speeds = transformers_whole(tokens, threads)
    print("transformers fp32, one input: " + ", ".join(f"{n} tokens {speed:.1f} tok/s" for n, speed in speeds.items()))


if __name__ == "__main__":
    main()
