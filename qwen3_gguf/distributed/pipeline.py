"""The Ray Data pipeline: connect to Ray, read a corpus into a dataset, embed it on an actor pool."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import UserError
from ..files import DEFAULT_CHUNK_TOKENS, Counts, TextFiles
from ..limits import MAX_INPUT_TOKENS
from .identity import ModelIdentity, id_set
from .worker import ChunkEmbedder

INSTALL_HINT = "pip install 'qwen3-gguf[ray]'"
DEFAULT_CPUS_PER_WORKER = 4     # llama.cpp threads per actor; more actors scale better than more threads
DEFAULT_BATCH_ROWS = 16          # documents (or table rows) per actor call
CONNECT_TIMEOUT_S = 5.0
RAY_LOGGERS = ("ray", "ray.data")


def require_ray():
    """The `ray` module, or a UserError that says how to install it."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(f"the Ray engine needs Ray Data and pyarrow, which are not installed: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, verbose: bool = False) -> Iterator[None]:
    """Connect to the cluster at `address` ("auto", "HOST:PORT", "ray://HOST:PORT") or start Ray here.

    A session the caller already started (a notebook, a test) is used as it is and left running;
    one started here is shut down at the end. Ray's logs stay quiet unless `verbose`.
    """
    ray = require_ray()
    if address not in (None, "auto"):
        _check_reachable(address)
    if ray.is_initialized():
        yield
        return
    level = logging.INFO if verbose else logging.ERROR
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        ray.init(address=address, log_to_driver=verbose, include_dashboard=False, logging_level=level)
    except ConnectionError as exc:
        raise UserError(f"cannot connect to Ray at --address {address}: {_first_line(exc)}") from None
    _quiet_data_context(verbose)
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Refuse an address nothing listens on, at once (Ray itself retries for a long while)."""
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at --address {address}: {exc.strerror or exc}; "
                        "start one with `ray start --head`, or leave out --address to run Ray here") from None


def _quiet_data_context(verbose: bool) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose or sys.stderr.isatty()
    context.print_on_execution_start = verbose


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def default_pool(workers: int | None, cpus_per_worker: int | None) -> tuple[int, int]:
    """(actors, CPUs per actor): what is given, the rest filled from the cluster's alive nodes."""
    ray = require_ray()
    node_cpus = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]]
    cpus = cpus_per_worker or max(1, min(DEFAULT_CPUS_PER_WORKER, max(node_cpus, default=1)))
    return workers or max(1, sum(n // cpus for n in node_cpus)), cpus


# --- reading --------------------------------------------------------------------------------------


def read_files(paths: Sequence[str], *, include: Sequence[str] = (), exclude: Sequence[str] = (),
               counts: Counts | None = None, files_per_block: int = DEFAULT_BATCH_ROWS):
    """The text files under `paths` as a dataset of (path, text) rows, path absolute.

    Walked and read here, on the driver, with `embed --files`'s rules (hidden entries, globs,
    binary, empty and unreadable files skipped and counted in `counts`), so the files need not
    be visible to the cluster's machines. Chunking happens in the actors. An actor takes a block
    at a time, so blocks of one batch's worth of files spread even a small corpus over every actor.
    """
    ray = require_ray()
    import pyarrow as pa

    files = TextFiles(paths, include=include, exclude=exclude, counts=counts)
    blocks = [pa.table({"path": [d.path if d.path == "-" else os.path.abspath(d.path) for d in block],
                        "text": [d.text for d in block]})
              for block in _batched(files, files_per_block)]
    if not blocks:
        raise UserError(f"nothing to embed: {files.counts.summary()}")
    return ray.data.from_arrow(blocks)


def read_table(paths: Sequence[str], *, text_column: str = "text", id_column: str | None = None):
    """Parquet or JSON Lines files (or folders of them) with a text column, as a dataset."""
    ray = require_ray()
    if not paths:
        raise UserError("no paths given: name Parquet or JSONL files or folders")
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"no such file or folder: {path}")
    suffixes = {_table_suffix(p) for p in paths}
    if len(suffixes) != 1:
        raise UserError(f"give Parquet files or JSONL files, not both: {', '.join(paths)}")
    reader = ray.data.read_parquet if suffixes == {".parquet"} else ray.data.read_json
    try:
        ds = reader(list(paths))
        columns = ds.schema().names
    except Exception as exc:  # noqa: BLE001 - any reader failure is the input's fault
        raise UserError(f"cannot read {', '.join(paths)} as a table: {_first_line(exc)}") from None
    for column in filter(None, (text_column, id_column)):
        if column not in columns:
            raise UserError(f"{paths[0]} has no column {column!r} (its columns: {', '.join(columns)})")
    return ds


def _table_suffix(path: str) -> str:
    """.parquet or .jsonl for a file, or for the files of a folder."""
    names = [p.name for p in Path(path).rglob("*") if p.is_file()] if os.path.isdir(path) else [path]
    suffixes = {Path(n).suffix.lower() for n in names if not Path(n).name.startswith(".")}
    if suffixes <= {".parquet"} and suffixes:
        return ".parquet"
    if suffixes <= {".jsonl", ".json"} and suffixes:
        return ".jsonl"
    raise UserError(f"{path} is not a Parquet or JSON Lines file (or a folder of only those)")


def _batched(items: Iterable, n: int) -> Iterator[list]:
    block = []
    for item in items:
        block.append(item)
        if len(block) == n:
            yield block
            block = []
    if block:
        yield block


# --- embedding ------------------------------------------------------------------------------------


def embed_dataset(ds, model: str | Path | ModelIdentity, *, text_column: str = "text", id_column: str | None = None,
                  prompt_name: str | None = None, instruction: str | None = None, dim: int | None = None,
                  chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS, overlap: int | None = None,
                  max_tokens: int = MAX_INPUT_TOKENS, workers: int | tuple[int, int] = (1, 1),
                  cpus_per_worker: int = 1, gpus_per_worker: float = 0, batch_size: int = DEFAULT_BATCH_ROWS,
                  skip_ids: Iterable[str] | None = None, worker: type = ChunkEmbedder):
    """`ds` (rows with a `text_column`) chunked and embedded by a pool of actors, one row per chunk.

    Each actor loads the GGUF once, runs llama.cpp on `cpus_per_worker` threads and offloads
    to its GPU when `gpus_per_worker` > 0. `workers` is a fixed pool size or (min, max) for a
    pool Ray grows under load. Rows carry a deterministic `id` (see `identity`), path, chunk,
    start, end, dim, model, n_tokens, text and `vector` (fixed_size_list<float32>[dim]).
    Chunks whose id is in `skip_ids` are not embedded and not output. `worker` is the callable
    class the actors run (a subclass of ChunkEmbedder can add per-batch work).
    """
    ray = require_ray()
    identity = model if isinstance(model, ModelIdentity) else ModelIdentity.of(model, dim)
    if dim is not None and dim != identity.dim:
        raise UserError(f"dim {dim} differs from the model identity's {identity.dim}")
    min_size, max_size = (workers, workers) if isinstance(workers, int) else workers
    if not 1 <= min_size <= max_size:
        raise UserError(f"workers must be at least 1 (and min ≤ max), got {workers}")
    if cpus_per_worker < 1:
        raise UserError(f"cpus_per_worker must be at least 1, got {cpus_per_worker}")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    skip = None
    if skip_ids is not None:
        skip = skip_ids if hasattr(skip_ids, "dtype") else id_set(skip_ids)
        skip = ray.put(skip) if len(skip) else None
    return ds.map_batches(
        worker,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=min_size, max_size=max_size),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
        fn_constructor_kwargs=dict(
            model=identity.spec, model_key=identity.key, fingerprint=identity.fingerprint, dim=identity.dim,
            text_column=text_column, id_column=id_column, prompt_name=prompt_name, instruction=instruction,
            chunk_tokens=chunk_tokens, overlap=overlap, max_tokens=max_tokens, threads=int(cpus_per_worker),
            gpu=gpus_per_worker > 0, skip_ids=skip,
        ),
    )
