"""qwen3-gguf against the CPU runtimes a user would pick instead, on the same model and texts.

The 0.6B-shaped random-weight checkpoint, GGUFs and texts benchmarks/run.py measures too
(benchmarks/common.py builds them): 6 documents of 64–2,048 tokens and 32 queries under the
default instruction. Systems:

- qwen3-gguf `Embedder.encode` at F16, Q8_0, Q4_K_M, plus any `--types` of
  benchmarks/quant_types.py (built on first use);
- ONNX Runtime fp32 and dynamic int8 (per-channel `quantize_dynamic`) of an ONNX export of the
  same checkpoint by torch.onnx, made here on first use (optimum-onnx 0.1.0 would need
  transformers < 4.58);
- OpenVINO fp32 and int8 weights (NNCF `compress_weights`) of that export, where installed;
- llama-cpp-python's `Llama.embed` on the Q8_0 GGUF with n_ctx = n_batch = 2,048 (every
  document fits);
- transformers fp32, as the Qwen3-Embedding model card runs it: the reference.

Every measurement is a fresh process (so its peak RSS is its own); the rounds alternate the
systems, and each number is the median over rounds. In a process: load, a short warm-up, the
documents one per call (batch 1: no padding, every system's fastest for these lengths), peak
RSS (VmHWM), then the queries in batches of 16 for the ONNX Runtime, OpenVINO and transformers
(their best batch; qwen3-gguf and Llama.embed take the list as it is). Tokens are counted as
the model sees them (instruction and EOS included), the same count for every system. Fidelity
is each system's min/mean cosine to transformers fp32 on the same inputs (last token, L2
normalized): random weights magnify quantization error, so read the order, not the values.

    pip install -e '.[bench]'
    python benchmarks/peers.py                      # about 40 minutes on 2 cores
    python benchmarks/peers.py --runs 1 --only 'qwen3-gguf Q8_0,ONNX Runtime int8'
    python benchmarks/peers.py --types Q4_0

Prints a table, writes benchmarks/peers.json and the "Peers" section of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from common import (
    BENCH,
    CACHE,
    MIB,
    QUANTS,
    build_models,
    build_variant,
    child_qwen3_gguf,
    cosines,
    head_rule,
    log,
    machine_meta,
    make_inputs,
    measure,
    run_in_fresh_process,
    unit,
    variants,
    write_section,
)

from qwen3_gguf.atomic import write_text_atomically

ONNX_DIR = CACHE / "onnx"
VECTORS = CACHE / "peers"
QUERY_BATCH = 16
LLAMA_EMBED_CTX = 2048
REFERENCE = "transformers fp32"


# --- the systems ------------------------------------------------------------------------------


def systems(paths: dict, extra_types: list[str]) -> list[dict]:
    """Every system to measure, in the order of a round: the reference first (every cosine needs
    it), then those the targets compare, then the others."""
    ours = [{"label": f"qwen3-gguf {quant.upper()}", "child": "qwen3_gguf", "model": str(paths[quant])}
            for quant in QUANTS]
    if extra_types:
        ours += [{"label": f"qwen3-gguf {name}", "child": "qwen3_gguf",
                  "model": str(build_variant(variants()[name], paths))} for name in extra_types]
    out = [
        {"label": REFERENCE, "child": "transformers"},
        {"label": "ONNX Runtime int8 (dynamic, per-channel)", "child": "onnxruntime",
         "model": str(ONNX_DIR / "int8" / "model.onnx")},
        {"label": "ONNX Runtime fp32", "child": "onnxruntime", "model": str(ONNX_DIR / "fp32" / "model.onnx")},
        *ours,
        {"label": "OpenVINO fp32", "child": "openvino", "model": str(ONNX_DIR / "openvino-fp32" / "model.xml")},
        {"label": "OpenVINO int8 weights", "child": "openvino", "model": str(ONNX_DIR / "openvino-int8" / "model.xml")},
        {"label": f"llama-cpp-python Llama.embed Q8_0, n_ctx {LLAMA_EMBED_CTX}", "child": "llama_embed",
         "model": str(paths["q8_0"])},
    ]
    for system in out:
        system["checkpoint"] = str(paths["checkpoint"])
    return out


# --- preparing the ONNX and OpenVINO models (each in its own process: the export needs memory) --


def export_onnx(checkpoint: Path, out: Path) -> str:
    """fp32 ONNX of the checkpoint by torch.onnx: input_ids, attention_mask → last_hidden_state,
    dynamic batch and sequence axes (traced on a left-padded batch, as the model card batches)."""
    import torch
    from transformers import AutoModel

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = AutoModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    input_ids = torch.randint(1000, 2000, (2, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0
    axes = {0: "batch", 1: "sequence"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(LastHiddenState(model), (input_ids, attention_mask), str(out),
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                          opset_version=18, external_data=True)
    return f"torch.onnx.export (torch {torch.__version__})"


def child_prepare(spec: dict) -> dict:
    what, checkpoint = spec["what"], Path(spec["checkpoint"])
    fp32 = ONNX_DIR / "fp32" / "model.onnx"
    started = time.perf_counter()
    if what == "fp32":
        made_by = export_onnx(checkpoint, fp32)
    elif what == "int8":
        from onnxruntime import __version__ as ort_version
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = ONNX_DIR / "int8" / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(fp32, out, per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=True)
        made_by = f"onnxruntime {ort_version} quantize_dynamic(per_channel=True, weight_type=QInt8)"
    elif what in ("openvino-fp32", "openvino-int8"):
        import openvino as ov

        model = ov.Core().read_model(fp32)
        made_by = f"OpenVINO {ov.__version__} read_model of the fp32 export"
        if what == "openvino-int8":
            import nncf

            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            made_by += f", nncf {nncf.__version__} compress_weights INT8_ASYM"
        out = ONNX_DIR / what / "model.xml"
        out.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, out, compress_to_fp16=False)
    else:
        raise ValueError(what)
    return {"made_by": made_by, "seconds": time.perf_counter() - started}


# What each prepared model is made from: its own step after the steps it needs.
PREPARED = {"fp32": ("model.onnx", ()), "int8": ("model.onnx", ("fp32",)),
            "openvino-fp32": ("model.xml", ("fp32",)), "openvino-int8": ("model.xml", ("fp32",))}


def prepare(system: dict, log) -> str | None:
    """Make the ONNX/OpenVINO model `system` runs if it is missing; what made it."""
    if system["child"] not in ("onnxruntime", "openvino"):
        return None
    wanted = Path(system["model"]).parent.name
    made = []
    for step in (*PREPARED[wanted][1], wanted):
        target = ONNX_DIR / step / PREPARED[step][0]
        record = target.with_suffix(".by")
        if not target.is_file():
            log(f"  preparing {step}")
            result = run_in_fresh_process(__file__, {"child": "prepare", "what": step,
                                                     "checkpoint": system["checkpoint"]})
            record.write_text(result["made_by"])
        made.append(record.read_text() if record.is_file() else "unknown")
    return "; ".join(made)


# --- children: one system each, in a fresh process, all under common.measure's protocol ---------
# (qwen3-gguf's is common.child_qwen3_gguf, which quant_types.py runs too)


def child_llama_embed(spec: dict) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    from qwen3_gguf.runtime.amx import built_with_amx

    if built_with_amx():
        # Llama() loads with llama.cpp's extra buffer types, whose AMX path dies with SIGILL on the
        # first decode here (qwen3_gguf/runtime/amx.py); a user of this machine has to turn them off.
        default_params = llama_cpp.llama_cpp.llama_model_default_params  # what Llama() calls

        def params_without_extra_buffers():
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = params_without_extra_buffers

    def load():
        return Llama(spec["model"], embedding=True, n_ctx=LLAMA_EMBED_CTX, n_batch=LLAMA_EMBED_CTX,
                     n_threads=spec["threads"], n_threads_batch=spec["threads"], n_gpu_layers=0, verbose=False)

    def encode(llm, texts):
        return llm.embed(texts, normalize=True)

    return measure(load, encode, encode, spec)


def padded_encoder(spec: dict, forward):
    """Embeddings through `forward(input_ids, attention_mask) → last_hidden_state` (numpy),
    tokenized by the checkpoint's tokenizer.json (it appends the EOS), left padded, last token
    pooled, as the Qwen3-Embedding model card does."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(spec["checkpoint"]) / "tokenizer.json"))

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        ids = [tokenizer.encode(t).ids for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # batches pad little
        pooled = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                input_ids[row, width - len(ids[i]):] = ids[i]
                mask[row, width - len(ids[i]):] = 1
            hidden = forward(input_ids, mask)
            for row, i in enumerate(chunk):
                pooled[i] = hidden[row, -1]
        return unit([pooled[i] for i in range(len(ids))])

    return encode


def child_onnxruntime(spec: dict) -> dict:
    import onnxruntime as ort

    def load():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = spec["threads"], 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
        return padded_encoder(spec, lambda ids, mask: session.run(
            None, {"input_ids": ids, "attention_mask": mask})[0])

    return measure(load, lambda encode, texts: encode(texts, 1), lambda encode, texts: encode(texts, QUERY_BATCH),
                   spec)


def child_openvino(spec: dict) -> dict:
    import openvino as ov

    def load():
        core = ov.Core()
        compiled = core.compile_model(core.read_model(spec["model"]), "CPU", {
            "INFERENCE_NUM_THREADS": spec["threads"], "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"})  # fp32 activations: not bf16 where the CPU has it
        request = compiled.create_infer_request()
        output = compiled.output(0)
        return padded_encoder(spec, lambda ids, mask: request.infer(
            {"input_ids": ids, "attention_mask": mask})[output])

    return measure(load, lambda encode, texts: encode(texts, 1), lambda encode, texts: encode(texts, QUERY_BATCH),
                   spec)


def child_transformers(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(spec["threads"])

    def load():
        tokenizer = AutoTokenizer.from_pretrained(spec["checkpoint"], padding_side="left")
        model = AutoModel.from_pretrained(spec["checkpoint"], dtype=torch.float32).eval()
        return tokenizer, model

    def encode(loaded, texts, batch_size):
        tokenizer, model = loaded
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        pooled = {}
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                batch = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, max_length=8192,
                                  return_tensors="pt")
                vectors = F.normalize(model(**batch).last_hidden_state[:, -1], p=2, dim=1)
                pooled.update(zip(chunk, vectors.numpy()))
        return [pooled[i] for i in range(len(texts))]

    return measure(load, lambda loaded, texts: encode(loaded, texts, 1),
                   lambda loaded, texts: encode(loaded, texts, QUERY_BATCH), spec)


CHILDREN = {"qwen3_gguf": child_qwen3_gguf, "llama_embed": child_llama_embed, "onnxruntime": child_onnxruntime,
            "openvino": child_openvino, "transformers": child_transformers, "prepare": child_prepare}


# --- comparing ---------------------------------------------------------------------------------


def summarize(system: dict, rounds: list[dict], tokens: dict) -> dict:
    row = {"label": system["label"], "rounds": rounds,
           "documents_tokens_per_s": tokens["documents"] / statistics.median(r["documents_s"] for r in rounds),
           "queries_tokens_per_s": tokens["queries"] / statistics.median(r["queries_s"] for r in rounds),
           "documents_peak_rss": statistics.median(r["documents_rss"] for r in rounds),
           "load_s": statistics.median(r["load_s"] for r in rounds)}
    loads = [r["load_average"] for r in rounds if "load_average" in r]
    if loads:  # measured with the machine's load and each process's CPU seconds
        row["load_average"] = statistics.median(loads)
        for part in ("documents", "queries"):
            row[f"{part}_tokens_per_cpu_s"] = tokens[part] / statistics.median(
                r[f"{part}_cpu_s"] for r in rounds if f"{part}_cpu_s" in r)
    if system.get("made_by"):
        row["made_by"] = system["made_by"]
    return row


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, measured in this run: qwen3-gguf against ONNX Runtime."""
    by_label = {r["label"]: r for r in rows if "documents_tokens_per_s" in r}
    int8 = by_label.get("ONNX Runtime int8 (dynamic, per-channel)")
    fp32 = by_label.get("ONNX Runtime fp32")
    ours = [r for label, r in by_label.items() if label.startswith("qwen3-gguf")]
    out = []
    if int8 and ours:
        at_fidelity = [r for r in ours if r["cosine"]["documents"]["mean"] >= int8["cosine"]["documents"]["mean"]]
        if at_fidelity:
            best = max(at_fidelity, key=lambda r: r["documents_tokens_per_s"])
            out.append(_target(f"documents ≥ 1.0× ONNX Runtime int8 at ≥ its fidelity ({best['label']})",
                               best["documents_tokens_per_s"], int8["documents_tokens_per_s"], 1.0))
            smallest = min(at_fidelity, key=lambda r: r["documents_peak_rss"])
            out.append(_target(f"peak RSS ≤ 60% of ONNX Runtime int8's at ≥ its fidelity ({smallest['label']}, "
                               "documents)", smallest["documents_peak_rss"] / MIB, int8["documents_peak_rss"] / MIB,
                               -0.6))
        best = max((r for r in ours if r["cosine"]["queries"]["mean"] >= int8["cosine"]["queries"]["mean"]),
                   key=lambda r: r["queries_tokens_per_s"], default=None)
        if best:
            out.append(_target(f"queries ≥ 1.5× ONNX Runtime int8, batch {QUERY_BATCH} ({best['label']})",
                               best["queries_tokens_per_s"], int8["queries_tokens_per_s"], 1.5))
    exact = by_label.get("qwen3-gguf F16")
    if fp32 and exact:
        out.append(_target("documents ≥ 1.1× ONNX Runtime fp32 with an exact file (qwen3-gguf F16)",
                           exact["documents_tokens_per_s"], fp32["documents_tokens_per_s"], 1.1))
    return out


def _target(name: str, ours: float, theirs: float, goal: float) -> dict:
    ratio = ours / theirs
    return {"target": name, "ours": ours, "theirs": theirs, "ratio": ratio, "goal": goal,
            "met": ratio <= -goal if goal < 0 else ratio >= goal}


def table(report: dict) -> str:
    head = ("| system | documents tok/s | queries tok/s | peak RSS (documents) MiB | "
            "cos docs min / mean | cos queries min / mean | rounds | load average | "
            "tokens per CPU-second docs / queries |")
    lines = [head, head_rule(head)]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['label']} | not measured: {r['error']} | | | | | | | |")
            continue
        cos = r.get("cosine")
        fidelity = ["reference", "reference"] if r["label"] == REFERENCE else [
            f"{cos[p]['min']:.4f} / {cos[p]['mean']:.4f}" for p in ("documents", "queries")]
        load, cpu = "—", "—"
        if "load_average" in r:
            load = f"{r['load_average']:.0f}"
            cpu = f"{r['documents_tokens_per_cpu_s']:.1f} / {r['queries_tokens_per_cpu_s']:.1f}"
        lines.append(f"| {r['label']} | {r['documents_tokens_per_s']:.1f} | {r['queries_tokens_per_s']:.1f} | "
                     f"{r['documents_peak_rss'] / MIB:,.0f} | {fidelity[0]} | {fidelity[1]} | {len(r['rounds'])} | "
                     f"{load} | {cpu} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "## Peers: the CPU runtimes a user would pick instead",
        "",
        f"{meta['machine']}; {meta['threads']} threads; medians over rounds (of {meta['runs']} asked), "
        f"every system in a fresh process in each round, the systems alternating; {meta['date']}; load average "
        f"{meta['load_average'][1]} at the end (each row's own in its column). Same checkpoint "
        "(random weights, Qwen3-Embedding-0.6B shape) and texts for all: "
        f"{meta['n_documents']} documents of {meta['document_lengths']} tokens ({meta['tokens']['documents']:,}), "
        f"{meta['n_queries']} queries with the default instruction ({meta['tokens']['queries']:,} tokens). "
        f"Documents one per call; queries in batches of {QUERY_BATCH} for ONNX Runtime, OpenVINO and "
        "transformers. Cosines to transformers fp32 on the same inputs (random weights magnify quantization "
        f"error: read the order, not the values). Produced by `python benchmarks/peers.py"
        f"{' ' + meta['argv'] if meta['argv'] else ''}`.",
        "",
        table(report),
        "",
    ]
    made = [f"{r['label']}: {r['made_by']}" for r in report["rows"] if r.get("made_by")]
    if made:
        lines += ["Made by: " + "; ".join(made) + ".", ""]
    if report["targets"]:
        head = "| target | qwen3-gguf | peer | ratio | met |"
        lines += [head, head_rule(head)]
        for t in report["targets"]:
            lines.append(f"| {t['target']} | {t['ours']:,.1f} | {t['theirs']:,.1f} | {t['ratio']:.2f} | "
                         f"{'yes' if t['met'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds; every system once per round (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    parser.add_argument("--types", default="", help="also these benchmarks/quant_types.py variants, comma-separated")
    parser.add_argument("--only", help="only the systems whose labels start with these, comma-separated")
    parser.add_argument("--resume", action="store_true",
                        help="keep the measurements of an interrupted run and do only the missing ones")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["child"]](spec)))
        return

    paths = build_models(log)
    inputs = make_inputs(paths, quick=False)
    VECTORS.mkdir(parents=True, exist_ok=True)
    inputs_file = VECTORS / "inputs.json"
    inputs_file.write_text(json.dumps({"documents": inputs["documents"], "queries": inputs["queries"]}))
    tokens = {"documents": sum(inputs["document_tokens"]), "queries": sum(inputs["query_tokens"])}
    chosen = systems(paths, [t for t in args.types.split(",") if t])
    if args.only:
        wanted = [*args.only.split(","), REFERENCE]  # fidelity needs the reference
        chosen = [s for s in chosen if any(s["label"].startswith(prefix) for prefix in wanted)]
    saved = VECTORS / "rounds.json"  # every finished measurement, for --resume
    kept = json.loads(saved.read_text()) if args.resume and saved.is_file() else {}
    rounds: dict[str, list[dict]] = {s["label"]: kept.get(s["label"], []) for s in chosen}
    errors: dict[str, str] = {}
    for system in chosen:
        try:
            system["made_by"] = prepare(system, log)
        except RuntimeError as exc:
            errors[system["label"]] = f"preparing it failed: {exc}"
    for round_index in range(args.runs):
        for system in chosen:
            if system["label"] in errors or len(rounds[system["label"]]) > round_index:
                continue
            log(f"round {round_index + 1}: {system['label']}")
            spec = {**system, "threads": args.threads, "inputs": str(inputs_file),
                    "vectors": str(vectors_of(system)) if round_index == 0 else None}
            try:
                rounds[system["label"]].append(run_in_fresh_process(__file__, spec))
            except RuntimeError as exc:
                errors[system["label"]] = str(exc)[:300]
                log(f"  failed: {errors[system['label']]}")
            saved.write_text(json.dumps({**kept, **rounds}))  # systems left out by --only keep theirs
            report(args, inputs, tokens, chosen, rounds, errors)  # an interrupted run keeps its work
    print(markdown(json.loads((BENCH / "peers.json").read_text())))


def vectors_of(system: dict) -> Path:
    return VECTORS / f"{system['label'].replace(' ', '_').replace('/', '_')}.npz"


def report(args, inputs: dict, tokens: dict, chosen: list[dict], rounds: dict, errors: dict) -> None:
    """Write benchmarks/peers.json and the Peers section of results.md from the rounds so far."""
    reference = vectors_of({"label": REFERENCE})
    rows = []
    for system in chosen:
        if system["label"] in errors:
            rows.append({"label": system["label"], "error": errors[system["label"]]})
        elif rounds[system["label"]]:
            row = summarize(system, rounds[system["label"]], tokens)
            if reference.is_file():
                row["cosine"] = cosines(vectors_of(system), reference)
            rows.append(row)
    meta = machine_meta(args, inputs, tokens)
    meta["rounds_done"] = max((len(r) for label, r in rounds.items() if label not in errors), default=0)
    result = {"meta": meta, "rows": rows, "targets": targets(rows) if reference.is_file() else []}
    write_text_atomically(BENCH / "peers.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_section("peers", markdown(result))


if __name__ == "__main__":
    main()
