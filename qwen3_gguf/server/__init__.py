"""`qwen3-gguf serve` as a library: the ASGI app over an Embedder and a Reranker.

    from qwen3_gguf import Embedder
    from qwen3_gguf.server import create_app
    app = create_app(Embedder("qwen3-embedding-0.6b"))   # run it with uvicorn, or mount it

The app needs the `serve` extra (starlette, uvicorn, prometheus-client); `Limits` does not.
"""

from __future__ import annotations

from .limits import Limits

__all__ = ["Limits", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module 'qwen3_gguf.server' has no attribute {name!r}")
