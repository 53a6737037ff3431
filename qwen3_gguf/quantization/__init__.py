"""Quantization: from a full-precision GGUF to any llama.cpp type, planned tensor by tensor.

types (names: file types, tensor types, hybrids) · recipes (per-tensor rules kept as data) ·
llama_choice (what llama.cpp itself would choose) → plan (one type per tensor, checked before any
work) → quantizer (llama.cpp's quantizer, run in llama_quantize's child process). imatrix collects
the importance matrix on calibration text (text_records reads it). sweep builds a family of
quants and measures them (evaluation runs the models, fidelity compares, report writes tables);
search chooses a type per tensor group by measuring the model (`quantize --target-bpw`); fastest
chooses among the same measurements by kernel time on this CPU (kernel_speeds) under a fidelity floor
(`quantize --fastest --min-cosine`); bench measures whole-file types on this machine, speed and
fidelity side by side (`bench --types`).
"""

from .fastest import FastestResult, build_fastest, fastest_quantization, format_fastest
from .imatrix import collect_imatrix, load_calibration
from .importance import ImportanceMatrix, read_imatrix, write_imatrix
from .plan import QuantPlan, plan_quantization
from .quantizer import QuantizeResult, quantize
from .recipes import load_recipe, parse_type, recipe_names
from .search import SearchResult, SearchSettings, SearchTarget, build_searched, format_report, search_quantization

__all__ = ["ImportanceMatrix", "QuantPlan", "QuantizeResult", "collect_imatrix", "load_calibration", "load_recipe",
           "parse_type", "plan_quantization", "quantize", "read_imatrix", "recipe_names", "write_imatrix",
           "SearchResult", "SearchSettings", "SearchTarget", "build_searched", "format_report", "search_quantization",
           "FastestResult", "build_fastest", "fastest_quantization", "format_fastest"]
