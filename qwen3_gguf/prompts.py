"""The prompt formats the Qwen3 embedding and reranker models were trained with."""

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

# Embedding: queries carry a one-line task description; documents are embedded as they are.
QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{query}"

# Reranker: a chat turn asking the model to answer "yes" or "no". The prefix and suffix hold
# control tokens and are tokenized with special tokens on; the body is user text and is not.
RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
RERANK_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def query_text(query: str, instruction: str) -> str:
    return QUERY_TEMPLATE.format(instruction=instruction, query=query)


def rerank_body(query: str, document: str, instruction: str) -> str:
    return RERANK_BODY.format(instruction=instruction, query=query, document=document)
