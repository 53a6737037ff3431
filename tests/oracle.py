"""The reference the tests compare against: Hugging Face transformers on the same checkpoint.

Both oracles follow the Qwen3-Embedding / Qwen3-Reranker model cards, on CPU in float32,
with one deliberate difference. The model cards tokenize user text with special tokens
parsed, so a document containing `<|im_start|>` gets the control token. This project treats
special-token look-alikes typed by a user as plain text, so the oracles tokenize user text
(queries, documents, instructions) with `split_special_tokens=True`. Only the reranker's
fixed prompt template is tokenized with special tokens parsed.

`split_special_tokens=True` only affects the 14 added tokens flagged special (`<|endoftext|>`
... `<|video_pad|>`). The 12 non-special ones (`<think>`, `<tool_call>`, `<|fim_prefix|>`, ...)
are still matched as single tokens in user text, by transformers 5.x / tokenizers 0.23.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

DEFAULT_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)
RERANKER_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
RERANKER_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _load(model_class, ckpt_dir: Path):
    # Eager attention in float32 is deterministic on CPU and handles fully masked pad rows.
    model = model_class.from_pretrained(
        ckpt_dir, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


class EmbeddingOracle:
    """Qwen3-Embedding as its model card computes it: last-token pooling, L2-normalized."""

    def __init__(self, ckpt_dir: Path):
        self.tokenizer = AutoTokenizer.from_pretrained(ckpt_dir, padding_side="left")
        self.model = _load(AutoModel, ckpt_dir)

    def token_ids(self, text: str) -> list[int]:
        """The ids the model sees for `text`: plain-text specials, <|endoftext|> appended."""
        return self.tokenizer(text, split_special_tokens=True)["input_ids"]

    def embed(
        self, texts: Sequence[str], instruction: str | None = None, max_length: int = 8192
    ) -> np.ndarray:
        """Embeddings of `texts`, one float32 row each; queries take an `instruction`."""
        if instruction is not None:
            texts = [f"Instruct: {instruction}\nQuery:{text}" for text in texts]
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length,
            split_special_tokens=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            last = self.model(**batch).last_hidden_state[:, -1]  # left padding: last = EOS
        return torch.nn.functional.normalize(last, p=2, dim=1).numpy()


class RerankerOracle:
    """Qwen3-Reranker as its model card computes it: P("yes") from the last position."""

    def __init__(self, ckpt_dir: Path):
        self.tokenizer = AutoTokenizer.from_pretrained(ckpt_dir, padding_side="left")
        self.model = _load(AutoModelForCausalLM, ckpt_dir)
        self.prefix_ids = self.tokenizer.encode(RERANKER_PREFIX, add_special_tokens=False)
        self.suffix_ids = self.tokenizer.encode(RERANKER_SUFFIX, add_special_tokens=False)
        self.yes_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.no_id = self.tokenizer.convert_tokens_to_ids("no")

    def prompt_ids(
        self,
        query: str,
        document: str,
        instruction: str | None = None,
        max_length: int = 8192,
    ) -> list[int]:
        """Prompt ids for one pair: template prefix + user body (truncated) + suffix."""
        if instruction is None:
            instruction = DEFAULT_INSTRUCTION
        body = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
        body_ids = self.tokenizer.encode(
            body, add_special_tokens=False, split_special_tokens=True
        )
        budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        return self.prefix_ids + body_ids[:budget] + self.suffix_ids

    def score(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None = None,
        max_length: int = 8192,
    ) -> np.ndarray:
        """Relevance of each document to `query`, in [0, 1]."""
        ids = [self.prompt_ids(query, doc, instruction, max_length) for doc in documents]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1]
        no_yes = torch.stack([logits[:, self.no_id], logits[:, self.yes_id]], dim=1)
        return torch.log_softmax(no_yes, dim=1)[:, 1].exp().numpy()
