"""Scale-out: the Ray engine against in-process embed-files on one machine, same corpus, same model.

The 0.6B-shaped Q8_0 GGUF (or --quant; benchmarks/common.py builds and caches it) embeds one folder of
English-like text files three ways, alternating round by round in one process:

- in-process: TextFiles → Chunker → embed_documents, what `embed-files` runs (2 threads);
- Ray, 1 actor × 2 threads: `embed_into` a Parquet sink, local Ray;
- Ray, 2 actors × 1 thread: the same, two copies of the model.

Tokens/s counts chunk tokens over the whole job: model load included in every system (each
actor loads its own), Ray's own start (once per session) reported apart. Each actor also
records its memory (RSS, PSS, private) from /proc after every batch, to show how much of the
memory-mapped GGUF two actors share. Finally the sinks' write rates are measured on rows of
the model's width, without a model.

    python benchmarks/scale_out.py                 # 2 rounds (about 8 minutes on 2 cores)
    python benchmarks/scale_out.py --rounds 1 --files 8
    python benchmarks/scale_out.py --report-only   # the results.md section again, from scale_out.json

Writes benchmarks/scale_out.json and the "Scale-out" section of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import BENCH, CACHE, WORDS, build_models, cpu_name, log, write_section

from qwen3_gguf.atomic import write_text_atomically

SECTION_TITLE = "## Scale-out: Ray Data on one machine"
SYSTEMS = ("in-process embed-files", "Ray, 1 actor × 2 threads", "Ray, 2 actors × 1 thread")


def model_file(quant: str) -> Path:
    cached = CACHE / f"embedding-0.6b-shaped-{quant}.gguf"
    return cached if cached.is_file() else build_models()[quant]


def write_corpus(folder: Path, n_files: int, words_per_file: int) -> Path:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."
                     for _ in range(words_per_file // 12)]
        (folder / f"doc{i:03d}.txt").write_text(" ".join(sentences), encoding="utf-8")
    return folder


def memory_now() -> dict[str, int]:
    """Rss, Pss and Private (clean + dirty) of this process in bytes, from /proc/self/smaps_rollup."""
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", Path("/proc/self/smaps_rollup").read_text(), re.M))
    return {"rss": int(fields["Rss"]) * 1024, "pss": int(fields["Pss"]) * 1024,
            "private": (int(fields["Private_Clean"]) + int(fields["Private_Dirty"])) * 1024}


def measuring_worker(folder: Path) -> type:
    """A ChunkEmbedder that writes its process's memory to `folder` after every batch."""
    from qwen3_gguf.distributed import ChunkEmbedder

    class MeasuredEmbedder(ChunkEmbedder):
        def __call__(self, batch):
            rows = super().__call__(batch)
            (folder / f"{os.getpid()}.json").write_text(json.dumps(memory_now()))
            return rows

    return MeasuredEmbedder


def in_process(model: Path, corpus: Path) -> dict:
    from qwen3_gguf import Embedder
    from qwen3_gguf.files import Chunker, Counts, TextFiles, embed_documents

    started = time.perf_counter()
    counts = Counts()
    with Embedder(model, device="cpu", threads=2) as embedder:
        loaded = time.perf_counter()
        for _ in embed_documents(embedder, TextFiles([str(corpus)], counts=counts), Chunker(embedder), counts=counts):
            pass
        done = time.perf_counter()
        memory = memory_now()                # this process also holds the Ray driver
    return {"tokens": counts.tokens, "chunks": counts.chunks, "seconds": done - started, "load_s": loaded - started,
            "memory": [memory]}


def on_ray(model: Path, corpus: Path, out: Path, actors: int, threads: int) -> dict:
    from qwen3_gguf.distributed import ModelIdentity, embed_into, open_sink, read_files

    with tempfile.TemporaryDirectory() as memory_folder:
        report = embed_into(read_files([str(corpus)], files_per_block=1), open_sink(out, ModelIdentity.of(model)),
                            id_column="path", workers=actors, cpus_per_worker=threads, batch_size=1,
                            worker=measuring_worker(Path(memory_folder)))
        memory = [json.loads(p.read_text()) for p in Path(memory_folder).glob("*.json")]
    return {"tokens": report.counts.tokens, "chunks": report.counts.chunks, "seconds": report.seconds,
            "rows_written": report.rows_written, "memory": memory}


def sink_rates(dim: int, rows: int, rounds: int) -> dict[str, float]:
    """Rows/s the driver's sinks write, on random unit vectors of the model's width."""
    import numpy as np
    import pyarrow as pa

    from qwen3_gguf.distributed import ModelIdentity, open_sink, output_schema
    from qwen3_gguf.distributed.identity import chunk_id

    identity = ModelIdentity("bench", "bench.gguf", "bench", "Q8_0", dim, dim, "0" * 64)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    text = " ".join(WORDS[:80])
    table = pa.table([
        pa.array([chunk_id(f"/corpus/{i}.txt", 0, identity.fingerprint) for i in range(rows)]),
        pa.array([f"/corpus/{i}.txt" for i in range(rows)]), pa.array([0] * rows, pa.int64()),
        pa.array([0] * rows, pa.int64()), pa.array([len(text)] * rows, pa.int64()), pa.array([dim] * rows, pa.int64()),
        pa.array([identity.key] * rows), pa.array([100] * rows, pa.int64()), pa.array([text] * rows),
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    ], schema=output_schema(dim))
    rates: dict[str, list[float]] = {"parquet": [], "lance": []}
    for _ in range(rounds):
        for fmt in rates:
            with tempfile.TemporaryDirectory() as folder:
                sink = open_sink(f"{folder}/sink", identity, fmt=fmt)
                started = time.perf_counter()
                for start in range(0, rows, 1024):      # batches as they come back from the actors
                    sink.write(table.slice(start, 1024))
                sink.flush()
                rates[fmt].append(rows / (time.perf_counter() - started))
    return {fmt: statistics.median(r) for fmt, r in rates.items()}


def markdown(results: dict) -> str:
    meta, rows = results["meta"], results["systems"]
    base = rows[SYSTEMS[0]]["tokens_per_s"]
    lines = [SECTION_TITLE, "",
             f"{meta['machine']}; {meta['files']} files, {meta['chunks']} chunks, {meta['tokens']:,} tokens; "
             f"0.6B-shaped {meta['quant']}; median of {meta['rounds']} round(s), systems alternating within "
             "each round; "
             f"{meta['date']}. The machine was shared with other work while this ran. Produced by "
             f"`python benchmarks/scale_out.py {meta['argv']}`.".replace("scale_out.py `", "scale_out.py`"),
             "",
             "| system | tokens/s (model load included) | × in-process | per process: RSS / PSS / private MiB |",
             "|---|---|---|---|"]
    for name in SYSTEMS:
        row = rows[name]
        memory = "; ".join(f"{m['rss'] / 2**20:,.0f} / {m['pss'] / 2**20:,.0f} / {m['private'] / 2**20:,.0f}"
                           for m in row["memory"])
        lines.append(f"| {name} | {row['tokens_per_s']:.1f} | {row['tokens_per_s'] / base:.2f} | {memory} |")
    low, high = sorted(meta["load_average"])
    if high > os.cpu_count():
        lines += ["", f"Load average {low:g}–{high:g} on {os.cpu_count()} cores while this ran: every system got "
                  "a fraction of a core, and a process's share grew with its runnable threads, so the rates are "
                  "far below a quiet machine's and the ratios say more about that contention than about Ray. "
                  "What they do show is that Ray's own overhead is lost in that noise at these rates."]
    lines += ["",
              f"Ray start (`ray.init`, once per session, not in the rates): {meta['ray_init_s']:.1f} s. "
              f"Model load in-process: {meta['load_s']:.1f} s (page cache warm). "
              f"Sinks, written by the driver, rows of {meta['dim']} float32 plus text and ids: "
              f"Parquet {results['sinks']['parquet']:,.0f} rows/s, LanceDB merge_insert "
              f"{results['sinks']['lance']:,.0f} rows/s.", ""]
    return "\n".join(lines + scaling_notes(results))


def scaling_notes(results: dict) -> list[str]:
    """How the measured parts carry to N machines, and what would limit it (argued from them)."""
    meta, rows, sinks = results["meta"], results["systems"], results["sinks"]
    one_actor = rows[SYSTEMS[1]]
    private = max(m["private"] for m in rows[SYSTEMS[2]]["memory"]) / 2**20
    shared = max(m["rss"] - m["private"] for m in rows[SYSTEMS[2]]["memory"]) / 2**20
    tokens_per_chunk = meta["tokens"] / meta["chunks"]
    per_core = quiet_tokens_per_core() or one_actor["tokens_per_s"] / 2
    sink_tokens = min(sinks.values()) * tokens_per_chunk
    return [
        "How this carries to N machines (the table above is measured; this is argued from it):",
        "",
        f"- Compute: actors share nothing but the sink, so a cluster's rate is the sum of its nodes' rates, "
        f"about {per_core:.0f} tokens/s per core for this model on this CPU when it is quiet (the Q8_0 row "
        f"of the documents table above, over its threads). The fixed costs are paid once per "
        f"job (Ray start, {meta['ray_init_s']:.0f} s here) and once per actor (process start and model load, "
        f"inside the rates above): they matter for a corpus of minutes, not of days.",
        f"- Memory per node: the GGUF is memory-mapped, so actors on one node share its pages (each actor's "
        f"RSS counts them, its PSS splits them: ~{shared:,.0f} MiB shared above); what each actor adds is its "
        f"private memory (~{private:,.0f} MiB: its context's KV cache and compute buffers, and any "
        f"weights llama.cpp copies out of the mapping). Fewer, wider actors save that; llama.cpp's "
        f"threads scale sub-linearly, so more, narrower actors can give more tokens/s per node while memory allows.",
        f"- The driver: it walks and reads the files (text reads at disk speed, orders of magnitude above "
        f"embedding rates) and puts them in Ray's object store up front (memory or spilled disk of the "
        f"corpus's size). It also writes the sink: {min(sinks.values()):,.0f} rows/s of "
        f"{tokens_per_chunk:.0f}-token chunks is {sink_tokens / 1e6:.1f} million tokens/s, what about "
        f"{sink_tokens / per_core:,.0f} such cores embed, or a few hundred GPUs at ~10,000 tokens/s each; "
        f"past that, writing per worker (Ray Data's own `write_parquet`) would "
        f"be the next step.",
        "- Resuming: the ids already written (32 bytes each) are read by the driver and shared with every "
        "actor through the object store: ~3 GiB per 100 million chunks, the limit of this design; a "
        "larger corpus would need the anti-join done as a distributed join.",
        "",
    ]


def quiet_tokens_per_core() -> float | None:
    """Q8_0 documents tokens/s per thread from benchmarks/run.py's results, if they are there."""
    try:
        results = json.loads((BENCH / "results.json").read_text())
        row = next(r for r in results["documents"]["rows"] if r["label"] == "qwen3-gguf Embedder.encode Q8_0")
        return row["tokens_per_s"] / results["meta"]["threads"]
    except (OSError, KeyError, StopIteration, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quant", choices=("q8_0", "q4_k_m", "f16"), default="q8_0", help="the model (default q8_0)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three systems (default 2)")
    parser.add_argument("--files", type=int, default=16, help="files in the corpus (default 16)")
    parser.add_argument("--words", type=int, default=240, help="words per file (default 240, about 270 tokens)")
    parser.add_argument("--sink-rows", type=int, default=20000, help="rows per sink rate measurement")
    parser.add_argument("--report-only", action="store_true", help="rewrite the results.md section from scale_out.json")
    args = parser.parse_args()
    if args.report_only:
        return write_report(json.loads((BENCH / "scale_out.json").read_text()))

    import ray

    from qwen3_gguf.distributed import ModelIdentity

    model = model_file(args.quant)
    ModelIdentity.of(model)              # reads the whole file: the page cache is warm for every system
    with tempfile.TemporaryDirectory() as scratch:
        corpus = write_corpus(Path(scratch) / "corpus", args.files, args.words)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - started
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        runs: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
        for round_ in range(args.rounds):
            order = SYSTEMS if round_ % 2 == 0 else tuple(reversed(SYSTEMS))
            for name in order:
                log(f"round {round_ + 1}: {name}")
                if name == SYSTEMS[0]:
                    result = in_process(model, corpus)
                else:
                    actors, threads = (1, 2) if name == SYSTEMS[1] else (2, 1)
                    result = on_ray(model, corpus, Path(scratch) / f"out-{round_}-{actors}", actors, threads)
                result["tokens_per_s"] = result["tokens"] / result["seconds"]
                log(f"  {result['tokens']} tokens in {result['seconds']:.1f} s: {result['tokens_per_s']:.1f} tokens/s")
                runs[name].append(result)
        ray.shutdown()

    from qwen3_gguf.gguf_file import read_model_file

    first = runs[SYSTEMS[0]][0]
    assert all(r["tokens"] == first["tokens"] for rs in runs.values() for r in rs), "systems saw different tokens"
    results = {
        "meta": {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "quant": args.quant.upper(), "files": args.files,
                 "chunks": first["chunks"],
                 "tokens": first["tokens"], "rounds": args.rounds, "date": time.strftime("%Y-%m-%d %H:%M"),
                 "argv": " ".join(sys.argv[1:]), "ray_init_s": ray_init_s,
                 "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                 "load_s": statistics.median(r["load_s"] for r in runs[SYSTEMS[0]]),
                 "dim": read_model_file(model).embedding_length},
        "systems": {name: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                           "runs_tokens_per_s": [r["tokens_per_s"] for r in rs],
                           "memory": rs[-1]["memory"]} for name, rs in runs.items()},
        "sinks": sink_rates(read_model_file(model).embedding_length, args.sink_rows, max(1, args.rounds)),
    }
    write_text_atomically(BENCH / "scale_out.json", json.dumps(results, indent=2) + "\n")
    write_report(results)


def write_report(results: dict) -> None:
    section = markdown(results)
    write_section("scale-out", section)
    print(section)


if __name__ == "__main__":
    main()
