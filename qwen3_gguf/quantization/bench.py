"""Which file type is fastest on this machine at a fidelity floor (`qwen3-gguf bench --types`).

A full-precision GGUF is quantized to each type (kept in a work folder, keyed by the source's
sha256 and the type), every file embeds the same synthetic documents and queries with the types
alternated round by round (a shared machine drifts; medians of interleaved rounds share the
drift), and each file's vectors are compared with the source file's own, run on the exact path.
The numerics each file runs with come from runtime.precision for the measured input lengths.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..gguf_file import ModelFile, file_sha256
from ..prompts import DEFAULT_INSTRUCTION, query_text
from ..runtime.precision import EMBEDDING, numerics_for
from .plan import plan_quantization
from .quantizer import quantize
from .recipes import parse_type

DOCUMENT_TOKENS = 512   # a chunk as `embed-files` cuts them
QUERIES_PER_ROUND = 8
DEFAULT_MIN_COSINE = 0.99
STOCK_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")
FULL_PRECISION_FILE_TYPES = ("ALL_F32", "F16", "BF16")   # ModelFile.file_type of a file quantize starts from
SPEED_KINDS = ("documents", "queries")
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


@dataclass(frozen=True)
class BenchTexts:
    """The inputs every file is measured on: 512-token documents and one batch of short queries."""

    documents: list[str]
    document_tokens: list[int]
    queries: list[str]
    query_tokens: int      # the batch's total, instruction and EOS included


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


def bench_texts(embedder) -> BenchTexts:
    """The documents and queries, tokenized by `embedder` (every Qwen3 GGUF shares the vocabulary)."""
    documents = [synthetic_document(embedder, DOCUMENT_TOKENS, seed) for seed in range(3)]
    queries = synthetic_queries(QUERIES_PER_ROUND)
    return BenchTexts(
        documents=documents, document_tokens=[len(embedder.tokenize(d)[0]) for d in documents], queries=queries,
        query_tokens=sum(len(embedder.tokenize(query_text(q, DEFAULT_INSTRUCTION))[0]) for q in queries))


def measure(embedders: dict[str, object], texts: BenchTexts, seconds: float) -> dict[str, dict[str, Throughput]]:
    """Tokens/s of documents (one per call) and queries (one batch per call) for every embedder.

    After one untimed round of each (contexts allocated, pages touched), each round runs every
    embedder's document call, then every embedder's query batch; rounds go on until
    `seconds` per embedder have passed, at least two of them.
    """
    def document_round(embedder, i):
        embedder.encode([texts.documents[i % len(texts.documents)]])
        return texts.document_tokens[i % len(texts.documents)]

    def query_round(embedder, _):
        embedder.encode(texts.queries, prompt_name="query")
        return texts.query_tokens

    rounds = {"documents": (document_round, 1), "queries": (query_round, len(texts.queries))}
    for embedder in embedders.values():
        for run, _ in rounds.values():
            run(embedder, 0)
    timings = {name: {kind: [] for kind in rounds} for name in embedders}
    started = time.perf_counter()
    i = 0
    while i < 2 or time.perf_counter() - started < seconds * len(embedders):
        for kind, (run, _) in rounds.items():
            for name, embedder in embedders.items():
                begin = time.perf_counter()
                tokens = run(embedder, i)
                timings[name][kind].append((time.perf_counter() - begin, tokens))
        i += 1
    return {name: {kind: _throughput(timings[name][kind], texts_per_round)
                   for kind, (_, texts_per_round) in rounds.items()}
            for name in embedders}


def _throughput(timed: list[tuple[float, int]], texts_per_round: int) -> Throughput:
    return Throughput(tokens_per_s=statistics.median(tokens / s for s, tokens in timed),
                      texts_per_s=statistics.median(texts_per_round / s for s, _ in timed),
                      rounds=len(timed),
                      tokens_per_text=statistics.mean(tokens for _, tokens in timed) / texts_per_round)


# --- the files ---------------------------------------------------------------------------------------------------


def check_source(source: ModelFile) -> None:
    """bench --types quantizes `source`: it must be an embedding model at full precision."""
    if source.kind != EMBEDDING:
        raise UserError(f"{source.path} is a {source.kind}; bench measures embedding GGUFs only")
    if source.file_type not in FULL_PRECISION_FILE_TYPES:
        raise UserError(f"{source.path} is already quantized ({source.file_type}); bench --types quantizes from an "
                        "F32, F16 or BF16 GGUF (qwen3-gguf convert --outtype f16)")


def type_names(spec: str, source: ModelFile) -> list[str]:
    """The types a --types value asks for (`all`/`stock`: STOCK_TYPES), as parse_type spells them, without
    the source's own type (the source is measured as itself). Unknown names are a UserError."""
    wanted = STOCK_TYPES if spec.strip().lower() in ("all", "stock") else [n for n in spec.split(",") if n.strip()]
    if not wanted:
        raise UserError("--types is empty; give types such as q8_0,q4_k_m, or 'all'")
    names = []
    for name in wanted:
        quant_type = parse_type(name)
        file_type = quant_type.file_type.ftype.name.removeprefix("MOSTLY_")
        is_source = quant_type.keep is None and file_type == source.file_type
        if not is_source and quant_type.name not in names:
            names.append(quant_type.name)
    return names


def default_work_dir() -> Path:
    """Where quantized files are kept between runs: platformdirs' user cache folder."""
    from platformdirs import user_cache_path

    return user_cache_path("qwen3-gguf", appauthor=False) / "bench"


def quantized_files(source: ModelFile, names: Sequence[str], work_dir: Path, *, threads: int | None,
                    show_progress: bool, report: Callable[[str], None]) -> dict[str, Path]:
    """A file of `source` for each type name, in `work_dir` as SHA256-TYPE.gguf; files already there
    are reused. Every type is planned (and any problem raised) before the first is quantized."""
    plans = {name: plan_quantization(source.path, name) for name in names}
    if not plans:
        return {}
    report(f"hashing {source.path}")
    digest = file_sha256(source.path)[:16]
    work_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, plan in plans.items():
        path = work_dir / f"{digest}-{name}.gguf"
        if path.is_file():
            report(f"reusing {path}")
        else:
            quantize(plan, path, threads=threads, show_progress=show_progress)
            report(f"wrote {path}")
        files[name] = path
    return files


# --- the comparison -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeRow:
    """One file's line in the table."""

    type_name: str
    path: str
    is_source: bool
    size_bytes: int
    bits_per_weight: float
    documents_numerics: str
    queries_numerics: str
    documents: Throughput
    queries: Throughput
    mean_cosine: float      # to the source file's vectors, documents and queries together (1 for the source)
    min_cosine: float

    def tokens_per_s(self, kind: str) -> float:
        return getattr(self, kind).tokens_per_s


def embed_all(embedder, texts: BenchTexts) -> np.ndarray:
    """The vectors of the documents and the queries, in that order."""
    return np.concatenate([embedder.encode(texts.documents), embedder.encode(texts.queries, prompt_name="query")])


def type_row(type_name: str, model: ModelFile, llama_file_type: int | None, *, is_source: bool,
             speeds: dict[str, Throughput], cosines: np.ndarray) -> TypeRow:
    numerics = {kind: numerics_for(llama_file_type, kind=EMBEDDING, n_tokens=round(speeds[kind].tokens_per_text)).short
                for kind in SPEED_KINDS}
    return TypeRow(type_name=type_name, path=str(model.path), is_source=is_source, size_bytes=model.file_size,
                   bits_per_weight=model.bits_per_weight, documents_numerics=numerics["documents"],
                   queries_numerics=numerics["queries"], documents=speeds["documents"], queries=speeds["queries"],
                   mean_cosine=float(np.mean(cosines)), min_cosine=float(np.min(cosines)))


def fastest_meeting(rows: Sequence[TypeRow], min_cosine: float, by: str = "documents") -> TypeRow | None:
    """The row with the most `by` tokens/s among those whose mean cosine is at least `min_cosine`."""
    meeting = [row for row in rows if row.mean_cosine >= min_cosine]
    return max(meeting, key=lambda row: row.tokens_per_s(by), default=None)


def format_table(rows: Sequence[TypeRow]) -> list[str]:
    lines = [f"{'type':<12} {'MiB':>8} {'bpw':>6}  {'numerics docs':<14} {'numerics queries':<16} "
             f"{'docs tok/s':>10} {'queries tok/s':>13} {'mean cos':>9} {'min cos':>9}"]
    for row in rows:
        name = f"{row.type_name}*" if row.is_source else row.type_name
        lines.append(f"{name:<12} {row.size_bytes / 2**20:>8.1f} {row.bits_per_weight:>6.2f}  "
                     f"{row.documents_numerics:<14} {row.queries_numerics:<16} {row.documents.tokens_per_s:>10.1f} "
                     f"{row.queries.tokens_per_s:>13.1f} {row.mean_cosine:>9.5f} {row.min_cosine:>9.5f}")
    return lines


def choice_line(rows: Sequence[TypeRow], min_cosine: float, by: str = "documents") -> str:
    """The verdict under the table: the fastest file meeting the floor and its path, or why there is none."""
    chosen = fastest_meeting(rows, min_cosine, by)
    if chosen is None:
        best = max(rows, key=lambda row: row.mean_cosine)
        return (f"no file reaches mean cosine {min_cosine:g} (the closest: {best.type_name} at "
                f"{best.mean_cosine:.5f}); lower --min-cosine or add a type with more bits")
    return (f"fastest {by} at mean cosine >= {min_cosine:g}: {chosen.type_name} "
            f"({chosen.tokens_per_s(by):.1f} tokens/s, mean cosine {chosen.mean_cosine:.5f}) {chosen.path}")
