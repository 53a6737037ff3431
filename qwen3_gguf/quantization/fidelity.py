"""How closely one model's outputs follow a reference model's on the same inputs.

Every measure compares against the reference's own outputs, not against labels: a quant that
ranks documents exactly as the full-precision model does scores 1.0 whether or not that
ranking is "right".
"""

from __future__ import annotations

import math

import numpy as np

TOP_K = 10


def normalized(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Rows cut to their first `dim` (Matryoshka) dimensions, then L2-normalized."""
    vectors = np.asarray(vectors, dtype=np.float64)[:, :dim]
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float64).tiny)


def row_cosines(reference: np.ndarray, other: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Cosine between each row of `other` and the same row of `reference` (first `dim` dims)."""
    return np.sum(normalized(reference, dim) * normalized(other, dim), axis=1)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k highest scores, best first (ties: lower index first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def recall_at_k(reference_scores: np.ndarray, scores: np.ndarray, k: int = TOP_K) -> float:
    """Mean over rows of |reference top-k ∩ top-k| / k."""
    k = min(k, reference_scores.shape[1])
    expected, got = top_k(reference_scores, k), top_k(scores, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(expected, got)]))


def ndcg_at_k(reference_scores: np.ndarray, scores: np.ndarray, k: int = TOP_K) -> float:
    """Mean nDCG@k of each row's ranking, graded by the reference ranking: the reference's
    first document has gain k, its second k-1, ... its k-th 1, every other document 0."""
    k = min(k, reference_scores.shape[1])
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = float(np.sum(np.arange(k, 0, -1) * discounts))
    values = []
    for expected, got in zip(top_k(reference_scores, k), top_k(scores, k)):
        gain = {int(doc): k - rank for rank, doc in enumerate(expected)}
        values.append(sum(gain.get(int(doc), 0) * d for doc, d in zip(got, discounts)) / ideal)
    return float(np.mean(values))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of all entries of `a` against the same entries of `b`."""
    ranks_a, ranks_b = _ranks(np.ravel(a)), _ranks(np.ravel(b))
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return math.nan
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0…n-1, ties given their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(unique) < len(values):  # average the ranks within each group of equal values
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def embedding_fidelity(reference: dict[str, np.ndarray], other: dict[str, np.ndarray],
                       dim: int | None = None) -> dict[str, float]:
    """Vectors ("queries", "documents") of a model against the reference's, at `dim` dimensions
    (all when None): cosines of every vector, and agreement of the query × document rankings."""
    cosines = np.concatenate([row_cosines(reference[part], other[part], dim) for part in ("documents", "queries")])
    reference_scores = normalized(reference["queries"], dim) @ normalized(reference["documents"], dim).T
    scores = normalized(other["queries"], dim) @ normalized(other["documents"], dim).T
    return {
        "cosine_mean": float(np.mean(cosines)),
        "cosine_min": float(np.min(cosines)),
        "recall_at_10": recall_at_k(reference_scores, scores),
        "ndcg_at_10": ndcg_at_k(reference_scores, scores),
        "spearman": spearman(reference_scores, scores),
    }


def reranker_fidelity(reference_scores: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """P(yes) of each query × candidate document against the reference's."""
    return {
        "spearman": spearman(reference_scores, scores),
        "mean_abs_delta": float(np.mean(np.abs(scores - reference_scores))),
        "max_abs_delta": float(np.max(np.abs(scores - reference_scores))),
        "top1_agreement": float(np.mean(np.argmax(scores, axis=1) == np.argmax(reference_scores, axis=1))),
    }
