"""The sweep's report: report.json (every number), report.md (a table sorted by size, the
Pareto-optimal rows marked) and pareto.png (size against fidelity, and against MTEB main score
with --mteb) when matplotlib is there."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import atomic_path, write_text_atomically
from .sweep import SweepFile, SweepResult

MIB = 1 << 20
PARETO_MARK = "★"


def fidelity_score(row: SweepFile, kind: str) -> float:
    """The one number the Pareto front weighs against size, higher is better: the mean cosine
    to the reference for embeddings, minus the mean |ΔP(yes)| for rerankers."""
    fidelity = row.measured["fidelity"]
    return fidelity["cosine_mean"] if kind == "embedding" else -fidelity["mean_abs_delta"]


def pareto_rows(result: SweepResult) -> set[str]:
    """Labels of the rows no other row beats: none is at most as large and at least as faithful,
    and strictly better in one of the two. Rows sharing a file count once (the first)."""
    rows = [r for r in result.rows if r.same_as is None]
    points = {r.label: (r.measured["size_bytes"], fidelity_score(r, result.kind)) for r in rows}
    front = set()
    for label, (size, score) in points.items():
        beaten = any(s <= size and f >= score and (s < size or f > score)
                     for other, (s, f) in points.items() if other != label)
        if not beaten:
            front.add(label)
    return front


def write_reports(result: SweepResult, out_dir: Path) -> tuple[list[Path], str | None]:
    """Write the report files; returns them and, if the plot was skipped, why."""
    front = pareto_rows(result)
    written = [write_text_atomically(out_dir / "report.json", json.dumps(_as_json(result, front), indent=2) + "\n"),
               write_text_atomically(out_dir / "report.md", markdown(result, front))]
    try:
        import matplotlib
    except ImportError:
        return written, "matplotlib is not installed (pip install 'qwen3-gguf[report]')"
    matplotlib.use("Agg")
    written.append(_plot(result, front, out_dir / "pareto.png"))
    return written, None


def _sorted_rows(result: SweepResult) -> list[SweepFile]:
    return sorted(result.rows, key=lambda r: (r.measured["size_bytes"], r.same_as is not None, r.label))


def _as_json(result: SweepResult, front: set[str]) -> dict:
    return {
        "model": result.model_name, "kind": result.kind, "evaluation": result.eval_name,
        "queries": result.n_queries, "documents": result.n_documents, "imatrix": result.imatrix,
        "dimensions": result.full_dim, "reduced_dimensions": result.reduced_dim,
        "rows": [{"label": r.label, "type": r.type_name, "recipe": r.recipe, "file": r.path.name, "path": str(r.path),
                  "same_as": r.same_as, "built_s": r.built_s, "pareto": r.label in front, **r.measured}
                 for r in _sorted_rows(result)],
    }


def markdown(result: SweepResult, front: set[str]) -> str:
    embedding = result.kind == "embedding"
    reference = next(r for r in result.rows if r.recipe is None)
    lines = [
        f"# Quantization sweep: {result.model_name}",
        "",
        f"{result.kind.capitalize()} model, reference {reference.path.name} ({reference.type_name}); "
        f"evaluation set {result.eval_name}: {result.n_queries} queries, "
        f"{result.n_documents} documents; imatrix {result.imatrix}. Every measure compares a file's outputs "
        "with the reference file's on the same inputs. " + (
            f"Cosines: every query and document vector. recall@10, nDCG@10 (graded by the reference's "
            f"ranking) and Spearman (all query × document scores): retrieval agreement with the reference; "
            f"@{result.reduced_dim}: the same at the first {result.reduced_dim} Matryoshka dimensions."
            if embedding else
            "Each query is scored against its own document and the next pairs' documents: Spearman of all "
            "P(yes), mean |ΔP(yes)|, and how often the top document is the reference's."),
        *(["MTEB: each task's main score on this file (mteb's own evaluation, results in mteb/) and Δ, its "
           "difference to the reference's score."] if mteb_tasks(result) else []),
        f"{PARETO_MARK}: Pareto-optimal in size against "
        + ("mean cosine." if embedding else "mean |ΔP(yes)|.") + " Sorted by size.",
        "",
    ]
    if embedding:
        d = result.reduced_dim
        head = ["", "type", "recipe", "MiB", "bits/weight", "cos mean", "cos min", "recall@10", "nDCG@10",
                "Spearman", f"cos mean @{d}", f"recall@10 @{d}", f"nDCG@10 @{d}", "load s", "tokens/s"]
    else:
        head = ["", "type", "recipe", "MiB", "bits/weight", "Spearman", "mean |ΔP|", "max |ΔP|", "top-1 agree",
                "load s", "tokens/s"]
    tasks = mteb_tasks(result)
    for task, metric in tasks.items():
        head += [f"{task} {metric}", f"Δ {task}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in _sorted_rows(result):
        m, f = row.measured, row.measured["fidelity"]
        cells = [PARETO_MARK if row.label in front else "", row.type_name,
                 row.recipe or "reference", f"{m['size_bytes'] / MIB:,.1f}", f"{m['bits_per_weight']:.2f}"]
        if embedding:
            r = m["fidelity_reduced_dim"]
            cells += [_num(f["cosine_mean"], 5), _num(f["cosine_min"], 5), _num(f["recall_at_10"], 3),
                      _num(f["ndcg_at_10"], 3), _num(f["spearman"], 4), _num(r["cosine_mean"], 5),
                      _num(r["recall_at_10"], 3), _num(r["ndcg_at_10"], 3)]
        else:
            cells += [_num(f["spearman"], 4), _num(f["mean_abs_delta"], 5), _num(f["max_abs_delta"], 4),
                      _num(f["top1_agreement"], 3)]
        cells += [f"{m['load_s']:.2f}", f"{m['tokens_per_s']:,.0f}"]
        for task in tasks:
            cells += [f"{m['mteb'][task]['score']:.5f}", f"{m['mteb'][task]['delta']:+.5f}"]
        if row.same_as:
            cells[2] += f" (= {row.same_as})"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def mteb_tasks(result: SweepResult) -> dict[str, str]:
    """Task → main-score metric of the MTEB columns (none without --mteb)."""
    scores = result.rows[0].measured.get("mteb", {})
    return {task: score["metric"] for task, score in scores.items()}


def _num(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


MARKERS = "o^sDvP*X"


def _plot(result: SweepResult, front: set[str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    embedding = result.kind == "embedding"
    # The distance from the reference on a log axis: 1 - cosine (or |ΔP|) spans decades.
    def distance(row):
        f = row.measured["fidelity"]
        return max(1 - f["cosine_mean"] if embedding else f["mean_abs_delta"], 1e-9)

    rows = [r for r in result.rows if r.recipe is not None and r.same_as is None]
    recipes = list(dict.fromkeys(r.recipe for r in rows))
    tasks = mteb_tasks(result)
    figure, panels = plt.subplots(1, 2 if tasks else 1, figsize=(15 if tasks else 8, 5.5), dpi=120, squeeze=False)
    axes = panels[0][0]
    for i, recipe in enumerate(recipes):
        mine = [r for r in rows if r.recipe == recipe]
        axes.scatter([r.measured["size_bytes"] / MIB for r in mine], [distance(r) for r in mine],
                     marker=MARKERS[i % len(MARKERS)], s=50, label=recipe, zorder=3)
        for r in mine:
            axes.annotate(r.type_name, (r.measured["size_bytes"] / MIB, distance(r)), fontsize=7,
                          xytext=(4, 3 - 11 * i), textcoords="offset points")  # recipes' labels apart
    on_front = sorted((r for r in rows if r.label in front), key=lambda r: r.measured["size_bytes"])
    if on_front:
        axes.step([r.measured["size_bytes"] / MIB for r in on_front], [distance(r) for r in on_front],
                  where="post", color="grey", linestyle="--", linewidth=1, label="Pareto front", zorder=2)
    axes.set_yscale("log")
    axes.set_xlabel("file size (MiB)")
    axes.set_ylabel("1 − mean cosine to the reference" if embedding else "mean |ΔP(yes)| to the reference")
    axes.set_title(f"{result.model_name}: size against fidelity (lower is closer)", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    if tasks:
        _mteb_panel(panels[0][1], result, rows, recipes, tasks)
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png")
    plt.close(figure)
    return path


def _mteb_panel(axes, result: SweepResult, rows: list[SweepFile], recipes: list[str], tasks: dict[str, str]) -> None:
    """Size against the mean MTEB main score over the tasks, the reference's as a line."""
    def mean_score(row):
        return sum(row.measured["mteb"][task]["score"] for task in tasks) / len(tasks)

    for i, recipe in enumerate(recipes):
        mine = [r for r in rows if r.recipe == recipe]
        axes.scatter([r.measured["size_bytes"] / MIB for r in mine], [mean_score(r) for r in mine],
                     marker=MARKERS[i % len(MARKERS)], s=50, label=recipe, zorder=3)
        for r in mine:
            axes.annotate(r.type_name, (r.measured["size_bytes"] / MIB, mean_score(r)), fontsize=7,
                          xytext=(4, 3 - 11 * i), textcoords="offset points")
    axes.axhline(mean_score(result.rows[0]), color="grey", linestyle="--", linewidth=1,
                 label=f"reference ({result.rows[0].type_name})")
    axes.set_xlabel("file size (MiB)")
    metrics = ", ".join(f"{task} {metric}" for task, metric in tasks.items())
    axes.set_ylabel("MTEB main score" + (" (mean over tasks)" if len(tasks) > 1 else ""))
    axes.set_title(f"MTEB: {metrics}", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
