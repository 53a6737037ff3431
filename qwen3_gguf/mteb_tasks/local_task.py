"""A retrieval task from a local folder in the BEIR layout, as mteb's retrieval datasets are:
corpus.jsonl (`_id`, `text`, optional `title`), queries.jsonl (`_id`, `text`) and
qrels/<split>.tsv (`query-id`, `corpus-id`, `score`, with that header). Scored by nDCG@10.
An optional top_ranked/<split>.jsonl (`query-id`, `corpus-ids`) makes it a reranking task: each
query's candidates, which a cross-encoder scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from ..errors import UserError

REQUIRED = ("corpus.jsonl", "queries.jsonl", "qrels")


def is_local_task(name: str) -> bool:
    return Path(name).is_dir()


class LocalRetrievalTask(AbsTaskRetrieval):
    """A retrieval task whose data is a local folder (its subclass per folder carries the metadata)."""


def local_retrieval_task(folder: str | Path) -> LocalRetrievalTask:
    folder = Path(folder)
    absent = [name for name in REQUIRED if not (folder / name).exists()]
    if absent:
        raise UserError(f"{folder} is not a retrieval task folder: it lacks {', '.join(absent)} "
                        "(expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv)")
    splits = sorted(path.stem for path in (folder / "qrels").glob("*.tsv"))
    if not splits:
        raise UserError(f"{folder / 'qrels'} holds no <split>.tsv file")
    metadata = TaskMetadata(
        name=folder.resolve().name, type="Retrieval", main_score="ndcg_at_10",
        description=f"Local retrieval task read from {folder.resolve()}.", reference=None,
        dataset={"path": str(folder.resolve()), "revision": "local"}, category="t2t", modalities=["text"],
        eval_splits=splits, eval_langs=["eng-Latn"], date=None, domains=None, task_subtypes=None, license=None,
        annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation=None,
    )

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        corpus = Dataset.from_list([{"id": str(r["_id"]), "title": r.get("title", ""), "text": r["text"]}
                                    for r in _jsonl(folder / "corpus.jsonl")])
        queries = Dataset.from_list([{"id": str(r["_id"]), "text": r["text"]}
                                     for r in _jsonl(folder / "queries.jsonl")])
        self.dataset = {"default": {split: RetrievalSplitData(corpus=corpus, queries=queries,
                                                              relevant_docs=_qrels(folder / "qrels" / f"{split}.tsv"),
                                                              top_ranked=_top_ranked(folder, split))
                                    for split in splits}}
        self.data_loaded = True

    task_class = type("LocalRetrievalTask", (LocalRetrievalTask,), {"metadata": metadata, "load_data": load_data})
    return task_class()


def _jsonl(path: Path, fields: tuple[str, ...] = ("_id", "text")) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict) or any(field not in record for field in fields):
                    raise UserError(f"{path}:{n}: expected a JSON object with {' and '.join(map(repr, fields))}")
                records.append(record)
    return records


def _top_ranked(folder: Path, split: str) -> dict[str, list[str]] | None:
    path = folder / "top_ranked" / f"{split}.jsonl"
    if not path.exists():
        return None
    ranked = {}
    for n, record in enumerate(_jsonl(path, ("query-id", "corpus-ids")), 1):
        if not isinstance(record["corpus-ids"], list):
            raise UserError(f"{path}:{n}: 'corpus-ids' must be a list of document ids")
        ranked[str(record["query-id"])] = [str(i) for i in record["corpus-ids"]]
    return ranked


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    relevant: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f, delimiter="\t"), 2):
            try:
                relevant.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}:{n}: expected tab-separated query-id, corpus-id, score") from None
    return relevant
