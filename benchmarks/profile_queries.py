"""What bounds short queries under the default instruction: the cost of a decode per row.

    python benchmarks/profile_queries.py     # the models of benchmarks/run.py, built on first use

With the instruction's KV cells shared, each query decodes only its own tokens, packed a few
queries to a decode; so the queries' speed is the matrix rate of llama.cpp at those row counts.
This prints, for F16, Q8_0 and Q4_K_M, the milliseconds per row of one decode of N fresh rows, then
the benchmark's 32 queries: how many rows the Embedder decodes for them and how long it takes,
and transformers fp32 on the same prompts (batch 16, as in the benchmark). The ceiling it
prints is (prompt tokens / decoded rows) × (llama.cpp rows/s) / (transformers tokens/s).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import CACHE, QUANTS, build_models, make_inputs

ROWS = (1, 8, 16, 32, 64, 128, 512)
THREADS = 2


def ms_per_row(path: Path) -> dict[int, float]:
    """Best-of-3 milliseconds per row of one decode of N rows into an empty cache."""
    import llama_cpp as llama

    from qwen3_gguf import runtime

    model = runtime.LlamaModel(path)
    context = runtime.PooledContext(model, runtime.ContextSettings(
        pooling=runtime.POOLING_LAST, n_ctx=max(ROWS), n_batch=max(ROWS), n_seq_max=1, threads=THREADS))
    tokens = [int(t) for t in np.random.default_rng(0).integers(100, 150000, max(ROWS))]
    out = {}
    for n in ROWS:
        best = float("inf")
        for _ in range(3):
            llama.llama_memory_clear(context._memory, True)
            start = time.perf_counter()
            context._decode([(1, tokens[:n], 0)], keep_rows=[n - 1])
            best = min(best, time.perf_counter() - start)
        out[n] = 1000 * best / n
    context.close()
    model.close()
    return out


def queries_run(path: Path, queries: list[str]) -> tuple[int, float]:
    """(rows decoded, median seconds of 3) for Embedder.encode(queries, prompt_name='query')."""
    from qwen3_gguf import Embedder, runtime

    rows = []
    decode = runtime.PooledContext._decode

    def counting_decode(self, pieces, *, keep_rows):
        rows.append(sum(len(tokens) for _, tokens, _ in pieces))
        decode(self, pieces, keep_rows=keep_rows)

    with Embedder(path, threads=THREADS) as embedder:
        embedder.encode("warm up", prompt_name="query")  # holds the instruction's KV cells
        runtime.PooledContext._decode = counting_decode
        seconds = []
        for _ in range(3):
            rows.clear()
            start = time.perf_counter()
            embedder.encode(queries, prompt_name="query")
            seconds.append(time.perf_counter() - start)
        runtime.PooledContext._decode = decode
    return sum(rows), statistics.median(seconds)


def transformers_queries(prompts: list[str], batch_size: int = 16) -> tuple[int, float]:
    """(prompt tokens, median seconds of 3) for transformers fp32 on the prompts in batches."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(THREADS)
    checkpoint = CACHE / "embedding-0.6b-shaped"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
    model = AutoModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    prompts = sorted(prompts, key=len)  # as the benchmark: batches pad little
    batches = [tokenizer(prompts[i:i + batch_size], padding=True, return_tensors="pt")
               for i in range(0, len(prompts), batch_size)]
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    seconds = []
    with torch.inference_mode():
        model(**batches[0])
        for _ in range(3):
            start = time.perf_counter()
            for batch in batches:
                model(**batch)
            seconds.append(time.perf_counter() - start)
    return n_tokens, statistics.median(seconds)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()

    from qwen3_gguf import runtime
    from qwen3_gguf.prompts import DEFAULT_INSTRUCTION, query_text

    runtime.init_backend()
    built = build_models()
    paths = {quant: built[quant] for quant in QUANTS}
    inputs = make_inputs(paths, quick=False)
    queries = inputs["queries"]
    prompts = [query_text(q, DEFAULT_INSTRUCTION) for q in queries]
    prompt_tokens, hf_seconds = transformers_queries(prompts)
    hf_rate = prompt_tokens / hf_seconds
    print(f"transformers fp32, batch 16: {len(queries)} queries, {prompt_tokens} prompt tokens, "
          f"{hf_seconds:.2f} s = {hf_rate:.1f} tokens/s")
    for quant, path in paths.items():
        costs = ms_per_row(path)
        print(f"llama.cpp {quant.upper()}, one decode of N rows, ms per row: "
              + ", ".join(f"N={n} {ms:.1f}" for n, ms in costs.items()))
        rows, seconds = queries_run(path, queries)
        ceiling = (prompt_tokens / rows) * (1000 / costs[64]) / hf_rate
        print(f"  Embedder, {len(queries)} queries: {rows} rows decoded in {seconds:.2f} s "
              f"({1000 * seconds / rows:.1f} ms per row) = {prompt_tokens / seconds:.1f} prompt tokens/s, "
              f"{prompt_tokens / seconds / hf_rate:.2f}× transformers; at the 64-row rate the ceiling is "
              f"{ceiling:.2f}×")


if __name__ == "__main__":
    main()
