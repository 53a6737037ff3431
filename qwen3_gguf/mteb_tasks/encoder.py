"""An mteb 2.x encoder over Embedder: the Qwen3 query instruction for each task, none for documents.

The instruction of a task is chosen in the order mteb uses for the published Qwen3-Embedding runs:
the user's mapping by task name, task type or prompt type first, then the task's own prompt, and
Qwen3's default retrieval instruction when neither gives one. Texts are embedded as given,
queries wrapped in `Instruct: …\\nQuery:`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from ..embed import Embedder
from ..gguf_file import file_sha256
from ..limits import check_dim
from ..progress import progress_bar
from ..prompts import DEFAULT_INSTRUCTION, query_text
from ..rerank import Reranker
from .cache import EmbeddingCache


def task_instruction(task_metadata, mapping: Mapping[str, str] | None) -> str:
    """The query instruction of a task, in mteb's order (AbsEncoder.prompt_priority): the user's
    mapping by task name, task type, then prompt type; the task's own prompt; then, where mteb
    would fall back to the generic prompt of the task family, the instruction Qwen3 was trained
    with as its default."""
    for key in (task_metadata.name, task_metadata.type, PromptType.query.value):
        if mapping and key in mapping:
            return mapping[key]
    prompt = task_metadata.prompt
    if isinstance(prompt, dict):
        prompt = prompt.get(PromptType.query.value)
    return prompt or DEFAULT_INSTRUCTION


class GGUFEncoder(AbsEncoder):
    """mteb's EncoderProtocol for an Embedder. `instructions` maps task names, task types
    ("Retrieval", "STS", …) or prompt types ("query") to instructions of your own; `dim` keeps
    the first `dim` Matryoshka dimensions; `cache` keeps every embedded batch for re-runs."""

    def __init__(self, embedder: Embedder, *, dim: int | None = None, instructions: Mapping[str, str] | None = None,
                 cache: EmbeddingCache | None = None, progress: bool = False):
        check_dim(dim, embedder.dimension)
        self.model = embedder
        self.dim = dim
        self.prompts_dict = dict(instructions) if instructions else None
        self.cache = cache
        self.progress = progress
        self.sha256 = file_sha256(embedder.model_file.path)
        self.embedded_texts = 0      # texts run through the model
        self.cached_texts = 0        # texts whose vectors were read from the cache
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": f"qwen3-gguf/{embedder.model_file.path.stem}" + (f"-dim{dim}" if dim else ""),
            "revision": self.sha256[:16],
            "embed_dim": dim or embedder.dimension,
            "max_tokens": embedder.max_tokens,
            "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True,
            "framework": ["GGUF"],
        })

    def instruction_for(self, task_metadata, prompt_type: PromptType | None) -> str | None:
        """The instruction a text of this task and prompt type is embedded with (None: documents)."""
        if prompt_type == PromptType.document:
            return None
        return task_instruction(task_metadata, self.prompts_dict)

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs) -> np.ndarray:
        batches = [list(batch["text"]) for batch in inputs]
        texts = [text for batch in batches for text in batch]
        instruction = self.instruction_for(task_metadata, prompt_type)
        entry = None
        if self.cache is not None:
            entry = self.cache.entry(self.sha256, task_metadata.name, hf_subset, hf_split,
                                     prompt_type.value if prompt_type else "text", self.dim, instruction, texts)
            cached = self.cache.load(entry)
            if cached is not None:
                self.cached_texts += len(texts)
                return cached
        what = prompt_type.value + "s" if prompt_type else "texts"
        parts = []
        with progress_bar(total=len(texts), enabled=self.progress, unit="text",
                          desc=f"{task_metadata.name} {hf_split} {what}") as bar:
            for batch in batches:
                parts.append(self._embed(batch, instruction))
                if bar is not None:
                    bar.update(len(batch))
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.dim or self.model.dimension), np.float32)
        self.embedded_texts += len(texts)
        if entry is not None:
            self.cache.save(entry, vectors)
        return vectors

    def _embed(self, texts: list[str], instruction: str | None) -> np.ndarray:
        """Embedder.encode refuses empty texts; datasets hold some (an empty document is its EOS alone)."""
        vectors = np.empty((len(texts), self.dim or self.model.dimension), np.float32)
        filled = [i for i, text in enumerate(texts) if text]
        if filled:
            vectors[filled] = self.model.encode([texts[i] for i in filled], instruction=instruction, dim=self.dim)
        empty = [i for i, text in enumerate(texts) if not text]
        if empty:
            ids, _ = self.model.tokenize(query_text("", instruction) if instruction else "")
            vectors[empty] = self.model.encode_tokens([ids], dim=self.dim)[0]
        return vectors


class GGUFCrossEncoder:
    """mteb's CrossEncoderProtocol for a Reranker: P(yes) of each (query, document) pair, with the
    task's instruction chosen as for the encoder. mteb gives it the candidates of a task's
    `top_ranked` lists (reranking tasks), not a whole corpus."""

    def __init__(self, reranker: Reranker, *, instructions: Mapping[str, str] | None = None):
        self.reranker = reranker
        self.instructions = dict(instructions) if instructions else None
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": f"qwen3-gguf/{reranker.model_file.path.stem}",
            "revision": file_sha256(reranker.model_file.path)[:16],
            "use_instructions": True,
            "framework": ["GGUF"],
            "model_type": ["cross-encoder"],
        })

    def predict(self, inputs1, inputs2, *, task_metadata, hf_split: str, hf_subset: str,
                prompt_type: PromptType | None = None, **kwargs) -> np.ndarray:
        queries = [text for batch in inputs1 for text in batch["text"]]
        documents = [text for batch in inputs2 for text in batch["text"]]
        instruction = task_instruction(task_metadata, self.instructions)
        by_query: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            by_query.setdefault(query, []).append(i)
        scores = np.empty(len(queries), np.float32)
        for query, rows in by_query.items():
            scores[rows] = self.reranker.score(query, [documents[i] for i in rows], instruction=instruction)
        return scores
