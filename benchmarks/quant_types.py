"""Documents and queries tokens/s and fidelity of each llama.cpp type on this CPU.

On x86, llama.cpp repacks Q4_0, IQ4_NL and Q4_K into interleaved blocks at load (on AMX builds
the engine puts that back by hand: runtime/amx.py), its tinyBLAS path covers
F16/BF16/Q8_0/Q4_0/Q5_0/IQ4_NL, and the K-quants run ggml's own dot products, which on AVX-512
beat the rest (measured on this project's Xeon): which kernels a file's matrices take decides its
speed as much as its bits do. This measures each
type as llama.cpp makes it, and variants that move tensors onto another kernel (the tied token
embedding/output at Q8_0/Q4_0/F16 instead of Q6_K; the Q6_K tensors of Q4_K_M at Q8_0; attn_v
and ffn_down at Q8_0 over a repacked 4-bit base), all quantized from the same F16 GGUF with
this project's quantizer (the variants are named in benchmarks/common.py, for peers.py --types
too). (Named quant_types.py: a benchmarks/types.py would shadow Python's
`types` module for every script in this folder.)

The texts are those of benchmarks/run.py and peers.py: by default 5 documents of 64–1,024
tokens (the 2,048-token one left out to halve the time; attention costs every type the same)
and 32 queries under the default instruction. Each file runs in a fresh process per round, the rounds
alternating the files; fidelity is the min/mean cosine to the BF16 GGUF (the checkpoint's exact
weights) on the same inputs.

    python benchmarks/quant_types.py [--runs 2] [--only Q4_0,IQ4_NL]

Prints a table, writes benchmarks/quant_types.json and the "Quantization types" section of
benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import (
    BENCH,
    CACHE,
    MIB,
    build_models,
    build_variant,
    child_qwen3_gguf,
    cosines,
    head_rule,
    log,
    machine_meta,
    make_inputs,
    run_in_fresh_process,
    slug,
    variants,
    write_section,
)

from qwen3_gguf.atomic import write_text_atomically

REFERENCE = "BF16"
N_DOCUMENTS = 5  # of benchmarks/run.py's 6 (64–2,048 tokens): 64–1,024 tokens
VECTORS = CACHE / "peers"  # the folder peers.py keeps its vectors in
CHILDREN = {"qwen3_gguf": child_qwen3_gguf}


def reference_gguf(paths: dict) -> Path:
    out = CACHE / "embedding-0.6b-shaped-bf16.gguf"
    if not out.is_file():
        from qwen3_gguf.convert import convert_checkpoint

        convert_checkpoint(paths["checkpoint"], out, outtype="bf16", kind="embedding")
    return out


def tensor_types_of(path: Path) -> dict[str, int]:
    """How many matrices the file holds at each type."""
    from qwen3_gguf.gguf_file import read_header

    counts: dict[str, int] = {}
    for tensor in read_header(path).tensors:
        if len(tensor.shape) == 2:
            counts[tensor.type.name] = counts.get(tensor.type.name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def pareto(rows: list[dict]) -> None:
    """Mark the rows no other row beats on both documents tokens/s and mean document cosine."""
    for row in rows:
        row["front"] = not any(
            other is not row and other["documents_tokens_per_s"] > row["documents_tokens_per_s"]
            and other["cosine"]["documents"]["mean"] >= row["cosine"]["documents"]["mean"] for other in rows)


def markdown(report: dict) -> str:
    meta = report["meta"]
    head = ("| file | matrices by type | MiB | documents tok/s | queries tok/s | cos docs min / mean | "
            "cos queries min / mean | fastest at its fidelity | load average |")
    lines = [
        "## Quantization types on this CPU",
        "",
        f"{meta['machine']}; {meta['threads']} threads; median of {meta['runs']} round(s), each file in a fresh "
        f"process per round, the files alternating; {meta['date']}; each file's load average in its column. "
        f"{meta['n_documents']} documents of {meta['document_lengths']} tokens ({meta['tokens']['documents']:,}), "
        f"{meta['n_queries']} queries with the default instruction ({meta['tokens']['queries']:,} tokens). Cosines "
        "to the BF16 GGUF (the checkpoint's exact weights) on the same inputs; random weights magnify "
        "quantization error, so read the order, not the values. Produced by `python benchmarks/quant_types.py"
        f"{' ' + meta['argv'] if meta['argv'] else ''}`.",
        "",
        head,
        head_rule(head),
    ]
    for r in report["rows"]:
        kinds = ", ".join(f"{n} {t}" for t, n in r["tensor_types"].items())
        cos = [f"{r['cosine'][p]['min']:.4f} / {r['cosine'][p]['mean']:.4f}" for p in ("documents", "queries")]
        lines.append(f"| {r['label']} | {kinds} | {r['file_bytes'] / MIB:,.0f} | {r['documents_tokens_per_s']:.1f} | "
                     f"{r['queries_tokens_per_s']:.1f} | {cos[0]} | {cos[1]} | {'yes' if r['front'] else ''} | "
                     f"{statistics.median(x['load_average'] for x in r['rounds']):.0f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="rounds; every file once per round (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    parser.add_argument("--only", help=f"only these, comma-separated: {', '.join(variants())}")
    parser.add_argument("--documents", type=int, default=N_DOCUMENTS,
                        help=f"the first N of benchmarks/run.py's documents, shortest first (default {N_DOCUMENTS})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["child"]](spec)))
        return

    names = args.only.split(",") if args.only else list(variants())
    unknown = [n for n in names if n not in variants()]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(variants())}")
    paths = build_models(log)
    inputs = make_inputs(paths, quick=False)
    inputs["documents"] = inputs["documents"][:args.documents]
    inputs["document_tokens"] = inputs["document_tokens"][:args.documents]
    VECTORS.mkdir(parents=True, exist_ok=True)
    inputs_file = VECTORS / "types-inputs.json"
    inputs_file.write_text(json.dumps({"documents": inputs["documents"], "queries": inputs["queries"]}))
    tokens = {"documents": sum(inputs["document_tokens"]), "queries": sum(inputs["query_tokens"])}
    files = {REFERENCE: reference_gguf(paths)}
    for name in names:
        log(f"building {name}")
        files[name] = build_variant(variants()[name], paths)
    vectors = {name: VECTORS / f"type-{slug(name)}.npz" for name in files}
    log(f"reference: {REFERENCE}")
    run_in_fresh_process(__file__, {"child": "qwen3_gguf", "model": str(files[REFERENCE]), "threads": args.threads,
                     "inputs": str(inputs_file), "vectors": str(vectors[REFERENCE])})
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.runs):
        for name in names:
            log(f"round {round_index + 1}: {name}")
            rounds[name].append(run_in_fresh_process(__file__, {
                "child": "qwen3_gguf", "model": str(files[name]), "threads": args.threads, "inputs": str(inputs_file),
                "vectors": str(vectors[name]) if round_index == 0 else None}))
    rows = []
    for name in names:
        rows.append({
            "label": name, "path": files[name].name, "file_bytes": files[name].stat().st_size,
            "tensor_types": tensor_types_of(files[name]), "rounds": rounds[name],
            "documents_tokens_per_s": tokens["documents"] / statistics.median(r["documents_s"] for r in rounds[name]),
            "queries_tokens_per_s": tokens["queries"] / statistics.median(r["queries_s"] for r in rounds[name]),
            "cosine": cosines(vectors[name], vectors[REFERENCE]),
        })
    pareto(rows)
    meta = machine_meta(args, inputs, tokens)
    report = {"meta": meta, "reference": REFERENCE, "rows": rows}
    write_text_atomically(BENCH / "quant_types.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    text = markdown(report)
    write_section("quant-types", text)
    print(text)


if __name__ == "__main__":
    main()
