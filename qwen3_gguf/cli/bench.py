"""`qwen3-gguf bench`: documents and queries tokens/s of an embedding GGUF on this machine."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass

import click

from ._common import runtime_options

DOCUMENT_TOKENS = 512   # a chunk as `embed-files` cuts them
QUERIES_PER_ROUND = 8
WORDS = (
    "river city market language history light water music school energy paper model search network "
    "memory science season album street house system family world people north south early large"
).split()


@dataclass
class Throughput:
    """What one kind of input achieved: the median over timed rounds."""

    tokens_per_s: float
    texts_per_s: float
    rounds: int
    tokens_per_text: float


def synthetic_document(embedder, n_tokens: int, seed: int) -> str:
    """Words (a fixed pseudo-random sequence) whose tokens, EOS included, number `n_tokens` or
    just under: the longest prefix that fits, by bisection on the tokenizer's count."""
    words = [WORDS[(seed * 7919 + i * i * 31 + i) % len(WORDS)] for i in range(n_tokens + 8)]
    low, high = 1, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if len(embedder.tokenize(" ".join(words[:middle]))[0]) <= n_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def synthetic_queries(n: int) -> list[str]:
    return [" ".join(WORDS[(q * 5 + i * 3) % len(WORDS)] for i in range(6 + q % 5)) + "?" for q in range(n)]


def measure(embedder, seconds: float) -> dict[str, Throughput]:
    """Alternate one-document and one-batch-of-queries rounds (after one untimed round of each)
    until `seconds` have passed, at least two timed rounds of each."""
    from ..prompts import DEFAULT_INSTRUCTION, query_text

    documents = [synthetic_document(embedder, DOCUMENT_TOKENS, seed) for seed in range(3)]
    queries = synthetic_queries(QUERIES_PER_ROUND)
    query_tokens = sum(len(embedder.tokenize(query_text(q, DEFAULT_INSTRUCTION))[0]) for q in queries)
    rounds = {
        "documents": (lambda i: embedder.encode([documents[i % len(documents)]]),
                      [len(embedder.tokenize(d)[0]) for d in documents], 1),
        "queries": (lambda i: embedder.encode(queries, prompt_name="query"), [query_tokens], len(queries)),
    }
    for run, _, _ in rounds.values():  # warm-up: contexts allocated, pages touched
        run(0)
    timings: dict[str, list[tuple[float, int]]] = {name: [] for name in rounds}
    started = time.perf_counter()
    i = 0
    while i < 2 or time.perf_counter() - started < seconds:
        for name, (run, tokens, _) in rounds.items():
            begin = time.perf_counter()
            run(i)
            timings[name].append((time.perf_counter() - begin, tokens[i % len(tokens)]))
        i += 1
    out = {}
    for name, (_, _, texts_per_round) in rounds.items():
        rates = [tokens / s for s, tokens in timings[name]]
        out[name] = Throughput(
            tokens_per_s=statistics.median(rates),
            texts_per_s=statistics.median(texts_per_round / s for s, _ in timings[name]),
            rounds=len(timings[name]),
            tokens_per_text=statistics.mean(tokens for _, tokens in timings[name]) / texts_per_round)
    return out


@click.command()
@click.argument("model")
@runtime_options
@click.option("--seconds", type=click.FloatRange(min=1), default=20, show_default=True,
              help="Time spent measuring, after loading and one warm-up round.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def bench(model: str, device: str, threads: int | None, seconds: float, as_json: bool) -> None:
    """Measure how fast an embedding MODEL (GGUF file or catalog name) runs here.

    Alternates 512-token documents (one per call) and batches of 8 short queries under the
    default instruction, and prints the median tokens/s of each: the numbers to choose a
    quantization type for this machine by. Tokens are counted as the model sees them (the
    query instruction and the EOS included).
    """
    from ..embed import Embedder
    from ..runtime.backend import default_threads

    started = time.perf_counter()
    with Embedder(model, device=device, threads=threads) as embedder:
        loaded = time.perf_counter() - started
        results = measure(embedder, seconds)
        facts = {"model": str(embedder.model_file.path), "file type": embedder.model_file.file_type,
                 "device": device, "threads": threads or default_threads(), "load_s": round(loaded, 2)}
    if as_json:
        click.echo(json.dumps({**facts, **{name: asdict(r) for name, r in results.items()}}))
        return
    click.echo(f"{facts['model']} ({facts['file type']}), device {device}, {facts['threads']} threads, "
               f"loaded in {loaded:.1f} s")
    click.echo(f"{'':<10} {'tokens/s':>9} {'texts/s':>8} {'rounds':>7}  input")
    described = {"documents": f"one document of {results['documents'].tokens_per_text:.0f} tokens per call",
                 "queries": f"{QUERIES_PER_ROUND} queries of {results['queries'].tokens_per_text:.0f} tokens "
                            "(instruction included) per call"}
    for name, r in results.items():
        click.echo(f"{name:<10} {r.tokens_per_s:>9.1f} {r.texts_per_s:>8.3g} {r.rounds:>7}  {described[name]}")
