"""Where a decode's time goes: an eval callback that times every graph node, grouped by what it does.

llama.cpp's scheduler computes the graph node by node when an eval callback asks for every node,
calling back before (ask=True) and after (ask=False) each one; the time between the two calls is
that node's compute (plus a few microseconds of callback). Nodes are grouped into the parts of a
transformer layer: each weight multiplication by tensor family, attention's Q·K, softmax and ·V
(or the fused flash-attention node), norms, RoPE, KV cache writes and the rest.

It wraps another eval callback (the pooling tap), whose answers still decide whether the graph
goes on, so a profiled decode computes exactly what an unprofiled one does.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict

import llama_cpp as llama

from .ggml import GGMLTensor, load_ggml

WEIGHT = re.compile(rb"(?:^|#)blk\.\d+\.(\w+)\.weight")
OP_GROUPS = {
    b"SOFT_MAX": "attention softmax",
    b"FLASH_ATTN_EXT": "attention (flash, fused)",
    b"RMS_NORM": "norms",
    b"ROPE": "RoPE",
    b"SET_ROWS": "KV cache writes",
    b"CPY": "copies",
    b"CONT": "copies",
    b"GET_ROWS": "token embedding lookup",
}
NO_COMPUTE = frozenset({b"NONE", b"VIEW", b"RESHAPE", b"PERMUTE", b"TRANSPOSE"})


class OpTimer:
    """An eval callback that adds each node's compute time to its group (see `_group`).

    `seconds[group]` and `nodes[group]` accumulate over every decode of every context whose eval
    callback came from `callback_around`; `reset()` starts again. With `enabled` False the callbacks
    only pass the calls on, so the graph runs as it would without them.
    """

    def __init__(self):
        self._ggml = load_ggml()
        self.enabled = True
        self.seconds: dict[str, float] = defaultdict(float)
        self.nodes: Counter[str] = Counter()
        self._op_names: dict[int, bytes] = {}
        self._started = 0.0

    def callback_around(self, inner=None):
        """A ctypes eval callback that times every node and then asks `inner` (an eval callback
        function, not a ctypes object; None: none) what it would have answered."""
        return llama.ggml_backend_sched_eval_callback(
            lambda node_address, ask, user_data: self._observe(inner, node_address, ask, user_data))

    def reset(self) -> None:
        self.seconds.clear()
        self.nodes.clear()

    def _op_name(self, op: int) -> bytes:
        if op not in self._op_names:
            self._op_names[op] = self._ggml.ggml_op_name(op)
        return self._op_names[op]

    def _observe(self, inner, node_address, ask, user_data) -> bool:
        if not self.enabled:
            return inner(node_address, ask, user_data) if inner is not None else not ask
        if ask:  # every node is asked for, so each is computed on its own, between these two calls
            self._started = time.perf_counter()
            return True
        elapsed = time.perf_counter() - self._started
        node = GGMLTensor.from_address(node_address)
        group = self._group(node)
        if group is not None:
            self.seconds[group] += elapsed
            self.nodes[group] += 1
        return inner(node_address, False, user_data) if inner is not None else True

    def _group(self, node: GGMLTensor) -> str | None:
        op_name = self._op_name(node.op)
        if op_name == b"MUL_MAT" and not WEIGHT.search(node.src[0].contents.name):
            scores = node.src[1].contents
            return "attention ·V" if self._op_name(scores.op) == b"SOFT_MAX" else "attention Q·K"
        if op_name == b"MUL_MAT":
            return f"matmul {WEIGHT.search(node.src[0].contents.name).group(1).decode()}"
        if op_name in NO_COMPUTE:
            return None
        if op_name == b"MUL" and b"norm" in node.name:
            return "norms"
        return OP_GROUPS.get(op_name, "other elementwise")
