"""The sweep's measures of agreement with a reference, on inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qwen3_gguf.quantization.fidelity import (
    embedding_fidelity,
    ndcg_at_k,
    recall_at_k,
    reranker_fidelity,
    row_cosines,
    spearman,
    top_k,
)


def test_top_k_is_best_first_and_stable():
    scores = np.array([[0.1, 0.9, 0.5, 0.9]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2]]


def test_recall_counts_shared_top_documents():
    reference = np.array([[5.0, 4, 3, 2, 1], [1, 2, 3, 4, 5]])
    swapped_inside = np.array([[4.0, 5, 3, 2, 1], [1, 2, 3, 4, 5]])      # same top-3 sets
    one_out = np.array([[5.0, 4, 0, 2, 1], [1, 2, 3, 4, 5]])             # row 0 loses doc 2 for doc 3
    assert recall_at_k(reference, reference, k=3) == 1.0
    assert recall_at_k(reference, swapped_inside, k=3) == 1.0
    assert recall_at_k(reference, one_out, k=3) == pytest.approx((2 / 3 + 1) / 2)


def test_ndcg_is_graded_by_the_reference_ranking():
    reference = np.array([[3.0, 2, 1, 0]])
    assert ndcg_at_k(reference, reference, k=3) == pytest.approx(1.0)
    swapped = np.array([[2.0, 3, 1, 0]])  # first two swapped: gains 2, 3, 1 instead of 3, 2, 1
    ideal = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg_at_k(reference, swapped, k=3) == pytest.approx((2 + 3 / math.log2(3) + 1 / 2) / ideal)
    reversed_order = -reference
    assert ndcg_at_k(reference, reversed_order, k=3) == pytest.approx((1 / math.log2(3) + 2 / 2) / ideal)


def test_spearman_known_values():
    a = np.array([1.0, 2, 3, 4, 5])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks 1..5 against 2,1,4,3,5: d² = 1+1+1+1+0 = 4, rho = 1 - 6·4 / (5·24) = 0.8
    assert spearman(a, np.array([2.0, 1, 4, 3, 5])) == pytest.approx(0.8)
    # ties get their mean rank
    assert spearman(np.array([1.0, 1, 2]), np.array([1.0, 2, 3])) == pytest.approx(np.sqrt(3) / 2)
    assert math.isnan(spearman(np.ones(4), a[:4]))


def test_cosines_and_reduced_dimensions():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(6, 64))
    noisy = reference + rng.normal(scale=0.1, size=reference.shape)
    full = row_cosines(reference, noisy)
    expected = np.sum(reference * noisy, 1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(noisy, axis=1)
    np.testing.assert_allclose(full, expected, rtol=1e-12)
    cut = row_cosines(reference, noisy, 32)
    a, b = reference[:, :32], noisy[:, :32]
    np.testing.assert_allclose(cut, np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


def test_embedding_fidelity_of_the_reference_itself_is_perfect():
    rng = np.random.default_rng(1)
    outputs = {"queries": rng.normal(size=(8, 64)), "documents": rng.normal(size=(30, 64))}
    scaled = {part: vectors * 3.0 for part, vectors in outputs.items()}  # the norm does not matter
    for dim in (None, 32):
        fidelity = embedding_fidelity(outputs, scaled, dim)
        assert fidelity["cosine_min"] == pytest.approx(1.0)
        assert fidelity["recall_at_10"] == 1.0
        assert fidelity["ndcg_at_10"] == pytest.approx(1.0)
        assert fidelity["spearman"] == pytest.approx(1.0)
    noisy = {part: v + rng.normal(scale=0.5, size=v.shape) for part, v in outputs.items()}
    fidelity = embedding_fidelity(outputs, noisy)
    assert fidelity["cosine_min"] < fidelity["cosine_mean"] < 1.0
    assert fidelity["recall_at_10"] < 1.0


def test_reranker_fidelity():
    reference = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.4]])
    other = np.array([[0.8, 0.25, 0.1], [0.5, 0.45, 0.4]])
    fidelity = reranker_fidelity(reference, other)
    assert fidelity["mean_abs_delta"] == pytest.approx((0.1 + 0.05 + 0 + 0.2 + 0.35 + 0) / 6)
    assert fidelity["max_abs_delta"] == pytest.approx(0.35)
    assert fidelity["top1_agreement"] == 0.5   # the second query's top document changed
    assert reranker_fidelity(reference, reference)["spearman"] == pytest.approx(1.0)
