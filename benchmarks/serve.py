"""`qwen3-gguf serve` under concurrent load, against llama.cpp's llama-server on the same GGUF.

The 0.6B-shaped random-weight checkpoint at Q8_0 (built and cached by benchmarks/common.py), and
its reranker twin. A closed-loop load generator: C concurrent clients share a bounded list of
requests, each sending the next one when its answer arrives. Scenarios:

  queries    one query per request, the default instruction (llama-server gets it in the text)
  documents  8 documents of 64–512 tokens per request
  rerank     one query and 20 documents of 32–256 tokens per request

For each scenario and client count the systems take turns on the same inputs, `--rounds` times
(the order flips each round, so neither always runs first); the table has the median over rounds
of inputs/s, tokens/s (tokens as the embedding model sees them: prompt, instruction and EOS, the
same count for both systems), p50/p99 latency, and the errors of all rounds. The overhead table
compares the server with one client against Embedder.encode of the same inputs in this process,
alternating request by request.

llama-server comes from benchmarks/build_llama_server.sh (the llama.cpp that llama-cpp-python
0.3.36 vendors); without it only qwen3-gguf is measured.

    python benchmarks/serve.py                                  # the full matrix (long on 2 cores)
    python benchmarks/serve.py --clients 1,8,32 --scenarios queries --requests 64 --rounds 3
    python benchmarks/serve.py --clients 1,8 --scenarios rerank --rounds 1

Writes benchmarks/serve.json and the <!-- serve --> section of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from common import BENCH, CACHE, ROOT, TextMaker, build_models, write_section
from server_harness import free_port  # tests/server_harness.py (common.py puts tests/ on the path)

from qwen3_gguf.atomic import write_text_atomically
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION, query_text

LLAMA_SERVER = CACHE / "llama-server" / "bin" / "llama-server"
# --no-repack: no extra weight buffers (AMX on this VM raises SIGILL on Q8_0 weights; the
# qwen3-gguf engine must run without them too there).
LLAMA_SERVER_ARGS = ["--embedding", "--pooling", "last", "-np", "4", "-c", "8192", "-t", "2", "--no-repack"]
SCENARIOS = ("queries", "documents", "rerank")
DOC_LENGTHS = (64, 128, 192, 256, 320, 384, 448, 512)  # one request's 8 documents
RERANK_DOCS, RERANK_LENGTHS = 20, (32, 256)
REQUEST_TIMEOUT = 900.0
OURS = "qwen3-gguf serve"


# --- inputs ------------------------------------------------------------------------------------


def make_requests(maker: TextMaker, scenario: str, n: int) -> list[dict]:
    """n request specs: the texts, their token counts and the bodies each system is sent."""
    requests = []
    for _ in range(n):
        if scenario == "queries":
            query = maker.query()
            requests.append({"inputs": 1, "tokens": maker.n_tokens(query_text(query, DEFAULT_INSTRUCTION)),
                             "qwen3-gguf serve": {"input": query, "input_type": "query"},
                             "llama-server": {"input": query_text(query, DEFAULT_INSTRUCTION)}})
        elif scenario == "documents":
            docs = [maker.text(n_tokens) for n_tokens in DOC_LENGTHS]
            requests.append({"inputs": len(docs), "tokens": sum(maker.n_tokens(d) for d in docs),
                             "qwen3-gguf serve": {"input": docs}, "llama-server": {"input": docs}})
        else:
            low, high = RERANK_LENGTHS
            docs = [maker.text(low + (high - low) * j // (RERANK_DOCS - 1)) for j in range(RERANK_DOCS)]
            query = maker.query()
            body = {"query": query, "documents": docs, "return_documents": False}
            requests.append({"inputs": len(docs), "tokens": sum(maker.n_tokens(d) for d in docs),
                             "qwen3-gguf serve": body, "llama-server": body})
    return requests


def models(outtype: str) -> dict[str, Path]:
    """The 0.6B-shaped embedding and reranker GGUFs at `outtype`, built once (benchmarks/common.py's cache)."""
    from qwen3_gguf.convert import convert_checkpoint

    built = build_models()
    reranker = CACHE / f"reranker-0.6b-shaped-{outtype}.gguf"
    if not reranker.is_file():
        convert_checkpoint(built["reranker_checkpoint"], reranker, outtype=outtype, kind="reranker")
    return {"embedding": built[outtype], "reranker": reranker}


# --- servers -----------------------------------------------------------------------------------


class Server:
    """A server process on a free loopback port, up until stopped."""

    def __init__(self, name: str, command: list[str], port: int):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(CACHE / f"serve-bench-{name.replace(' ', '_')}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not become healthy")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def start_servers(paths: dict, with_llama_server: bool, scenarios: list[str]) -> dict[str, dict[str, Server]]:
    """Per system, the server that answers each scenario."""
    port = free_port()
    ours = Server("qwen3-gguf serve", [sys.executable, "-c", "from qwen3_gguf.cli import cli; cli()", "serve",
                                       "-m", str(paths["embedding"]), "--rerank-model", str(paths["reranker"]),
                                       "--threads", "2", "--port", str(port)], port)
    servers = {"qwen3-gguf serve": dict.fromkeys(scenarios, ours)}
    if with_llama_server:
        embed_port = free_port()
        embed = Server("llama-server", [str(LLAMA_SERVER), "-m", str(paths["embedding"]), *LLAMA_SERVER_ARGS,
                                        "--port", str(embed_port)], embed_port)
        systems = {s: embed for s in scenarios if s != "rerank"}
        if "rerank" in scenarios:
            rerank_port = free_port()
            systems["rerank"] = Server("llama-server rerank", [
                str(LLAMA_SERVER), "-m", str(paths["reranker"]), "--reranking", "-np", "4", "-c", "8192", "-t", "2",
                "--no-repack", "--port", str(rerank_port)], rerank_port)
        servers["llama-server"] = systems
    return servers


def route(scenario: str) -> str:
    return "/v1/rerank" if scenario == "rerank" else "/v1/embeddings"


# --- load --------------------------------------------------------------------------------------


async def load(url: str, path: str, bodies: list[dict], clients: int) -> dict:
    """Closed loop: `clients` workers take the next body until none is left."""
    pending = list(bodies)
    latencies, failures = [], []

    async def worker(client: httpx.AsyncClient):
        while pending:
            body = pending.pop(0)
            started = time.perf_counter()
            try:
                response = await client.post(path, json=body)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "latencies": latencies, "errors": len(failures), "first_error": failures[:1]}


def summarize(result: dict, requests: list[dict]) -> dict:
    latencies = sorted(result["latencies"])
    seconds = result["seconds"]
    return {
        "requests": len(requests),
        "inputs_per_s": sum(r["inputs"] for r in requests) / seconds,
        "tokens_per_s": sum(r["tokens"] for r in requests) / seconds,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "errors": result["errors"],
        "first_error": result["first_error"],
        "seconds": seconds,
    }


def median_row(scenario: str, clients: int, system: str, rounds: list[dict]) -> dict:
    """One table row: the median of each rate and latency over the rounds, all rounds' errors."""
    row = {"scenario": scenario, "clients": clients, "system": system, "requests": rounds[0]["requests"],
           "rounds": len(rounds), "errors": sum(r["errors"] for r in rounds),
           "first_error": next((r["first_error"] for r in rounds if r["first_error"]), [])}
    for key in ("inputs_per_s", "tokens_per_s", "p50_s", "p99_s", "seconds"):
        row[key] = statistics.median(r[key] for r in rounds)
    row["inputs_per_s_by_round"] = [round(r["inputs_per_s"], 3) for r in rounds]
    return row


def overhead(paths: dict, scenario: str, requests: list[dict], url: str) -> dict:
    """The server with one client against Embedder.encode / Reranker.score of the same inputs in
    this process, alternating request by request (so both see the same machine load)."""
    from qwen3_gguf import Embedder, Reranker

    if scenario == "rerank":
        model = Reranker(paths["reranker"], threads=2)

        def call(body):
            model.score(body["query"], body["documents"])
    else:
        model = Embedder(paths["embedding"], threads=2)
        options = {"prompt_name": "query"} if scenario == "queries" else {}

        def call(body):
            texts = body["input"]
            model.encode([texts] if isinstance(texts, str) else texts, **options)

    seconds = {"server": 0.0, "in_process": 0.0}
    with model, httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        call(requests[0][OURS])  # warm-up
        for r in requests:
            started = time.perf_counter()
            client.post(route(scenario), json=r[OURS]).raise_for_status()
            seconds["server"] += time.perf_counter() - started
            started = time.perf_counter()
            call(r[OURS])
            seconds["in_process"] += time.perf_counter() - started
    return {"scenario": scenario, "requests": len(requests), "in_process_s": seconds["in_process"],
            "server_s": seconds["server"], "overhead": seconds["server"] / seconds["in_process"] - 1}


# --- report ------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    lines = [f"## Server under load (`benchmarks/serve.py`, {report['date']})", "",
             f"{report['machine']}; load average {report['load_average']} at the start, "
             f"{report.get('load_average_end', '—')} at the end. "
             f"{report['outtype'].upper()} 0.6B-shaped models; llama-server `{' '.join(LLAMA_SERVER_ARGS)}`"
             + ("" if report["llama_server"] else " — **not measured in this run** (not built)")
             + f". Medians of {report['rounds']} round(s), the systems taking turns. Produced by "
             f"`{report['command']}`.", "",
             "| scenario | clients | system | requests | inputs/s | tokens/s | p50 s | p99 s | errors "
             "| inputs/s by round |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['scenario']} | {row['clients']} | {row['system']} | {row['requests']} | "
                     f"{row['inputs_per_s']:.2f} | {row['tokens_per_s']:.1f} | {row['p50_s']:.2f} | "
                     f"{row['p99_s']:.2f} | {row['errors']} | "
                     f"{', '.join(f'{x:.2f}' for x in row['inputs_per_s_by_round'])} |")
    if report["overhead"]:
        lines += ["", "Server overhead, one client, against the same calls in-process (alternating per request):", "",
                  "| scenario | requests | in-process s | server s | overhead |", "|---|---|---|---|---|"]
        for o in report["overhead"]:
            lines.append(f"| {o['scenario']} | {o['requests']} | {o['in_process_s']:.1f} | {o['server_s']:.1f} | "
                         f"{100 * o['overhead']:+.1f}% |")
    if report["targets"]:
        lines += ["", "| target | goal | measured | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def targets(report: dict) -> list[dict]:
    rows = {(r["scenario"], r["clients"], r["system"]): r for r in report["rows"]}
    found = []
    top = max((r["clients"] for r in report["rows"] if r["scenario"] == "queries"), default=None)
    ours, theirs = rows.get(("queries", top, "qwen3-gguf serve")), rows.get(("queries", top, "llama-server"))
    if ours and theirs:
        ratio = ours["inputs_per_s"] / theirs["inputs_per_s"]
        found.append({"target": f"queries/s at {top} clients", "goal": "≥ 4× llama-server",
                      "measured": f"{ratio:.2f}×", "met": ratio >= 4})
        p99 = ours["p99_s"] / theirs["p99_s"]
        found.append({"target": f"p99 at {top} clients", "goal": "≤ ¼ of llama-server's",
                      "measured": f"{p99:.2f}×", "met": p99 <= 0.25})
    for clients in sorted({r["clients"] for r in report["rows"] if r["scenario"] == "documents"}):
        ours, theirs = rows.get(("documents", clients, OURS)), rows.get(("documents", clients, "llama-server"))
        if ours and theirs:
            ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
            found.append({"target": f"documents tokens/s at {clients} clients", "goal": "≥ 1.1× llama-server",
                          "measured": f"{ratio:.2f}×", "met": ratio >= 1.1})
    for o in report["overhead"]:
        found.append({"target": f"server overhead, {o['scenario']}", "goal": "≤ 10%",
                      "measured": f"{100 * o['overhead']:+.1f}%", "met": o["overhead"] <= 0.10})
    errors = sum(r["errors"] for r in report["rows"])
    found.append({"target": "errors", "goal": "0", "measured": str(errors), "met": errors == 0})
    return found


def save(report: dict) -> None:
    report["targets"] = targets(report)
    write_text_atomically(BENCH / "serve.json", json.dumps(report, indent=2) + "\n")
    write_section("serve", markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=0,
                        help="requests per level (default: max(clients, 8) for queries, the client count otherwise)")
    parser.add_argument("--outtype", choices=("q8_0", "f16"), default="q8_0",
                        help="precision of both models (f16 where this machine's llama.cpp build cannot run Q8_0)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level; the table has medians (default 3)")
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument("--no-overhead", action="store_true", help="skip the in-process comparison")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    levels = [int(c) for c in args.clients.split(",")]
    with_llama_server = not args.no_llama_server and LLAMA_SERVER.is_file()

    paths = models(args.outtype)
    maker = TextMaker(paths["embedding"])
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
              "outtype": args.outtype, "llama_server": with_llama_server, "rounds": args.rounds,
              "command": "python benchmarks/serve.py " + " ".join(sys.argv[1:]), "rows": [], "overhead": []}
    servers = start_servers(paths, with_llama_server, scenarios)
    try:
        for scenario in scenarios:
            for clients in levels:
                n = args.requests or (max(clients, 8) if scenario == "queries" else clients)
                requests = make_requests(maker, scenario, n)
                by_system = {system: [] for system in servers}
                for round_index in range(args.rounds):
                    order = list(servers) if round_index % 2 == 0 else list(servers)[::-1]
                    for system in order:
                        server = servers[system][scenario]
                        asyncio.run(load(server.url, route(scenario), [requests[0][system]], 1))  # warm up
                        result = asyncio.run(load(server.url, route(scenario), [r[system] for r in requests],
                                                  clients))
                        by_system[system].append(summarize(result, requests))
                        print(json.dumps({"scenario": scenario, "clients": clients, "system": system,
                                          "round": round_index + 1, **by_system[system][-1]}),
                              file=sys.stderr, flush=True)
                for system, rounds in by_system.items():
                    report["rows"].append(median_row(scenario, clients, system, rounds))
                report["load_average_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
                save(report)
                if clients == 1 and not args.no_overhead:
                    report["overhead"].append(overhead(paths, scenario, requests, servers[OURS][scenario].url))
                    save(report)
    finally:
        for by_scenario in servers.values():
            for server in {id(s): s for s in by_scenario.values()}.values():
                server.stop()
    print(markdown(report))


if __name__ == "__main__":
    main()
