"""Peak memory and time of `convert_checkpoint` on a 0.6B-shaped checkpoint.

The goal: peak RSS stays near the largest single tensor, not the checkpoint size (an 8B
checkpoint is 16 GB on a 24 GB machine). The checkpoint is synthetic: Qwen3-0.6B shapes
(hidden 1024, 28 layers, 16/8 heads, head_dim 128, FFN 3072, vocab 151,669, tied), random
BF16 weights written by a small safetensors writer here, and the real Qwen tokenizer files
from tests/checkpoints.py. Each output type is converted in a fresh subprocess that reports
its own peak RSS (VmHWM, which counts memory-mapped file pages too).

    python benchmarks/convert_rss.py [--outtypes f16,bf16,q8_0,f32] [--workdir DIR]

Prints a table and writes benchmarks/convert_rss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, ffn=3072, vocab=151_669)
BYTES_PER_VALUE = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32}  # of the GGUF matrices

# Runs in the child: convert, then report time and this process's peak RSS. VmHWM (Linux)
# starts afresh at exec; ru_maxrss would include the RSS of the parent that forked us.
CHILD = """
import json, re, resource, sys, time
from pathlib import Path
from qwen3_gguf.convert import convert_checkpoint

def peak_rss():
    status = Path("/proc/self/status")
    if status.is_file():
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read_text()).group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS

baseline = peak_rss()
start = time.perf_counter()
result = convert_checkpoint(sys.argv[1], sys.argv[2], outtype=sys.argv[3], kind="embedding")
seconds = time.perf_counter() - start
peak = peak_rss()
print(json.dumps({"seconds": seconds, "peak_rss": peak, "import_rss": baseline,
                  "n_bytes": result.n_bytes, "n_tensors": result.n_tensors}))
"""


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
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import write_tokenizer_files  # the real Qwen vocabulary

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

    mib = 1 << 20
    print(f"checkpoint: {checkpoint_bytes / mib:,.0f} MiB BF16; largest tensor "
          f"(embed_tokens) {largest / mib:,.0f} MiB BF16")
    columns = ("outtype", "seconds", "peak RSS MiB", "largest out tensor MiB", "GGUF MiB")
    print("  ".join(f"{c:>{max(len(c), 8)}}" for c in columns))
    for row in rows:
        row["largest_output_tensor"] = largest // 2 * BYTES_PER_VALUE[row["outtype"]]
        values = (row["outtype"], f"{row['seconds']:.1f}", f"{row['peak_rss'] / mib:,.0f}",
                  f"{row['largest_output_tensor'] / mib:,.0f}", f"{row['n_bytes'] / mib:,.0f}")
        print("  ".join(f"{v:>{max(len(c), 8)}}" for c, v in zip(columns, values)))
    report = {
        "shape": SHAPE, "checkpoint_bytes": checkpoint_bytes, "largest_tensor_bytes": largest,
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "results": rows,
    }
    (ROOT / "benchmarks" / "convert_rss.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
