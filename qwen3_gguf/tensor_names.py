"""The GGUF tensor names this project refers to by name, from gguf-py's naming table."""

from gguf import MODEL_TENSOR, TENSOR_NAMES


def _weight(tensor: MODEL_TENSOR) -> str:
    return f"{TENSOR_NAMES[tensor]}.weight"


TOKEN_EMBEDDING = _weight(MODEL_TENSOR.TOKEN_EMBD)     # token_embd.weight
OUTPUT = _weight(MODEL_TENSOR.OUTPUT)                  # output.weight (absent when tied to the embedding)
OUTPUT_NORM = _weight(MODEL_TENSOR.OUTPUT_NORM)        # output_norm.weight
CLASSIFIER = _weight(MODEL_TENSOR.CLS_OUT)             # cls.output.weight: the reranker's yes/no rows
# Tensors of classifier heads other than Qwen3's single projection (llama.cpp pools those itself).
OTHER_CLASSIFIER_TENSORS = (_weight(MODEL_TENSOR.CLS), f"{TENSOR_NAMES[MODEL_TENSOR.CLS]}.bias",
                            f"{TENSOR_NAMES[MODEL_TENSOR.CLS_OUT]}.bias", "cls.norm.weight")
