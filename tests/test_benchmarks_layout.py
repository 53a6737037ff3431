"""benchmarks/: the scripts share one module, benchmarks/common.py, and import no other script; each one starts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = BENCH / "common.py"
SCRIPTS = sorted(path for path in BENCH.glob("*.py") if path != SHARED)


def imported_modules(source: str) -> set[str]:
    """The top-level names of the modules `source` imports anywhere (functions included), by an
    import statement or by importlib.import_module / __import__ of a literal name."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")):
            found.add(node.args[0].value.split(".")[0])
    return found


def test_the_check_sees_every_way_of_importing_a_script():
    source = """
import run as bench
import json

def later():
    from quant_types import VARIANTS
    import importlib
    return importlib.import_module("peers.sub"), __import__("serve")
"""
    assert imported_modules(source) == {"run", "json", "quant_types", "importlib", "peers", "serve"}


def test_no_benchmark_imports_another_script():
    scripts = {path.stem for path in SCRIPTS}
    imports = {path.name: sorted(imported_modules(path.read_text(encoding="utf-8")) & scripts)
               for path in [*SCRIPTS, SHARED]}
    assert {name: found for name, found in imports.items() if found} == {}


def test_the_shared_module_is_not_a_script():
    assert "__main__" not in SHARED.read_text(encoding="utf-8")
    assert all("__main__" in path.read_text(encoding="utf-8") for path in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_script_prints_its_help(script):
    """Every script imports (the shared module included) and parses its arguments, run as the
    README says, from any folder."""
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                            cwd=BENCH.parent / "tests")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script.name}")
