"""Where the embedded rows go: Parquet partitioned by model, or a LanceDB table.

The driver writes: rows stream back from the actors and are written in files (Parquet) or
upserts (LanceDB) of `rows_per_write` rows. Each Parquet file appears whole under its final
name (atomic rename) and is named by a hash of its ids, so a retried write replaces rather
than duplicates; LanceDB upserts on the id. Whatever was written stays written: a rerun reads
the sink's ids and skips them.
"""

from __future__ import annotations

import abc
import hashlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import UserError
from .identity import ModelIdentity, id_set
from .worker import output_schema

LANCE_SCHEME = "lance://"
LANCE_TABLE = "chunks"
DEFAULT_ROWS_PER_WRITE = 4096
FORMATS = ("parquet", "lance")


def open_sink(target: str | Path, identity: ModelIdentity, *, fmt: str | None = None,
              rows_per_write: int = DEFAULT_ROWS_PER_WRITE) -> Sink:
    """The sink at `target`: a folder for Parquet, `lance://PATH` (or fmt="lance") for LanceDB."""
    target = str(target)
    if target.startswith(LANCE_SCHEME):
        if fmt not in (None, "lance"):
            raise UserError(f"-o {target} is a LanceDB path; it takes --format lance, not {fmt}")
        return LanceSink(target.removeprefix(LANCE_SCHEME), identity, rows_per_write=rows_per_write)
    if fmt == "lance":
        return LanceSink(target, identity, rows_per_write=rows_per_write)
    if fmt not in (None, "parquet"):
        raise UserError(f"the Ray engine writes --format parquet or lance, not {fmt}")
    return ParquetSink(target, identity, rows_per_write=rows_per_write)


class Sink(abc.ABC):
    """Rows of one model and dim: buffered, written in blocks, and the ids already there."""

    def __init__(self, identity: ModelIdentity, rows_per_write: int):
        if rows_per_write < 1:
            raise UserError(f"rows_per_write must be at least 1, got {rows_per_write}")
        self.identity = identity
        self.rows_per_write = rows_per_write
        self.rows_written = 0
        self._pending: list = []
        self._pending_rows = 0

    @abc.abstractmethod
    def existing_ids(self) -> np.ndarray:
        """The ids the sink holds (sorted, from identity.id_set)."""

    @abc.abstractmethod
    def _write(self, table) -> None:
        """Write one block of rows for good."""

    def write(self, table) -> None:
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
        if self._pending_rows >= self.rows_per_write:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._write(table)
        self._pending, self._pending_rows = [], 0
        self.rows_written += table.num_rows

    def _refuse(self, where: str, found: dict[str, str]) -> None:
        """Refuse a sink whose vectors come from another model or have another dim."""
        wanted = self.identity.metadata()
        if found.get("model") != wanted["model"] or found.get("dim") != wanted["dim"]:
            raise UserError(f"{where} holds {found.get('dim', '?')}-dimensional vectors of {found.get('model', '?')}; "
                            f"this run makes {wanted['dim']}-dimensional vectors of {wanted['model']}. "
                            "Use the same model and --dim, or another output")


class ParquetSink(Sink):
    """`FOLDER/model=KEY/part-HASH.parquet`: one partition per model (hive-style), any number of models."""

    def __init__(self, folder: str | Path, identity: ModelIdentity, *, rows_per_write: int = DEFAULT_ROWS_PER_WRITE):
        super().__init__(identity, rows_per_write)
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"-o {self.folder} is a file; the Parquet sink is a folder")
        self.partition = self.folder / f"model={identity.key}"
        for path in self._files()[:1]:
            self._refuse(str(self.partition), _parquet_metadata(path))

    def _files(self) -> list[Path]:
        return sorted(self.partition.glob("part-*.parquet")) if self.partition.is_dir() else []

    def existing_ids(self) -> np.ndarray:
        import pyarrow.parquet as pq

        return id_set(i for path in self._files() for i in pq.read_table(path, columns=["id"]).column("id").to_pylist())

    def _write(self, table) -> None:
        import pyarrow.parquet as pq

        digest = hashlib.sha256("\n".join(sorted(table.column("id").to_pylist())).encode()).hexdigest()[:20]
        table = table.replace_schema_metadata(self.identity.metadata())
        self.partition.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.partition / f"part-{digest}.parquet") as temporary:
            pq.write_table(table, temporary)


def _parquet_metadata(path: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as exc:  # noqa: BLE001 - a damaged file is the sink's fault, said plainly
        raise UserError(f"{path} is not a readable Parquet file: {exc}") from None
    return {k.decode(): v.decode() for k, v in metadata.items()}


class LanceSink(Sink):
    """A LanceDB database with one table, `chunks`, of one model and dim; rows upserted on id."""

    def __init__(self, path: str | Path, identity: ModelIdentity, *, rows_per_write: int = DEFAULT_ROWS_PER_WRITE):
        super().__init__(identity, rows_per_write)
        self.path = Path(path)
        self.table = open_lance_table(self.path)
        if self.table is not None:
            self._refuse(f"{LANCE_SCHEME}{self.path}", lance_metadata(self.table))

    def existing_ids(self) -> np.ndarray:
        if self.table is None:
            return id_set([])
        return id_set(self.table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist())

    def _write(self, table) -> None:
        if self.table is None:
            import lancedb

            schema = output_schema(self.identity.dim).with_metadata(self.identity.metadata())
            self.table = lancedb.connect(self.path).create_table(LANCE_TABLE, schema=schema)
        (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(table))


def open_lance_table(path: Path):
    """The `chunks` table of the LanceDB database at `path`, None if there is none yet."""
    try:
        import lancedb
    except ImportError:
        raise UserError("LanceDB needs lancedb, which is not installed: pip install 'qwen3-gguf[lance]'") from None
    if path.exists() and not path.is_dir():
        raise UserError(f"{LANCE_SCHEME}{path} is a file; a LanceDB database is a folder")
    if not path.exists():
        return None
    db = lancedb.connect(path)
    return db.open_table(LANCE_TABLE) if LANCE_TABLE in db.list_tables().tables else None


def lance_metadata(table) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
