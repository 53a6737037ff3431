"""What the benchmark scripts share: where things live, the models they build, the texts they
feed them, measuring in a fresh process, and the sections they write into benchmarks/results.md.

Every script in benchmarks/ imports from here and from no other script
(tests/test_benchmarks_layout.py checks it). Importing this module puts the repository and
tests/ on sys.path: the scripts run this checkout's qwen3_gguf, build their small checkpoints
with tests/checkpoints.py and compare with the transformers oracle of tests/oracle.py.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
CACHE = BENCH / ".cache"
RESULTS_MD = BENCH / "results.md"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from qwen3_gguf.atomic import write_text_atomically  # noqa: E402 - after the path set-up
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION, query_text  # noqa: E402

MIB = 1 << 20
EOS = 151643  # <|endoftext|>, the token the embedding models pool


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the 0.6B-shaped checkpoint: random BF16 weights (speed does not depend on their values) ---

SHAPE = dict(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, ffn=3072, vocab=151_669)
QUANTS = ("f16", "q8_0", "q4_k_m")


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    """HF names and shapes of a bare Qwen3Model (the embedding layout) of SHAPE."""
    s = SHAPE
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    shapes = {"embed_tokens.weight": (s["vocab"], s["hidden"]), "norm.weight": (s["hidden"],)}
    for i in range(s["layers"]):
        shapes |= {
            f"layers.{i}.input_layernorm.weight": (s["hidden"],),
            f"layers.{i}.self_attn.q_proj.weight": (q, s["hidden"]),
            f"layers.{i}.self_attn.k_proj.weight": (kv, s["hidden"]),
            f"layers.{i}.self_attn.v_proj.weight": (kv, s["hidden"]),
            f"layers.{i}.self_attn.o_proj.weight": (s["hidden"], q),
            f"layers.{i}.self_attn.q_norm.weight": (s["head_dim"],),
            f"layers.{i}.self_attn.k_norm.weight": (s["head_dim"],),
            f"layers.{i}.post_attention_layernorm.weight": (s["hidden"],),
            f"layers.{i}.mlp.gate_proj.weight": (s["ffn"], s["hidden"]),
            f"layers.{i}.mlp.up_proj.weight": (s["ffn"], s["hidden"]),
            f"layers.{i}.mlp.down_proj.weight": (s["hidden"], s["ffn"]),
        }
    return shapes


def write_bf16_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> None:
    """Write random N(0, 0.02) BF16 tensors as safetensors, one tensor in memory at a time."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        end = offset + int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        for shape in shapes.values():
            values = rng.standard_normal(shape, dtype=np.float32) * 0.02
            (values.view(np.uint32) >> 16).astype(np.uint16).tofile(file)


def build_checkpoint(folder: Path) -> Path:
    """The 0.6B-shaped embedding checkpoint in `folder`: its config, the real Qwen tokenizer files
    (tests/checkpoints.py) and random weights (written once, kept on later calls)."""
    from checkpoints import write_tokenizer_files

    s = SHAPE
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": s["hidden"],
        "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"], "head_dim": s["head_dim"],
        "intermediate_size": s["ffn"], "vocab_size": s["vocab"], "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1_000_000, "tie_word_embeddings": True,
        "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer_files(folder, "embedding")
    if not (folder / "model.safetensors").is_file():
        write_bf16_safetensors(folder / "model.safetensors", tensor_shapes())
    return folder


def build_models(log=log) -> dict[str, Path]:
    """The 0.6B-shaped checkpoint, its F16, Q8_0 and Q4_K_M GGUFs, and a reranker of the same
    shape at Q8_0; built once into benchmarks/.cache/ and reused by every script."""
    from checkpoints import write_tokenizer_files

    from qwen3_gguf.convert import convert_checkpoint

    CACHE.mkdir(parents=True, exist_ok=True)
    embedding_ckpt = CACHE / "embedding-0.6b-shaped"
    if not (embedding_ckpt / "model.safetensors").is_file():
        log("writing the 0.6B-shaped random checkpoint (1.1 GiB BF16)")
    build_checkpoint(embedding_ckpt)
    reranker_ckpt = CACHE / "reranker-0.6b-shaped"
    if not (reranker_ckpt / "model.safetensors").exists():
        reranker_ckpt.mkdir(exist_ok=True)
        shutil.copy(embedding_ckpt / "config.json", reranker_ckpt / "config.json")
        write_tokenizer_files(reranker_ckpt, "reranker")
        try:
            os.link(embedding_ckpt / "model.safetensors", reranker_ckpt / "model.safetensors")
        except OSError:
            shutil.copy(embedding_ckpt / "model.safetensors", reranker_ckpt / "model.safetensors")

    paths = {"checkpoint": embedding_ckpt, "reranker_checkpoint": reranker_ckpt}
    for outtype in ("f16", "q8_0"):
        out = CACHE / f"embedding-0.6b-shaped-{outtype}.gguf"
        if not out.is_file():
            log(f"converting to {outtype}")
            convert_checkpoint(embedding_ckpt, out, outtype=outtype, kind="embedding")
        paths[outtype] = out
    out = CACHE / "embedding-0.6b-shaped-q4_k_m.gguf"
    made_by = out.with_suffix(".by")
    if not out.is_file():
        log("quantizing to q4_k_m")
        made_by.write_text(quantize_q4_k_m(paths["f16"], out))
    paths["q4_k_m"] = out
    paths["q4_k_m_by"] = made_by.read_text() if made_by.is_file() else "unknown (cached file)"
    out = CACHE / "reranker-0.6b-shaped-q8_0.gguf"
    if not out.is_file():
        log("converting the reranker to q8_0")
        convert_checkpoint(reranker_ckpt, out, outtype="q8_0", kind="reranker")
    paths["reranker"] = out
    return paths


def quantize_q4_k_m(source: Path, out: Path) -> str:
    """Q4_K_M with this project's quantizer; what made it, for the reports."""
    from qwen3_gguf.quantization import plan_quantization, quantize

    quantize(plan_quantization(source, "q4_k_m"), out)
    return "qwen3_gguf.quantization"


# --- fewer layers of the 0.6B shape (the real model's work per layer, a shorter run) ----------

LAYER_SHAPE = dict(hidden_size=1024, num_heads=16, num_kv_heads=8, head_dim=128, intermediate_size=3072)


def layered_models(layers: int) -> dict[str, Path]:
    """The checkpoint with `layers` layers of the 0.6B shape, and its F16, Q8_0, F32 and BF16
    GGUFs, cached."""
    from checkpoints import build_checkpoint as build_test_checkpoint

    from qwen3_gguf.convert import convert_checkpoint

    ckpt = CACHE / f"embedding-0.6b-shaped-{layers}-layers"
    if not (ckpt / "config.json").is_file():
        log(f"building the {layers}-layer 0.6B-shaped checkpoint")
        build_test_checkpoint(ckpt, kind="embedding", num_layers=layers, seed=0, **LAYER_SHAPE)
    paths = {"checkpoint": ckpt}
    for file_type in ("f16", "q8_0", "f32", "bf16"):
        out = CACHE / f"{ckpt.name}-{file_type}.gguf"
        if not out.is_file():
            log(f"converting to {file_type}")
            convert_checkpoint(ckpt, out, outtype=file_type)
        paths[file_type] = out
    return paths


class Engine:
    """One llama.cpp runner at fixed settings (None: the engine's defaults for the file);
    `seconds(tokens)` times one document."""

    def __init__(self, path: Path, kv: str | None, flash: bool | None, piece: int | None, threads: int):
        from qwen3_gguf import runtime
        from qwen3_gguf.runtime.batching import DEFAULT_BATCH_TOKENS, PooledRunner
        from qwen3_gguf.runtime.precision import GGML_TYPE_F16, GGML_TYPE_F32, Numerics

        runtime.init_backend()
        self.model = runtime.LlamaModel(path)
        numerics = None if kv is None else Numerics({"f16": GGML_TYPE_F16, "f32": GGML_TYPE_F32}[kv], flash)
        self.runner = PooledRunner(self.model, pooling=runtime.POOLING_LAST, threads=threads,
                                   batch_tokens=piece or DEFAULT_BATCH_TOKENS, numerics=numerics)

    def seconds(self, tokens: list[int]) -> float:
        start = time.perf_counter()
        self.runner.run([tokens])
        return time.perf_counter() - start


# --- the quantization variants (quant_types.py measures them; peers.py --types adds them) ----


@dataclass(frozen=True)
class Variant:
    """A GGUF to measure: a file type, and what moves tensors onto other kernels."""

    type: str
    token_embedding_type: str | None = None
    tensor_types: tuple[str, ...] = ()
    recipe: str | None = None
    converted: bool = False  # made by the converter (build_models), not quantized


def _more_bits_layers(n_layer: int = 28) -> str:
    """The blocks where Q4_K_M gives attn_v/ffn_down Q6_K (llama.cpp's use_more_bits), as a regex."""
    from qwen3_gguf.quantization.llama_choice import use_more_bits

    return "|".join(str(i) for i in range(n_layer) if use_more_bits(i, n_layer))


SENSITIVE_Q8_0 = r"(attn_v|ffn_down)\.weight$=Q8_0"


@functools.cache
def variants() -> dict[str, Variant]:
    """The variants by name (a function: naming Q4_K_M's Q6_K blocks imports llama.cpp)."""
    return {
        "F16": Variant("F16", converted=True),
        "Q8_0": Variant("Q8_0", converted=True),
        "Q4_0": Variant("Q4_0"),
        "Q4_0 embd Q8_0": Variant("Q4_0", token_embedding_type="Q8_0"),
        "Q4_0 embd Q4_0": Variant("Q4_0", token_embedding_type="Q4_0"),
        "Q4_0 embd F16": Variant("Q4_0", token_embedding_type="F16"),
        "Q4_0 attn_v+ffn_down Q8_0": Variant("Q4_0", tensor_types=(SENSITIVE_Q8_0,)),
        "IQ4_NL": Variant("IQ4_NL"),
        "IQ4_NL embd Q8_0": Variant("IQ4_NL", token_embedding_type="Q8_0"),
        "IQ4_NL attn_v+ffn_down Q8_0": Variant("IQ4_NL", tensor_types=(SENSITIVE_Q8_0,)),
        "Q4_K_S": Variant("Q4_K_S"),
        "Q4_K_M": Variant("Q4_K_M"),
        "Q4_K_M Q6_K→Q8_0": Variant("Q4_K_M", token_embedding_type="Q8_0", tensor_types=(
            rf"blk\.({_more_bits_layers()})\.(attn_v|ffn_down)\.weight$=Q8_0",)),
        "Q5_K_M": Variant("Q5_K_M"),
        "Q6_K": Variant("Q6_K"),
    }


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower().replace("→", "-to-")).strip("-")


def build_variant(variant: Variant, paths: dict) -> Path:
    """The variant's GGUF, quantized from the F16 GGUF once and cached."""
    if variant.converted:
        return paths[variant.type.lower()]
    name = next(n for n, v in variants().items() if v == variant)
    out = CACHE / f"embedding-0.6b-shaped-{slug(name)}.gguf"
    if not out.is_file():
        from qwen3_gguf.quantization import plan_quantization, quantize

        plan = plan_quantization(paths["f16"], variant.type, recipe=variant.recipe,
                                 token_embedding_type=variant.token_embedding_type,
                                 tensor_types=variant.tensor_types)
        quantize(plan, out)
    return out


# --- texts -------------------------------------------------------------------------------------

WORDS = (
    "the of and to in is was for on that with as by at from his her they be this which or had "
    "not are but have it were all an their one has been its new more who also would after first "
    "two time other into can when there some many only most city school during over used may "
    "such years these world state people between both well under later known family while part "
    "system river music life work water light model data search query energy history market "
    "language network memory paper study process science number second early large small north "
    "south national public group team played season album film series game local street house"
).split()
DOC_LENGTHS = (64, 128, 256, 512, 1024, 2048)
QUICK_DOC_LENGTHS = (64, 128, 256, 512)
CURVE_LENGTHS = (128, 512, 2048, 8192)
QUICK_CURVE_LENGTHS = (128, 512)
N_QUERIES, QUICK_N_QUERIES = 32, 8
N_RERANK_DOCS = 20
RERANK_DOC_LENGTHS = (32, 256)  # passages, evenly spread over this range


class TextMaker:
    """Deterministic English-like texts of a given token length (EOS included)."""

    def __init__(self, gguf: Path, seed: int = 0):
        from qwen3_gguf import runtime

        runtime.init_backend()
        self._model = runtime.LlamaModel(gguf)
        self._rng = np.random.default_rng(seed)

    def n_tokens(self, text: str) -> int:
        return len(self._model.tokenize(text, special=False)) + 1  # + <|endoftext|>

    def text(self, target: int) -> str:
        words = [str(w) for w in self._rng.choice(WORDS, size=target + 16)]
        low, high = 1, len(words)
        while low < high:  # the most words whose tokens (and EOS) fit in `target`
            middle = (low + high + 1) // 2
            if self.n_tokens(" ".join(words[:middle]).capitalize() + ".") <= target:
                low = middle
            else:
                high = middle - 1
        return " ".join(words[:low]).capitalize() + "."

    def query(self) -> str:
        n = int(self._rng.integers(4, 12))
        return " ".join(str(w) for w in self._rng.choice(WORDS, size=n)) + "?"


def make_inputs(paths: dict[str, Path], quick: bool) -> dict:
    """The documents, queries, reranking passages and curve texts of the benchmarks (the same
    for every script: a seeded TextMaker over the Q8_0 GGUF's tokenizer)."""
    maker = TextMaker(paths["q8_0"])
    doc_lengths = QUICK_DOC_LENGTHS if quick else DOC_LENGTHS
    documents = [maker.text(n) for n in doc_lengths]
    queries = [maker.query() for _ in range(QUICK_N_QUERIES if quick else N_QUERIES)]
    prompts = [query_text(q, DEFAULT_INSTRUCTION) for q in queries]
    low, high = RERANK_DOC_LENGTHS
    n_rerank = 6 if quick else N_RERANK_DOCS
    rerank_docs = [maker.text(low + (high - low) * i // max(1, n_rerank - 1)) for i in range(n_rerank)]
    curve = {n: maker.text(n) for n in (QUICK_CURVE_LENGTHS if quick else CURVE_LENGTHS)}
    return {
        "documents": documents,
        "document_tokens": [maker.n_tokens(d) for d in documents],
        "queries": queries,
        "query_tokens": [maker.n_tokens(p) for p in prompts],
        "rerank_query": "which river flows through the city?",
        "rerank_documents": rerank_docs,
        "curve": {str(n): t for n, t in curve.items()},
        "curve_tokens": {str(n): maker.n_tokens(t) for n, t in curve.items()},
    }


# --- measuring in a fresh process (so that its peak RSS is its own) ---------------------------


class ChildFailed(RuntimeError):
    """A measuring child exited with an error; the message is its last line of stderr."""

    def __init__(self, returncode: int, stderr: str):
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        super().__init__(lines[-1] if lines else f"exit code {returncode}")
        self.stderr = stderr


def run_in_fresh_process(script: str | Path, spec: dict) -> dict:
    """`python SCRIPT --child SPEC` in a fresh interpreter; the JSON of its last line of stdout."""
    child = subprocess.run([sys.executable, str(script), "--child", json.dumps(spec)],
                           capture_output=True, text=True, cwd=ROOT)
    if child.returncode != 0:
        raise ChildFailed(child.returncode, child.stderr)
    return json.loads(child.stdout.strip().splitlines()[-1])


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: memory-mapped weights included)."""
    status = Path("/proc/self/status")
    if status.is_file():
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read_text()).group(1)) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def load_texts(spec: dict, as_prompts: bool) -> tuple[list[str], list[str]]:
    inputs = json.loads(Path(spec["inputs"]).read_text())
    if not as_prompts:
        return inputs["documents"], inputs["queries"]
    return inputs["documents"], [query_text(q, DEFAULT_INSTRUCTION) for q in inputs["queries"]]


def measure(load, encode_documents, encode_queries, spec: dict, queries_as_prompts: bool = True) -> dict:
    """The protocol of every embedding child of peers.py and quant_types.py; vectors are saved
    for the fidelity comparison. In a process: load, a short warm-up, the documents, peak RSS,
    then the queries. The queries go in with the instruction written in front, or as they are to
    qwen3-gguf, which writes it (and reuses its tokens across queries)."""
    documents, queries = load_texts(spec, queries_as_prompts)
    started = time.perf_counter()
    model = load()
    load_s = time.perf_counter() - started
    encode_documents(model, documents[:1])  # warm-up: the shortest document and two queries
    encode_queries(model, queries[:2])
    started, cpu = time.perf_counter(), time.process_time()
    document_vectors = encode_documents(model, documents)
    documents_s, documents_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    documents_rss = peak_rss()
    started, cpu = time.perf_counter(), time.process_time()
    query_vectors = encode_queries(model, queries)
    queries_s, queries_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    if spec.get("vectors"):
        np.savez(spec["vectors"], documents=np.asarray(document_vectors, dtype=np.float32),
                 queries=np.asarray(query_vectors, dtype=np.float32))
    return {"load_s": load_s, "documents_s": documents_s, "queries_s": queries_s, "documents_rss": documents_rss,
            "documents_cpu_s": documents_cpu_s, "queries_cpu_s": queries_cpu_s,
            "load_average": os.getloadavg()[1]}  # the machine is shared: how busy it was meanwhile


def child_qwen3_gguf(spec: dict) -> dict:
    """qwen3-gguf's Embedder.encode under the `measure` protocol."""
    from qwen3_gguf import Embedder

    def load():
        return Embedder(spec["model"], threads=spec["threads"])

    def documents(embedder, texts):
        return embedder.encode(texts)

    def queries(embedder, texts):
        return embedder.encode(texts, prompt_name="query")

    return measure(load, documents, queries, spec, queries_as_prompts=False)


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def cosines(vectors: Path, reference: Path) -> dict:
    """min/mean cosine of each row to the reference's row, documents and queries."""
    ours, theirs = np.load(vectors), np.load(reference)
    out = {}
    for part in ("documents", "queries"):
        cos = np.sum(unit(ours[part]) * unit(theirs[part]), axis=1)
        out[part] = {"min": float(cos.min()), "mean": float(cos.mean())}
    return out


# --- reports -----------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def cpu_kind() -> str:
    """The CPU's name with its family/model and widest vector extension: what decides the kernels."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return cpu_name()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = ("AVX-512" if "avx512f" in flags else "AVX2 (no AVX-512)" if "avx2" in flags else "no AVX2")
    extra = [name for flag, name in (("amx_tile", "AMX"), ("avx512_vnni", "VNNI"), ("avx_vnni", "AVX-VNNI"))
             if flag in flags]
    return (f"{cpu_name()}, family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, "
            + " + ".join([vector, *extra]))


def machine_meta(args, inputs: dict, tokens: dict) -> dict:
    """The machine, settings and inputs of a peers.py or quant_types.py run, for its report."""
    lengths = inputs["document_tokens"]
    return {"machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}", "threads": args.threads,
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "runs": args.runs, "date": time.strftime("%Y-%m-%d %H:%M"), "argv": " ".join(sys.argv[1:]),
            "n_documents": len(lengths), "document_lengths": f"{min(lengths)}–{max(lengths)}",
            "n_queries": len(inputs["queries"]), "tokens": tokens}


def head_rule(head: str) -> str:
    """The markdown rule under a table head."""
    return "|" + "---|" * (head.count("|") - 1)


# results.md: run.py writes the top of the file; every other section sits between its own
# <!-- name --> and <!-- /name --> markers, which run.py keeps when it rewrites the file.
SECTION = re.compile(r"<!-- ([\w-]+) -->\n.*?<!-- /\1 -->\n", re.S)


def write_section(name: str, text: str) -> None:
    """Put `text` into benchmarks/results.md between its own markers (replacing an earlier one,
    else at the end)."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    current = RESULTS_MD.read_text() if RESULTS_MD.is_file() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    if begin in current and end in current:
        before, rest = current.split(begin, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        current = before + block + ("\n" + after if after else "")
    else:
        current = current.rstrip("\n") + "\n\n" + block
    write_text_atomically(RESULTS_MD, current)


def kept_sections() -> str:
    """The marked sections of benchmarks/results.md, in order, for run.py to keep after its own."""
    if not RESULTS_MD.is_file():
        return ""
    return "".join("\n" + block.group(0) for block in SECTION.finditer(RESULTS_MD.read_text()))
