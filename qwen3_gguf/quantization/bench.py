"""Which file type is fastest on this machine at a fidelity floor (`qwen3-gguf bench --types`).

A full-precision GGUF is quantized to each type (kept in a work folder, keyed by the source's
sha256 and the type); every file runs the same synthetic inputs with the files alternated round
by round (a shared machine drifts; medians of interleaved rounds share the drift), and each
file's outputs are compared with the source file's own, which run on the exact path: cosine of
an embedding model's vectors, |ΔP(yes)| of a reranker's scores. The numerics each file runs
with come from runtime.precision for the measured input lengths.
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
from ..runtime.precision import EMBEDDING, RERANKER, numerics_for
from .fidelity import row_cosines
from .plan import plan_quantization
from .quantizer import quantize
from .recipes import parse_type

DOCUMENT_TOKENS = 512   # a chunk as `embed-files` cuts them
QUERIES_PER_ROUND = 8
RERANK_FIDELITY_QUERIES = 2   # each scored against every document: the pairs |ΔP(yes)| is measured on
DEFAULT_MIN_COSINE = 0.99
DEFAULT_MAX_DELTA_P = 0.01
STOCK_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")
FULL_PRECISION_FILE_TYPES = ("ALL_F32", "F16", "BF16")   # ModelFile.file_type of a file quantize starts from
SPEED_KINDS = ("documents", "queries")
COSINE, DELTA_P = "cosine", "|dP(yes)|"
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


def synthetic_document(count_tokens: Callable[[str], int], n_tokens: int, seed: int) -> str:
    """Words (a fixed pseudo-random sequence) whose tokens, as `count_tokens` counts them, number
    `n_tokens` or just under: the longest prefix that fits, by bisection."""
    words = [WORDS[(seed * 7919 + i * i * 31 + i) % len(WORDS)] for i in range(n_tokens + 8)]
    low, high = 1, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(" ".join(words[:middle])) <= n_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def synthetic_queries(n: int) -> list[str]:
    return [" ".join(WORDS[(q * 5 + i * 3) % len(WORDS)] for i in range(6 + q % 5)) + "?" for q in range(n)]


class EmbeddingWorkload:
    """Documents of 512 tokens (EOS included), one per call, and batches of 8 short queries under the
    default instruction; fidelity is the cosine of each text's vector to the source's."""

    kind = EMBEDDING
    fidelity_measure = COSINE
    speed_kinds = SPEED_KINDS

    def __init__(self, embedder):
        def count(text):
            return len(embedder.tokenize(text)[0])

        self.documents = [synthetic_document(count, DOCUMENT_TOKENS, seed) for seed in range(3)]
        self.document_tokens = [count(d) for d in self.documents]
        self.queries = synthetic_queries(QUERIES_PER_ROUND)
        self.query_tokens = sum(count(query_text(q, DEFAULT_INSTRUCTION)) for q in self.queries)

    def describe(self, speeds: dict[str, Throughput]) -> str:
        return (f"documents of {speeds['documents'].tokens_per_text:.0f} tokens, one per call; "
                f"{len(self.queries)} queries of {speeds['queries'].tokens_per_text:.0f} tokens (instruction included) "
                "per call")

    def rounds(self) -> dict[str, tuple[Callable[[object, int], int], int]]:
        """Per speed kind: a call (model, round number) → tokens it ran, and the texts per call."""
        def document_round(embedder, i):
            embedder.encode([self.documents[i % len(self.documents)]])
            return self.document_tokens[i % len(self.documents)]

        def query_round(embedder, _):
            embedder.encode(self.queries, prompt_name="query")
            return self.query_tokens

        return {"documents": (document_round, 1), "queries": (query_round, len(self.queries))}

    def outputs(self, embedder) -> np.ndarray:
        """The vectors of the documents and the queries, in that order."""
        return np.concatenate([embedder.encode(self.documents), embedder.encode(self.queries, prompt_name="query")])

    def fidelity(self, reference: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        return row_cosines(reference, outputs)


class RerankerWorkload:
    """A query and a document, a prompt of 512 tokens, one pair per call; fidelity is |ΔP(yes)| of
    each query × document pair against the source's score."""

    kind = RERANKER
    fidelity_measure = DELTA_P
    speed_kinds = ("documents",)

    def __init__(self, reranker):
        self.queries = synthetic_queries(QUERIES_PER_ROUND)
        self.documents = [synthetic_document(lambda text, q=q: reranker.prompt_length(q, text), DOCUMENT_TOKENS, seed)
                          for seed, q in enumerate(self.queries[:3])]
        self.prompt_tokens = [reranker.prompt_length(q, d) for q, d in zip(self.queries, self.documents)]

    def describe(self, speeds: dict[str, Throughput]) -> str:
        return f"a query and a document, prompts of {speeds['documents'].tokens_per_text:.0f} tokens, one per call"

    def rounds(self) -> dict[str, tuple[Callable[[object, int], int], int]]:
        def pair_round(reranker, i):
            reranker.score(self.queries[i % len(self.documents)], [self.documents[i % len(self.documents)]])
            return self.prompt_tokens[i % len(self.documents)]

        return {"documents": (pair_round, 1)}

    def outputs(self, reranker) -> np.ndarray:
        """P(yes) of the first queries against every document, query by query."""
        return np.concatenate([reranker.score(q, self.documents) for q in self.queries[:RERANK_FIDELITY_QUERIES]])

    def fidelity(self, reference: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        return np.abs(outputs - reference)


def measure(models: dict[str, object], workload, seconds: float) -> dict[str, dict[str, Throughput]]:
    """Tokens/s of each kind of call in `workload.rounds()` for every model (Embedder or Reranker).

    After one untimed call of each kind (contexts allocated, pages touched), each round makes every
    model's call of the first kind, then of the next; rounds go on until `seconds` per model have
    passed, at least two of them.
    """
    rounds = workload.rounds()
    for model in models.values():
        for run, _ in rounds.values():
            run(model, 0)
    timings = {name: {kind: [] for kind in rounds} for name in models}
    started = time.perf_counter()
    i = 0
    while i < 2 or time.perf_counter() - started < seconds * len(models):
        for kind, (run, _) in rounds.items():
            for name, model in models.items():
                begin = time.perf_counter()
                tokens = run(model, i)
                timings[name][kind].append((time.perf_counter() - begin, tokens))
        i += 1
    return {name: {kind: _throughput(timings[name][kind], texts_per_round)
                   for kind, (_, texts_per_round) in rounds.items()}
            for name in models}


def _throughput(timed: list[tuple[float, int]], texts_per_round: int) -> Throughput:
    return Throughput(tokens_per_s=statistics.median(tokens / s for s, tokens in timed),
                      texts_per_s=statistics.median(texts_per_round / s for s, _ in timed),
                      rounds=len(timed),
                      tokens_per_text=statistics.mean(tokens for _, tokens in timed) / texts_per_round)


# --- the files ---------------------------------------------------------------------------------------------------


def check_source(source: ModelFile) -> None:
    """bench --types quantizes `source`: it must be at full precision."""
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
class Floor:
    """The fidelity the chosen file must keep: a mean cosine of at least `value` (embedding models) or
    a mean |ΔP(yes)| of at most `value` (rerankers)."""

    measure: str    # COSINE or DELTA_P
    value: float

    def met_by(self, row: TypeRow) -> bool:
        return row.fidelity_mean >= self.value if self.measure == COSINE else row.fidelity_mean <= self.value

    def __str__(self) -> str:
        return f"mean cosine >= {self.value:g}" if self.measure == COSINE else f"mean {DELTA_P} <= {self.value:g}"


@dataclass(frozen=True)
class TypeRow:
    """One file's line in the table."""

    type_name: str
    path: str
    is_source: bool
    size_bytes: int
    bits_per_weight: float
    numerics: dict[str, str]        # per speed kind: what runtime.precision runs that input length with
    speeds: dict[str, Throughput]
    fidelity_measure: str           # COSINE or DELTA_P, against the source file's outputs
    fidelity_mean: float
    fidelity_worst: float           # the lowest cosine or the largest |ΔP(yes)|


def type_row(type_name: str, model: ModelFile, llama_file_type: int | None, *, kind: str, is_source: bool,
             speeds: dict[str, Throughput], fidelity_measure: str, fidelity: np.ndarray) -> TypeRow:
    """A file's row; `fidelity` holds one value per text or pair (cosines or |ΔP(yes)|)."""
    worst = np.min if fidelity_measure == COSINE else np.max
    return TypeRow(type_name=type_name, path=str(model.path), is_source=is_source, size_bytes=model.file_size,
                   bits_per_weight=model.bits_per_weight,
                   numerics={speed_kind: numerics_for(llama_file_type, kind=kind,
                                                      n_tokens=round(speed.tokens_per_text)).short
                             for speed_kind, speed in speeds.items()},
                   speeds=speeds, fidelity_measure=fidelity_measure, fidelity_mean=float(np.mean(fidelity)),
                   fidelity_worst=float(worst(fidelity)))


def fastest_meeting(rows: Sequence[TypeRow], floor: Floor, by: str = "documents") -> TypeRow | None:
    """The row with the most `by` tokens/s among those that meet `floor`."""
    return max((row for row in rows if floor.met_by(row)), key=lambda row: row.speeds[by].tokens_per_s, default=None)


def format_table(rows: Sequence[TypeRow]) -> list[str]:
    kinds = list(rows[0].speeds)
    measure = rows[0].fidelity_measure
    worst = "min cos" if measure == COSINE else f"max {DELTA_P}"
    mean = "mean cos" if measure == COSINE else f"mean {DELTA_P}"
    short = {"documents": "docs", "queries": "queries"}
    lines = [f"{'type':<12} {'MiB':>8} {'bpw':>6}  " + "".join(f"{'numerics ' + short[k]:<17}" for k in kinds)
             + "".join(f"{short[k] + ' tok/s':>14}" for k in kinds) + f" {mean:>14} {worst:>14}"]
    for row in rows:
        name = f"{row.type_name}*" if row.is_source else row.type_name
        lines.append(f"{name:<12} {row.size_bytes / 2**20:>8.1f} {row.bits_per_weight:>6.2f}  "
                     + "".join(f"{row.numerics[k]:<17}" for k in kinds)
                     + "".join(f"{row.speeds[k].tokens_per_s:>14.1f}" for k in kinds)
                     + f" {row.fidelity_mean:>14.5f} {row.fidelity_worst:>14.5f}")
    return lines


def choice_line(rows: Sequence[TypeRow], floor: Floor, by: str = "documents") -> str:
    """The verdict under the table: the fastest file meeting the floor and its path, or why there is none."""
    chosen = fastest_meeting(rows, floor, by)
    if chosen is None:
        closest = (max if floor.measure == COSINE else min)(rows, key=lambda row: row.fidelity_mean)
        return (f"no file reaches {floor} (the closest: {closest.type_name} at {closest.fidelity_mean:.5f}); "
                "relax the floor or add a type with more bits")
    return (f"fastest {by} at {floor}: {chosen.type_name} ({chosen.speeds[by].tokens_per_s:.1f} tokens/s, "
            f"mean {chosen.fidelity_measure} {chosen.fidelity_mean:.5f}) {chosen.path}")
