"""Where the project's shipped data is: the model catalog and the quantization data.

In the repository they live at the top (`models.toml`, `quantize/`); the wheel carries copies
under `qwen3_gguf/_data/` (see `[tool.hatch.build.targets.wheel.force-include]` in
pyproject.toml). An installed wheel finds its copies; a source checkout (or an editable install)
finds the originals.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SHIPPED = _PACKAGE / "_data"
_CHECKOUT = _PACKAGE.parent


def data_path(relative: str) -> Path:
    """The shipped file at `relative` (as laid out at the top of the repository)."""
    for root in (_SHIPPED, _CHECKOUT):
        candidate = root / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"qwen3-gguf's data file {relative} is missing from {_SHIPPED} and {_CHECKOUT}; "
                            "reinstall the package")


def catalog_file() -> Path:
    return data_path("models.toml")


def recipes_file() -> Path:
    return data_path("quantize/recipes.toml")


def calibration_file() -> Path:
    return data_path("quantize/calibration/calibration.jsonl")


def eval_file() -> Path:
    return data_path("quantize/eval/eval.jsonl")
