"""How hybrid search should fuse its two rankings: reciprocal rank fusion's k and the keyword weight.

Indexes a small real corpus (this project's own source, `qwen3_gguf/**/*.py`) with the test
suite's embedding model (tests/checkpoints.py "embedding-64": random weights, the real Qwen
vocabulary) and asks two kinds of questions, each with one right answer:

- identifier: a function or class name defined in exactly one file (the issue's
  `repack_overrides`), typed alone; right: a chunk of that file holding the name. Keywords find
  these; a random-weight model cannot, and a trained one blurs them.
- passage: a stored chunk's text used as the query, without the instruction; right: that chunk.
  Vectors find these (cosine 1); BM25 ranks the chunk among every other chunk sharing its words.

For each query the keyword and vector rankings (50 deep, as `Collection.search` takes them) are
fused over a grid of k and keyword weights (vector weight 1), and the mean reciprocal rank of the
right answer (0 beyond the top 10) is reported per kind. The default is the smallest keyword
weight that reaches the best MRR of both kinds at once, at the usual k = 60 (k moved nothing
between 5 and 100 there): measured, 1.1. At weight 1 a keyword-only first hit ties with a
vector-only first hit; 1.1 breaks such ties towards the exact word.

    python benchmarks/fusion.py                 # prints a table, writes benchmarks/fusion.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from qwen3_gguf.files.fusion import Fusion, fuse  # noqa: E402
from qwen3_gguf.files.store import HYBRID_DEPTH, Collection  # noqa: E402

KS = (5, 10, 30, 60, 100)
USUAL_K = 60
KEYWORD_WEIGHTS = (0.5, 1.0, 1.1, 1.25, 1.5, 2.0)
TOP = 10
DEFINED = re.compile(r"^\s*(?:def|class)\s+(\w{8,})", re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "qwen3_gguf")
    parser.add_argument("--queries", type=int, default=60, help="queries of each kind")
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "fusion.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = test_model(Path(folder))
        with Collection(Path(folder) / "v.db", model=model, device="cpu") as collection:
            report = collection.index([str(args.corpus)], include=["*.py"], chunk_tokens=args.chunk_tokens)
            rankings = {kind: [rank_lists(collection, query, answer, kind) for query, answer in questions]
                        for kind, questions in questions_of(collection, args.corpus, args.queries).items()}
    rows = [{"setting": mode, **{kind: mrr([single(lists, mode) for lists in ranked]) for kind, ranked in
                                 rankings.items()}} for mode in ("keyword", "vector")]
    for k in KS:
        for weight in KEYWORD_WEIGHTS:
            fusion = Fusion(k=k, keyword_weight=weight)
            rows.append({"setting": f"hybrid k={k} keyword weight={weight}", "k": k, "keyword_weight": weight,
                         **{kind: mrr([fused_rank(lists, fusion) for lists in ranked])
                            for kind, ranked in rankings.items()}})
    hybrid = [row for row in rows if "k" in row]
    best = choose(hybrid)
    print(f"{report.counts.files} files, {report.counts.chunks} chunks; {len(rankings['identifier'])} identifier "
          f"and {len(rankings['passage'])} passage queries; MRR@{TOP}")
    print("| setting | identifier MRR | passage MRR |\n|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['identifier']:.3f} | {row['passage']:.3f} |")
    print(f"chosen: {best['setting']}")
    args.json.write_text(json.dumps({"corpus": str(args.corpus.relative_to(ROOT)), "files": report.counts.files,
                                     "chunks": report.counts.chunks,
                                     "queries": {kind: len(ranked) for kind, ranked in rankings.items()},
                                     "model": "tests/checkpoints.py embedding-64", "depth": HYBRID_DEPTH,
                                     "rows": rows, "best": best}, indent=1) + "\n")


def choose(rows: list[dict]) -> dict:
    """The smallest keyword weight at k = USUAL_K whose MRR is the best of both kinds."""
    usual = [row for row in rows if row["k"] == USUAL_K]
    top = {kind: max(row[kind] for row in usual) for kind in ("identifier", "passage")}
    return min((row for row in usual if all(row[kind] == top[kind] for kind in top)),
               key=lambda row: row["keyword_weight"])


def test_model(folder: Path) -> Path:
    from checkpoints import FIXTURES, build_checkpoint

    from qwen3_gguf.convert import convert_checkpoint

    checkpoint = build_checkpoint(folder / "embedding-64", **FIXTURES["embedding-64"])
    return convert_checkpoint(checkpoint, folder / "embedding-64.gguf", outtype="f32").path


def questions_of(collection: Collection, corpus: Path, n: int) -> dict[str, list[tuple[str, object]]]:
    """Identifier queries (name → the file defining it) and passage queries (text → its chunk id)."""
    files = {str(path.resolve()): path.read_text() for path in sorted(corpus.rglob("*.py"))}
    found = Counter(name for text in files.values() for name in set(re.findall(r"\w+", text)))
    defined = sorted({(name, path) for path, text in files.items() for name in DEFINED.findall(text)
                      if found[name] == 1})
    rng = np.random.default_rng(0)
    identifiers = [defined[i] for i in sorted(rng.choice(len(defined), min(n, len(defined)), replace=False))]
    chunks = collection._db.execute("SELECT d.path || '#' || c.chunk, c.text FROM chunks c "
                                    "JOIN documents d ON d.id = c.document_id ORDER BY c.id").fetchall()
    passages = [(chunks[i][1], chunks[i][0]) for i in sorted(rng.choice(len(chunks), min(n, len(chunks)),
                                                                          replace=False))]
    return {"identifier": identifiers, "passage": passages}


def rank_lists(collection: Collection, query: str, answer: str, kind: str) -> dict:
    """Both rankings of one query as hit names, and which names are right."""
    plain = kind == "passage"
    lists = {mode: collection.search(query, k=HYBRID_DEPTH, mode=mode, use_instruction=not plain)
             for mode in ("keyword", "vector")}
    right = {hit.id for hits in lists.values() for hit in hits
             if (hit.id == answer if plain else hit.path == answer and query in hit.text)}
    return {"keyword": [h.id for h in lists["keyword"]], "vector": [h.id for h in lists["vector"]], "right": right}


def single(lists: dict, mode: str) -> int:
    return next((rank for rank, name in enumerate(lists[mode], 1) if name in lists["right"]), 0)


def fused_rank(lists: dict, fusion: Fusion) -> int:
    names = sorted(set(lists["keyword"]) | set(lists["vector"]))
    number = {name: i for i, name in enumerate(names)}
    fused = fuse(np.array([number[n] for n in lists["keyword"]], dtype=np.int64),
                 np.array([number[n] for n in lists["vector"]], dtype=np.int64), fusion)
    return next((rank for rank, i in enumerate(fused.ids.tolist(), 1) if names[i] in lists["right"]), 0)


def mrr(ranks: list[int]) -> float:
    return round(float(np.mean([1 / r if 0 < r <= TOP else 0.0 for r in ranks])), 4)


if __name__ == "__main__":
    main()
