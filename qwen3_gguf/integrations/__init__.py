"""Qwen3 embeddings and reranking inside retrieval frameworks, in process: one module per framework.

    from qwen3_gguf.integrations.langchain import Qwen3Embeddings, Qwen3Reranker
    from qwen3_gguf.integrations.llamaindex import Qwen3Embedding, Qwen3Rerank
    from qwen3_gguf.integrations.haystack import Qwen3DocumentEmbedder, Qwen3TextEmbedder, Qwen3Ranker
    from qwen3_gguf.integrations.chroma import Qwen3EmbeddingFunction

Each module needs only its own framework (the extras `qwen3-gguf[langchain]`, `[llamaindex]`,
`[haystack]`, `[chroma]`). Every class opens its model as `-m` does (a GGUF path, an hf://
reference or a catalog name, built when nobody published it) and embeds documents as they are and
queries with the Qwen3 instruction, as `Embedder.encode` does.
"""
