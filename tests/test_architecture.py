"""The package's shape: the import graph has no circle and no arrow from a lower room to a higher one."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qwen3_gguf"

# Each room may import from itself and from these (modules at the top are named without a room).
ALLOWED = {
    "runtime": {"errors", "gguf_file", "tensor_names"},
    "convert": {"errors", "progress", "atomic", "prompts", "tensor_names"},
    "embed": {"runtime", "catalog", "errors", "gguf_file", "limits", "progress", "prompts"},
    "rerank": {"runtime", "catalog", "errors", "gguf_file", "limits", "progress", "prompts", "embed"},
    "files": {"errors", "atomic", "catalog", "gguf_file", "limits", "prompts", "embed", "progress"},
    "mteb_tasks": {"errors", "atomic", "gguf_file", "hub", "limits", "progress", "prompts", "embed", "rerank"},
    "quantization": {"runtime", "errors", "atomic", "data", "gguf_file", "progress", "prompts", "tensor_names",
                     "limits", "embed", "rerank", "convert", "mteb_tasks", "llama_quantize"},
    "integrations": {"builds", "embed", "rerank", "errors", "limits", "prompts"},
}
# The front ends: the command line, the rooms only it starts (the server, the scale-out job) and the
# framework classes.
FRONT_ENDS = {"cli", "server", "distributed", "integrations"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def import_graph() -> dict[str, set[str]]:
    """module → the package's modules it imports (anywhere in the file, functions included)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
                for alias in node.names:
                    candidate = f"{stem}.{alias.name}" if stem else alias.name
                    targets.add(candidate if (PACKAGE / candidate.replace(".", "/")).exists()
                                or (PACKAGE / (candidate.replace(".", "/") + ".py")).exists() else stem)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                targets.update(m.removeprefix("qwen3_gguf.") for m in modules if m and m.startswith("qwen3_gguf."))
        targets.discard("")
        targets.discard(name)
    return graph


def room(module: str) -> str:
    return module.split(".")[0]


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if target in graph and target.startswith(node + "."):
                continue  # a package's __init__ re-exporting its own modules
            if state.get(target) == "open":
                raise AssertionError("import circle: " + " → ".join([*trail, node, target]))
            if target not in state:
                visit(target, [*trail, node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_upward_import():
    wrong = []
    for module, targets in import_graph().items():
        allowed = ALLOWED.get(room(module))
        for target in targets:
            if room(target) == room(module):
                continue
            if (allowed is not None and room(target) not in allowed) or (
                    room(target) in FRONT_ENDS and room(module) not in FRONT_ENDS):
                wrong.append(f"{module} → {target}")
    assert not wrong, wrong


def test_the_graph_is_shallow():
    """The longest chain of imports, counted in modules (13 before the package had rooms; 10 after)."""
    graph = import_graph()

    @cache
    def depth(module: str) -> int:
        below = [t for t in graph.get(module, ()) if t in graph and not t.startswith(module + ".")]
        return 1 + max((depth(t) for t in below), default=0)

    assert max(depth(m) for m in graph) < 13
