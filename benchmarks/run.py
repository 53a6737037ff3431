"""Speed and memory of qwen3-gguf against raw llama.cpp, llama-cpp-python and transformers.

A random-weight checkpoint with the exact Qwen3-Embedding-0.6B shape (hidden 1024, 28 layers,
16/8 heads, head_dim 128, FFN 3072, vocabulary 151,669) is generated once and converted to
F16 and Q8_0 (this project's converter) and Q4_K_M (this project's quantizer), plus a reranker
of the same shape at Q8_0; everything is cached under benchmarks/.cache/. Timing does not
depend on weight values, so this stands in for the real models.

Every system runs in its own subprocess, so its peak RSS (VmHWM: resident memory, memory-mapped
weights included) is its own. Each measures a warm-up call, then `--runs` timed calls on the
same inputs; tokens/s is the median. Tokens are counted as the model sees them (prompt
template and EOS included), the same count for every system.

    python benchmarks/run.py                      # everything (about 1½ hours on 2 cores)
    python benchmarks/run.py --quick              # small inputs, 1 run: checks that it all works
    python benchmarks/run.py --only documents,cold --runs 5

Sections: documents, queries, rerank, wrapper, cold, curve, policy. Writes
benchmarks/results.json and benchmarks/results.md (the table README quotes) after every
section; a run of some sections (--only) keeps the others' earlier results.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    BENCH,
    MIB,
    QUANTS,
    RERANK_DOC_LENGTHS,
    ROOT,
    ChildFailed,
    build_models,
    cpu_name,
    head_rule,
    kept_sections,
    make_inputs,
    peak_rss,
    run_in_fresh_process,
)

from qwen3_gguf.atomic import write_text_atomically
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION, query_text

SECTIONS = ("documents", "queries", "rerank", "wrapper", "cold", "curve", "policy")
TRANSFORMERS_BATCH_SIZES = (1, 4, 16)


# --- children: one system each, in its own process -----------------------------------------


def timed_runs(call, runs: int) -> list[float]:
    call(warmup=True)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def child_ours(spec: dict) -> dict:
    """Embedder.encode or Reranker.score, as a user calls them."""
    from qwen3_gguf import Embedder, Reranker

    if spec["kind"] == "rerank":
        model = Reranker(spec["model"], threads=spec["threads"], reuse_prefix=spec["reuse_prefix"])

        def call(warmup=False):
            model.score("warm up", ["warm up"]) if warmup else model.score(spec["query"], spec["texts"])
    else:
        model = Embedder(spec["model"], threads=spec["threads"], reuse_prefix=spec.get("reuse_prefix", True))
        options = {"prompt_name": "query"} if spec["kind"] == "queries" else {}

        def call(warmup=False):
            model.encode("warm up") if warmup else model.encode(spec["texts"], **options)

    return {"seconds": timed_runs(call, spec["runs"])}


@functools.cache
def _SILENT_LOG():  # noqa: N802 - a ctypes callback must outlive every later llama.cpp call
    import llama_cpp

    return llama_cpp.llama_log_callback(lambda level, text, user_data: None)


def raw_loop(spec: dict):
    """The floor: llama_decode over the same token sequences, contexts and pieces as the
    Embedder, written against llama-cpp-python's low-level API with nothing else around it.
    Returns (embed, close): embed(token lists) → unit vectors, one input per decode."""
    import llama_cpp as llama
    import numpy as np

    from qwen3_gguf.runtime import FA_TILE_ROWS, GGMLTensor, split_pieces
    from qwen3_gguf.runtime.batching import MIN_PIECE_TOKENS, SMALLEST_CONTEXT
    from qwen3_gguf.runtime.precision import numerics_for

    llama.llama_log_set(_SILENT_LOG(), ctypes.c_void_p())
    llama.llama_backend_init()
    params = llama.llama_model_default_params()
    params.n_gpu_layers = 0
    model = llama.llama_model_load_from_file(spec["model"].encode(), params)
    n_embd = llama.llama_model_n_embd(model)
    file_type = ctypes.create_string_buffer(32)
    llama.llama_model_meta_val_str(model, b"general.file_type", file_type, len(file_type))
    numerics = numerics_for(int(file_type.value) if file_type.value else None)  # the engine's KV type and flash attn
    min_rows = FA_TILE_ROWS if numerics.flash_attn else 1
    skip_lm_head = spec["skip_lm_head"]
    hidden = np.empty(n_embd, dtype=np.float32)
    state = {"output": False, "n_ctx": 0, "ctx": None}

    @llama.ggml_backend_sched_eval_callback
    def stop_after_hidden(node_address, ask, user_data):  # the engine's lm_head skip, minimal
        node = GGMLTensor.from_address(node_address)
        if node.name != b"result_norm":
            return False
        if ask:
            return True
        if state["output"]:  # the piece's one output row: its last token
            ctypes.memmove(hidden.ctypes.data, node.data, 4 * n_embd)
        return False

    def context_for(n_tokens):  # as the engine: one context, replaced only by a larger one
        n_ctx = SMALLEST_CONTEXT
        while n_ctx < max(n_tokens, MIN_PIECE_TOKENS):
            n_ctx *= 2
        if n_ctx > state["n_ctx"]:
            if state["ctx"] is not None:
                llama.llama_free(state["ctx"])
            p = llama.llama_context_default_params()
            p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, MIN_PIECE_TOKENS, MIN_PIECE_TOKENS, 2
            p.n_threads = p.n_threads_batch = spec["threads"]
            p.pooling_type, p.kv_unified = llama.LLAMA_POOLING_TYPE_LAST, True
            p.type_k = p.type_v = numerics.kv_type
            p.flash_attn_type = (llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if numerics.flash_attn
                                 else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            p.embeddings = not skip_lm_head  # as the engine: outputs only where it pools
            if skip_lm_head:
                p.cb_eval = stop_after_hidden
            state["ctx"], state["n_ctx"] = llama.llama_init_from_model(model, p), n_ctx
        return state["ctx"]

    batch = llama.llama_batch_init(MIN_PIECE_TOKENS, 0, 2)

    def embed(items):
        out = []
        for tokens in items:
            ctx = context_for(len(tokens))
            llama.llama_memory_clear(llama.llama_get_memory(ctx), False)
            for start, end in split_pieces(len(tokens), MIN_PIECE_TOKENS, min_rows):
                batch.n_tokens = end - start
                for i, token in enumerate(tokens[start:end]):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                    batch.seq_id[i][0], batch.logits[i] = 1, not skip_lm_head
                state["output"] = end == len(tokens)
                batch.logits[end - start - 1] = state["output"] or not skip_lm_head
                if llama.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
            if skip_lm_head:
                vector = hidden.copy()
            else:
                vector = np.ctypeslib.as_array(llama.llama_get_embeddings_seq(ctx, 1), shape=(n_embd,)).copy()
            out.append(vector / np.linalg.norm(vector))
        return out

    def close():
        if state["ctx"] is not None:
            llama.llama_free(state["ctx"])
        llama.llama_batch_free(batch)
        llama.llama_model_free(model)

    return embed, close


def child_raw(spec: dict) -> dict:
    embed, close = raw_loop(spec)
    sequences = sorted(spec["sequences"], key=len)

    def call(warmup=False):
        embed([sequences[0][:8]] if warmup else sequences)

    seconds = timed_runs(call, spec["runs"])
    close()
    return {"seconds": seconds}


def child_wrapper(spec: dict) -> dict:
    """Embedder.encode and the raw loop on the same documents in one process, alternating
    document by document, so that the machine's drift falls on both alike. The two must give
    the same vectors."""
    import numpy as np

    from qwen3_gguf import Embedder

    embedder = Embedder(spec["model"], threads=spec["threads"])
    raw_embed, raw_close = raw_loop({**spec, "skip_lm_head": True})
    pairs = sorted(zip(spec["texts"], spec["sequences"]), key=lambda pair: len(pair[1]))
    embedder.encode([text for text, _ in pairs])  # warm up; both end with the largest context
    raw_embed([tokens for _, tokens in pairs])
    ours, raw = [0.0] * spec["runs"], [0.0] * spec["runs"]
    for run in range(spec["runs"]):
        for text, tokens in pairs:
            start = time.perf_counter()
            ours_vector = embedder.encode([text])[0]
            middle = time.perf_counter()
            raw_vector = raw_embed([tokens])[0]
            ours[run] += middle - start
            raw[run] += time.perf_counter() - middle
            if float(np.dot(ours_vector, raw_vector)) < 0.99999:
                raise RuntimeError("the raw loop's vector differs from Embedder.encode's: not the same work")
    raw_close()
    embedder.close()
    return {"ours_seconds": ours, "raw_seconds": raw}


def child_llama_embed(spec: dict) -> dict:
    """llama-cpp-python's high-level Llama.embed, as users call it today."""
    from llama_cpp import Llama

    options = {"n_ctx": spec["n_ctx"], "n_batch": spec["n_batch"]} if spec["n_ctx"] else {}
    llm = Llama(spec["model"], embedding=True, n_threads=spec["threads"], n_threads_batch=spec["threads"],
                n_gpu_layers=0, verbose=False, **options)

    def call(warmup=False):
        llm.embed("warm up" if warmup else spec["texts"], normalize=True)

    return {"seconds": timed_runs(call, spec["runs"]), "n_ctx": llm.n_ctx(), "n_batch": llm.n_batch}


def child_transformers(spec: dict) -> dict:
    """transformers fp32 on CPU, the Qwen3-Embedding model card's code (inputs sorted by length
    so that a batch pads little; the model card does not sort, which only makes it slower)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["checkpoint"], padding_side="left")
    model = AutoModel.from_pretrained(spec["checkpoint"], dtype=torch.float32).eval()
    texts = spec["texts"]
    if spec["kind"] == "queries":
        texts = [query_text(q, DEFAULT_INSTRUCTION) for q in texts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    size = spec["batch_size"]

    def last_token_pool(hidden, mask):
        return hidden[:, -1]  # left padding: the last position is every sequence's EOS

    def embed(items):
        with torch.inference_mode():
            for start in range(0, len(items), size):
                batch = tokenizer(items[start:start + size], padding=True, truncation=True, max_length=8192,
                                  return_tensors="pt")
                out = model(**batch)
                F.normalize(last_token_pool(out.last_hidden_state, batch["attention_mask"]), p=2, dim=1)

    def call(warmup=False):
        embed(["warm up"] if warmup else [texts[i] for i in order])

    return {"seconds": timed_runs(call, spec["runs"])}


def child_policy(spec: dict) -> dict:
    """tokens/s of batching policies on synthetic token sequences (one process, no RSS)."""
    import numpy as np

    from qwen3_gguf import runtime
    from qwen3_gguf.runtime.batching import DEFAULT_BATCH_TOKENS, PooledRunner
    from qwen3_gguf.runtime.precision import GGML_TYPE_F16, Numerics

    runtime.init_backend()
    model = runtime.LlamaModel(Path(spec["model"]))
    rng = np.random.default_rng(0)

    def tokens(n):
        return [int(t) for t in rng.integers(100, 150000, n)]

    def sequences(n, length, prefix=()):
        return [[*prefix, *tokens(length - 1), 151643] for _ in range(n)]

    instruction = tokens(19)  # the default query instruction is 19 tokens
    cases = {"8 docs × 256 tok": sequences(8, 256), "16 queries × 30 tok": sequences(16, 30),
             "16 queries × 9 tok after a shared 19-tok prefix": sequences(16, 9, instruction),
             "1 doc × 2,048 tok": sequences(1, 2048)}
    if spec["quick"]:
        cases = {"4 docs × 128 tok": sequences(4, 128), "8 queries × 9 tok after a shared 19-tok prefix":
                 sequences(8, 9, instruction)}
    configs = [  # (sequences per decode, pack token budget, flash attention, threads)
        (1, 0, True, spec["threads"]), (16, 64, True, spec["threads"]), (16, 512, True, spec["threads"]),
        (16, 2048, True, spec["threads"]), (1, 0, False, spec["threads"]), (16, 2048, False, spec["threads"]),
        (1, 0, True, 1),
    ]
    rows = []
    for name, seqs in cases.items():
        n_tokens = sum(len(s) for s in seqs)
        for max_sequences, pack_tokens, flash, threads in configs:
            if max_sequences > 1 and len(seqs) == 1:
                continue
            runner = PooledRunner(model, pooling=runtime.POOLING_LAST, threads=threads,
                                  batch_tokens=max(DEFAULT_BATCH_TOKENS, pack_tokens), max_sequences=max_sequences,
                                  pack_tokens=pack_tokens,
                                  numerics=Numerics(GGML_TYPE_F16, flash))  # as measured before precision.py
            runner.run(seqs[:1])
            seconds = []
            for _ in range(spec["runs"]):
                start = time.perf_counter()
                runner.run(seqs)
                seconds.append(time.perf_counter() - start)
            runner.close()
            rows.append({"case": name, "sequences_per_decode": max_sequences, "pack_tokens": pack_tokens,
                         "flash_attn": flash, "threads": threads, "seconds": seconds,
                         "tokens_per_s": n_tokens / statistics.median(seconds)})
    return {"rows": rows}


def child_cold_profile(spec: dict) -> dict:
    """Where the time to a first vector goes, in one fresh process."""
    marks = {"start": time.perf_counter()}
    import qwen3_gguf.cli  # noqa: F401 - what the CLI imports

    marks["import cli"] = time.perf_counter()
    from qwen3_gguf import Embedder

    marks["import embed (llama.cpp)"] = time.perf_counter()
    from qwen3_gguf.gguf_file import read_model_file

    read_model_file(spec["model"])
    marks["check GGUF header"] = time.perf_counter()
    embedder = Embedder(spec["model"], threads=spec["threads"])
    marks["Embedder() (header + llama.cpp load)"] = time.perf_counter()
    embedder.encode("hello")
    marks["first encode"] = time.perf_counter()
    names = list(marks)
    return {"steps": {b: marks[b] - marks[a] for a, b in zip(names, names[1:])}}


CHILDREN = {"ours": child_ours, "raw": child_raw, "wrapper": child_wrapper, "llama_embed": child_llama_embed,
            "transformers": child_transformers, "policy": child_policy, "cold_profile": child_cold_profile}


def run_child(spec: dict, log) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON (plus peak RSS)."""
    log(f"  {spec['label']}")
    started = time.perf_counter()
    try:
        result = run_in_fresh_process(__file__, spec)
    except ChildFailed as failed:
        raise RuntimeError(f"{spec['label']} failed:\n{failed.stderr[-3000:]}") from None
    result["label"] = spec["label"]
    result["wall_s"] = time.perf_counter() - started
    if "seconds" in result:
        result["median_s"] = statistics.median(result["seconds"])
    return result


def child_main(spec: dict) -> None:
    result = CHILDREN[spec["child"]](spec)
    result["peak_rss"] = peak_rss()
    print(json.dumps(result))


# --- sections ---------------------------------------------------------------------------------


def tokens_per_s(result: dict, n_tokens: int) -> float:
    return n_tokens / result["median_s"]


def section_documents(ctx: dict) -> dict:
    inputs, paths, base = ctx["inputs"], ctx["paths"], ctx["base"]
    texts, n_tokens = inputs["documents"], sum(inputs["document_tokens"])
    rows = []
    for quant in QUANTS:
        rows.append(run_child({**base, "child": "ours", "label": f"qwen3-gguf Embedder.encode {quant.upper()}",
                               "kind": "documents", "model": str(paths[quant]), "texts": texts}, ctx["log"]))
        rows[-1]["tokens"] = n_tokens
    sequences = ctx["sequences"](texts)
    for skip in (False, True):
        label = "raw llama_decode loop Q8_0" + (", lm_head skipped as the engine does" if skip else "")
        rows.append(run_child({**base, "child": "raw", "label": label, "model": str(paths["q8_0"]),
                               "sequences": sequences, "skip_lm_head": skip}, ctx["log"]))
        rows[-1]["tokens"] = n_tokens
    for n_ctx in (0, 8192):
        label = "llama-cpp-python Llama.embed Q8_0, " + ("defaults (n_ctx 512: truncates)" if not n_ctx
                                                          else "n_ctx = n_batch = 8192")
        rows.append(run_child({**base, "child": "llama_embed", "label": label, "model": str(paths["q8_0"]),
                               "texts": texts, "n_ctx": n_ctx, "n_batch": n_ctx}, ctx["log"]))
        rows[-1]["tokens"] = sum(min(n, rows[-1]["n_batch"]) for n in inputs["document_tokens"])
    for size in TRANSFORMERS_BATCH_SIZES:
        rows.append(run_child({**base, "child": "transformers", "label": f"transformers fp32, batch {size}",
                               "kind": "documents", "checkpoint": str(paths["checkpoint"]), "texts": texts,
                               "batch_size": size}, ctx["log"]))
        rows[-1]["tokens"] = n_tokens
    for row in rows:
        row["tokens_per_s"] = tokens_per_s(row, row["tokens"])
    return {"n_texts": len(texts), "tokens": n_tokens, "lengths": inputs["document_tokens"], "rows": rows}


def section_queries(ctx: dict) -> dict:
    inputs, paths, base = ctx["inputs"], ctx["paths"], ctx["base"]
    texts, n_tokens = inputs["queries"], sum(inputs["query_tokens"])
    rows = []
    for quant in ("q8_0", "q4_k_m"):
        for reuse in (True, False):
            label = (f"qwen3-gguf Embedder.encode(prompt_name='query') {quant.upper()}"
                     + ("" if reuse else ", no prefix reuse"))
            rows.append(run_child({**base, "child": "ours", "label": label, "kind": "queries",
                                   "model": str(paths[quant]), "texts": texts, "reuse_prefix": reuse}, ctx["log"]))
    for size in TRANSFORMERS_BATCH_SIZES:
        rows.append(run_child({**base, "child": "transformers", "label": f"transformers fp32, batch {size}",
                               "kind": "queries", "checkpoint": str(paths["checkpoint"]), "texts": texts,
                               "batch_size": size}, ctx["log"]))
    for row in rows:
        row["tokens"] = n_tokens
        row["tokens_per_s"] = tokens_per_s(row, n_tokens)
        row["texts_per_s"] = len(texts) / row["median_s"]
    return {"n_texts": len(texts), "tokens": n_tokens, "rows": rows}


def section_rerank(ctx: dict) -> dict:
    inputs, paths, base = ctx["inputs"], ctx["paths"], ctx["base"]
    from qwen3_gguf import Reranker

    with Reranker(paths["reranker"], threads=1) as reranker:
        n_tokens = sum(len(reranker.tokenize(inputs["rerank_query"], d)[0]) for d in inputs["rerank_documents"])
    rows = []
    for reuse in (True, False):
        label = "qwen3-gguf Reranker.score Q8_0" + ("" if reuse else ", no prefix reuse")
        rows.append(run_child({**base, "child": "ours", "label": label, "kind": "rerank",
                               "model": str(paths["reranker"]),
                               "query": inputs["rerank_query"], "texts": inputs["rerank_documents"],
                               "reuse_prefix": reuse}, ctx["log"]))
    for row in rows:
        row["tokens"] = n_tokens
        row["tokens_per_s"] = tokens_per_s(row, n_tokens)
        row["texts_per_s"] = len(inputs["rerank_documents"]) / row["median_s"]
    return {"n_texts": len(inputs["rerank_documents"]), "tokens": n_tokens, "rows": rows}


def section_curve(ctx: dict) -> dict:
    inputs, paths, base = ctx["inputs"], ctx["paths"], ctx["base"]
    rows = []
    for length, text in inputs["curve"].items():
        n_tokens = inputs["curve_tokens"][length]
        specs = [({"child": "ours", "label": f"qwen3-gguf Q8_0, {length} tokens", "kind": "documents",
                   "model": str(paths["q8_0"]), "texts": [text]}, "qwen3-gguf Q8_0"),
                 ({"child": "ours", "label": f"qwen3-gguf Q4_K_M, {length} tokens", "kind": "documents",
                   "model": str(paths["q4_k_m"]), "texts": [text]}, "qwen3-gguf Q4_K_M"),
                 ({"child": "transformers", "label": f"transformers fp32, {length} tokens", "kind": "documents",
                   "checkpoint": str(paths["checkpoint"]), "texts": [text], "batch_size": 1}, "transformers fp32")]
        for spec, system in specs:
            row = run_child({**base, **spec}, ctx["log"])
            row.update(system=system, length=int(length), tokens=n_tokens, tokens_per_s=tokens_per_s(row, n_tokens))
            rows.append(row)
    return {"rows": rows}


def section_wrapper(ctx: dict) -> dict:
    """The wrapper's overhead: Embedder.encode against the raw loop doing the same work, measured
    in one process, alternating document by document."""
    inputs, paths = ctx["inputs"], ctx["paths"]
    texts, n_tokens = inputs["documents"], sum(inputs["document_tokens"])
    result = run_child({**ctx["base"], "child": "wrapper", "label": "Embedder.encode and the raw loop, alternating",
                        "model": str(paths["q8_0"]), "texts": texts, "sequences": ctx["sequences"](texts)}, ctx["log"])
    ours = n_tokens / statistics.median(result["ours_seconds"])
    raw = n_tokens / statistics.median(result["raw_seconds"])
    return {"ours_tokens_per_s": ours, "raw_same_work_tokens_per_s": raw, "ratio_same_work": ours / raw,
            "ours_seconds": result["ours_seconds"], "raw_seconds": result["raw_seconds"]}


def section_cold(ctx: dict) -> dict:
    """Process start → first vector printed, `qwen3-gguf embed` at Q8_0 (page cache warm)."""
    paths, base = ctx["paths"], ctx["base"]
    cli = Path(sys.executable).parent / "qwen3-gguf"
    command = [str(cli), "embed", "-m", str(paths["q8_0"]), "hello"]
    seconds = []
    for i in range(base["runs"] + 1):  # the first run warms the page cache and is not counted
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        first = process.stdout.readline()
        elapsed = time.perf_counter() - start
        process.communicate()
        if not first.startswith(b"{"):
            raise RuntimeError(f"qwen3-gguf embed printed no vector: {first!r}")
        if i:
            seconds.append(elapsed)
    profile = run_child({**base, "child": "cold_profile", "label": "cold start profile",
                         "model": str(paths["q8_0"])}, ctx["log"])
    return {"command": " ".join(["qwen3-gguf", *command[1:3], "MODEL-Q8_0.gguf", "hello"]), "seconds": seconds,
            "median_s": statistics.median(seconds), "profile": profile["steps"]}


def section_policy(ctx: dict) -> dict:
    return run_child({**ctx["base"], "child": "policy", "label": "batching policies",
                      "model": str(ctx["paths"]["q8_0"]),
                      "quick": ctx["quick"]}, ctx["log"])


# --- report -----------------------------------------------------------------------------------


def best_transformers(section: dict) -> dict:
    return max((r for r in section["rows"] if r["label"].startswith("transformers")), key=lambda r: r["tokens_per_s"])


def row_named(section: dict, label: str) -> dict:
    return next(r for r in section["rows"] if r["label"] == label)


def targets(results: dict) -> list[tuple[str, str, float, float]]:
    """(target, measured description, measured value, goal) for each target measured this run."""
    out = []
    docs = results.get("documents")
    if docs:
        best = best_transformers(docs)
        for quant, goal in (("Q8_0", 1.0), ("Q4_K_M", 1.2)):
            ours = row_named(docs, f"qwen3-gguf Embedder.encode {quant}")
            out.append((f"documents {quant} tokens/s ≥ {goal}× best transformers fp32",
                        f"{ours['tokens_per_s']:.1f} / {best['tokens_per_s']:.1f}",
                        ours["tokens_per_s"] / best["tokens_per_s"], goal))
            out.append((f"documents {quant} peak RSS ≤ 30% of transformers'",
                        f"{ours['peak_rss'] / MIB:,.0f} / {best['peak_rss'] / MIB:,.0f} MiB",
                        ours["peak_rss"] / best["peak_rss"], -0.30))
    queries = results.get("queries")
    if queries:
        best = best_transformers(queries)
        ours = row_named(queries, "qwen3-gguf Embedder.encode(prompt_name='query') Q8_0")
        out.append(("queries Q8_0 tokens/s ≥ 2.5× transformers fp32",
                    f"{ours['tokens_per_s']:.1f} / {best['tokens_per_s']:.1f}",
                    ours["tokens_per_s"] / best["tokens_per_s"], 2.5))
    rerank = results.get("rerank")
    if rerank:
        with_reuse, without = rerank["rows"]
        out.append(("rerank 20 docs ≥ 1.3× without prefix reuse",
                    f"{with_reuse['tokens_per_s']:.1f} / {without['tokens_per_s']:.1f}",
                    with_reuse["tokens_per_s"] / without["tokens_per_s"], 1.3))
    wrapper = results.get("wrapper")
    if wrapper:
        out.append(("wrapper ≥ 0.97× raw llama_decode loop, same work",
                    f"{wrapper['ours_tokens_per_s']:.1f} / {wrapper['raw_same_work_tokens_per_s']:.1f}",
                    wrapper["ratio_same_work"], 0.97))
    cold = results.get("cold")
    if cold:
        out.append(("cold start to first vector (CLI, Q8_0) ≤ 1.5 s", f"{cold['median_s']:.2f} s",
                    cold["median_s"], -1.5))
    return out


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# qwen3-gguf benchmark",
        "",
        f"{meta['machine']}; {meta['threads']} threads; median of {meta['runs']} run(s)"
        f"{' (--quick)' if meta['quick'] else ''}; {meta['date']}. Model: random weights, exact "
        "Qwen3-Embedding-0.6B shape; Q4_K_M by " + meta["q4_k_m_by"] + ". Produced by "
        f"`python benchmarks/run.py{' ' + meta['argv'] if meta['argv'] else ''}`"
        + (", keeping the other sections of earlier runs with the same settings" if "--only" in meta["argv"] else "")
        + ". Measured: " + ", ".join(f"{name} {results[name].get('measured', '?')}" for name in SECTIONS
                                     if name in results) + ".",
        "",
    ]

    def table(section: dict, title: str, extra: str | None = None):
        has_transformers = any(r["label"].startswith("transformers") for r in section["rows"])
        best = best_transformers(section) if has_transformers else None
        head = ("| system | tokens/s |" + (f" {extra} |" if extra else "")
                + (" × best transformers |" if best else "") + " peak RSS MiB |")
        lines.extend([title, "", head, head_rule(head)])
        for r in section["rows"]:
            cells = [r["label"], f"{r['tokens_per_s']:.1f}"]
            if extra:
                cells.append(f"{r['texts_per_s']:.2f}")
            if best:
                cells.append(f"{r['tokens_per_s'] / best['tokens_per_s']:.2f}")
            cells.append(f"{r['peak_rss'] / MIB:,.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    if "documents" in results:
        d = results["documents"]
        table(d, f"## Documents: {d['n_texts']} texts of {min(d['lengths'])}–{max(d['lengths'])} tokens "
                 f"({d['tokens']:,} tokens)")
    if "queries" in results:
        q = results["queries"]
        table(q, f"## Queries: {q['n_texts']} short queries with the default instruction ({q['tokens']:,} tokens)",
              extra="queries/s")
    if "rerank" in results:
        r = results["rerank"]
        table(r, f"## Reranking: one query, {r['n_texts']} documents of {RERANK_DOC_LENGTHS[0]}–"
                 f"{RERANK_DOC_LENGTHS[1]} tokens ({r['tokens']:,} prompt tokens)", extra="documents/s")
    if "wrapper" in results:
        w = results["wrapper"]
        lines += ["## Wrapper overhead (documents, Q8_0)", "",
                  f"Embedder.encode {w['ours_tokens_per_s']:.1f} tokens/s; a raw llama_decode loop over the same "
                  f"batches, outputs and lm_head skip {w['raw_same_work_tokens_per_s']:.1f} "
                  f"(ratio {w['ratio_same_work']:.3f}); one process, alternating document by document, "
                  "same vectors.", ""]
    if "curve" in results:
        rows = results["curve"]["rows"]
        lengths = sorted({r["length"] for r in rows})
        systems = list(dict.fromkeys(r["system"] for r in rows))
        head = "| tokens/s at document length | " + " | ".join(f"{n:,}" for n in lengths) + " |"
        lines += ["## One document, tokens/s against its length", "", head, head_rule(head)]
        for system in systems:
            by_length = {r["length"]: r for r in rows if r["system"] == system}
            lines.append(f"| {system} | " + " | ".join(f"{by_length[n]['tokens_per_s']:.1f}" for n in lengths) + " |")
        head = "| peak RSS MiB | " + " | ".join(f"{n:,}" for n in lengths) + " |"
        lines += ["", head, head_rule(head)]
        for system in systems:
            by_length = {r["length"]: r for r in rows if r["system"] == system}
            cells = " | ".join(f"{by_length[n]['peak_rss'] / MIB:,.0f}" for n in lengths)
            lines.append(f"| {system} | {cells} |")
        lines.append("")
    if "cold" in results:
        c = results["cold"]
        lines += ["## Cold start", "", f"`{c['command']}`, process start → first vector printed: "
                  f"{c['median_s']:.2f} s (median of {len(c['seconds'])}). In one process: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in c["profile"].items()) + ".", ""]
    if "policy" in results:
        head = "| case | sequences per decode | pack budget, tokens | flash attention | threads | tokens/s |"
        lines += ["## Batching policies (Q8_0; tokens/s counts every token of every input)", "", head, head_rule(head)]
        for r in results["policy"]["rows"]:
            lines.append(f"| {r['case']} | {r['sequences_per_decode']} | {r['pack_tokens'] or '—'} | "
                         f"{'on' if r['flash_attn'] else 'off'} | {r['threads']} | {r['tokens_per_s']:.1f} |")
        lines.append("")
    goals = targets(results)
    if goals:
        head = "| target | measured | ratio / value | met |"
        lines += ["## Targets", "", head, head_rule(head)]
        for name, measured, value, goal in goals:
            met = value <= -goal if goal < 0 else value >= goal
            lines.append(f"| {name} | {measured} | {value:.2f} | {'yes' if met else 'no'} |")
        lines.append("")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs and 1 run: check that everything works")
    parser.add_argument("--runs", type=int, help="timed runs per system (default 3; 1 with --quick)")
    parser.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, help="threads for every system (default: all cores)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(json.loads(args.child))

    from qwen3_gguf import runtime

    sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    runs = args.runs or (1 if args.quick else 3)
    threads = args.threads or runtime.default_threads()

    def log(message):
        print(message, file=sys.stderr, flush=True)

    paths = build_models(log)
    inputs = make_inputs(paths, args.quick)

    def sequences(texts):
        from qwen3_gguf import Embedder

        with Embedder(paths["q8_0"], threads=1) as embedder:
            return [embedder.tokenize(t)[0] for t in texts]

    meta = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}", "threads": threads, "runs": runs,
            "quick": args.quick, "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
            "q4_k_m_by": str(paths["q4_k_m_by"]), "argv": " ".join(sys.argv[1:])}
    # Sections accumulate: a run of some sections keeps the others from earlier runs with the same
    # settings, and the file is rewritten after every section, so an interrupted run keeps its work.
    results_path = BENCH / "results.json"
    results = {}
    if results_path.exists():
        earlier = json.loads(results_path.read_text())
        settings = ("threads", "runs", "quick")
        if {k: earlier["meta"].get(k) for k in settings} == {k: meta[k] for k in settings}:
            results = {k: v for k, v in earlier.items() if k in SECTIONS}
    ctx = {"paths": paths, "inputs": inputs, "base": {"runs": runs, "threads": threads}, "log": log,
           "quick": args.quick, "sequences": sequences, "results": results}
    for name in SECTIONS:
        if name in sections:
            log(f"{name}:")
            results[name] = globals()[f"section_{name}"](ctx)
            results[name]["measured"] = time.strftime("%Y-%m-%d %H:%M")
            report = {"meta": meta, **{k: results[k] for k in SECTIONS if k in results}}
            report["targets"] = [{"target": t, "measured": m, "value": v, "goal": g} for t, m, v, g in targets(report)]
            write_text_atomically(results_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            write_text_atomically(BENCH / "results.md", markdown(report) + kept_sections())
    print((BENCH / "results.md").read_text())


if __name__ == "__main__":
    main()
