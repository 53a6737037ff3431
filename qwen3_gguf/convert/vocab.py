"""tokenizer.json → the GGUF vocabulary of llama.cpp's byte-level BPE ("gpt2") tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gguf import TokenType

from ..errors import UserError

# The pre-tokenizer split of Qwen2/Qwen3 tokenizers, which llama.cpp calls "qwen2".
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Vocabulary:
    """Tokens by id (byte-level strings as tokenizer.json spells them), their types and merges."""

    tokens: list[str]
    token_types: list[TokenType]
    merges: list[str]
    ids: dict[str, int] = field(repr=False)

    def id_of(self, text: str) -> int | None:
        return self.ids.get(text)

    def require(self, text: str, purpose: str) -> int:
        """The id of token `text`, or a UserError saying what it was needed for."""
        token_id = self.ids.get(text)
        if token_id is None:
            raise UserError(f"tokenizer.json has no {text!r} token, needed for {purpose}")
        return token_id


def read_vocabulary(tokenizer: dict[str, Any], n_rows: int) -> Vocabulary:
    """Build the vocabulary from a parsed tokenizer.json, padded to the embedding's `n_rows`.

    Ids the tokenizer does not use (checkpoints often have more embedding rows than tokens)
    become UNUSED `[PAD<id>]` entries, so the token count matches the embedding matrix.
    """
    _check_qwen2_tokenizer(tokenizer)
    model = tokenizer["model"]
    by_id: dict[int, tuple[str, TokenType]] = {
        token_id: (text, TokenType.NORMAL) for text, token_id in model["vocab"].items()
    }
    for added in tokenizer.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], _added_token_type(added))

    if max(by_id) >= n_rows:
        raise UserError(
            f"tokenizer.json has token id {max(by_id)}, "
            f"but the embedding matrix has only {n_rows} rows"
        )
    entries = [by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED)) for i in range(n_rows)]
    tokens = [text for text, _ in entries]
    ids: dict[str, int] = {}
    for token_id, text in enumerate(tokens):
        ids.setdefault(text, token_id)
    return Vocabulary(tokens, [kind for _, kind in entries], _merges(model["merges"]), ids)


def _check_qwen2_tokenizer(tokenizer: dict[str, Any]) -> None:
    """Refuse tokenizers that llama.cpp's "qwen2" byte-level BPE would tokenize differently."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise UserError("tokenizer.json: not a BPE tokenizer with vocab and merges")
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    is_qwen2 = (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and (steps[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT_REGEX
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex")
        and not steps[1].get("add_prefix_space")
    )
    if not is_qwen2:
        raise UserError(
            "tokenizer.json: the pre-tokenizer is not Qwen2's "
            "(Split on the Qwen2 regex, then ByteLevel)"
        )


def _added_token_type(added: dict[str, Any]) -> TokenType:
    """CONTROL if special or shaped `<|...|>` (llama.cpp's rule), else USER_DEFINED."""
    content = added["content"]
    if added.get("special") or (content.startswith("<|") and content.endswith("|>")):
        return TokenType.CONTROL
    return TokenType.USER_DEFINED


def _merges(merges: list[Any]) -> list[str]:
    """Merges as "left right" strings; tokenizer.json has them either that way or as pairs."""
    if merges and isinstance(merges[0], str):
        return merges
    joined = []
    for pair in merges:
        if any(" " in part for part in pair):
            raise UserError(f"tokenizer.json: merge {pair} has a space (not byte-level BPE)")
        joined.append(" ".join(pair))
    return joined
