"""Builds on demand: a catalog name nobody published is made from the source checkpoint in the
Hugging Face cache (here: tiny random checkpoints under the catalog's repo ids, offline), cached
with a manifest, reused, resumed after a kill, removed; an unreachable Hub fails at once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from held import held_quantizer_pid, holding_quantizer, wait_until_gone
from hub_cache import offline_hub

from qwen3_gguf import Embedder, Reranker
from qwen3_gguf.catalog import NotBuilt, build_paths, lookup, resolve_model
from qwen3_gguf.cli import cli
from qwen3_gguf.convert import convert_checkpoint
from qwen3_gguf.quantization import collect_imatrix, plan_quantization, quantize

EMBEDDING_SOURCE, RERANKER_SOURCE = "Qwen/Qwen3-Embedding-4B", "Qwen/Qwen3-Reranker-4B"
EMBEDDING_NAME = "qwen3-embedding-4b:q4_k_m+bump-edges"   # Q4_K_M is published, with this recipe it is not
RERANKER_NAME = "qwen3-reranker-4b"                       # nothing published: its default type, q8_0
IMATRIX_CHUNKS = "2"   # of the shipped calibration set: enough to exercise the step, quick on a shared CPU
DOCS = ["Paris is in France.", "Bananas are yellow.", "The Louvre is in Paris."]


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def console_script() -> str:
    exe = shutil.which("qwen3-gguf", path=os.path.dirname(sys.executable)) or shutil.which("qwen3-gguf")
    assert exe, "the qwen3-gguf console script is not installed"
    return exe


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_and_mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, embedding_ckpt_256, reranker_tied_ckpt):
    """An offline Hugging Face cache holding the two checkpoints under the catalog's source repos,
    and an empty build cache (QWEN3_GGUF_BUILD_CACHE), for this module and its child processes."""
    root = tmp_path_factory.mktemp("on-demand")
    with pytest.MonkeyPatch.context() as patch:
        cache = offline_hub(patch, root / "hf" / "hub")
        cache.add_checkpoint(EMBEDDING_SOURCE, embedding_ckpt_256)
        cache.add_checkpoint(RERANKER_SOURCE, reranker_tied_ckpt)
        patch.setenv("QWEN3_GGUF_BUILD_CACHE", str(root / "builds"))
        yield root / "builds"


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory, embedding_ckpt_256, reranker_tied_ckpt):
    """What a user would do without builds: convert to BF16, collect the imatrix on the shipped
    calibration set, quantize with the recipe."""
    folder = tmp_path_factory.mktemp("by-hand")
    embedding_bf16 = convert_checkpoint(embedding_ckpt_256, folder / "embedding-bf16.gguf", outtype="bf16").path
    matrix = collect_imatrix(embedding_bf16, max_chunks=int(IMATRIX_CHUNKS)).matrix
    plan = plan_quantization(embedding_bf16, "q4_k_m", imatrix=matrix, recipe="bump-edges")
    embedding = quantize(plan, folder / "embedding-q4_k_m-bump-edges.gguf").path
    reranker_bf16 = convert_checkpoint(reranker_tied_ckpt, folder / "reranker-bf16.gguf", outtype="bf16").path
    reranker = quantize(plan_quantization(reranker_bf16, "q8_0"), folder / "reranker-q8_0.gguf").path
    return {"embedding": embedding, "reranker": reranker}


@pytest.mark.slow
def test_a_name_nobody_published_builds_embeds_as_by_hand_and_is_reused(hub, by_hand):
    built = run("models", "--build", EMBEDDING_NAME, "--imatrix-chunks", IMATRIX_CHUNKS)
    assert built.exit_code == 0, built.output
    paths = build_paths(lookup(EMBEDDING_NAME))
    assert built.stdout == f"{paths.gguf}\n"
    lines = built.stderr.splitlines()
    assert [line.split()[0] for line in lines] == ["building", "download", "convert", "imatrix", "quantize", "built"]
    assert lines[0].startswith(f"building {EMBEDDING_NAME} from {EMBEDDING_SOURCE} (revision ")
    assert lines[2].split()[1] == "BF16," and lines[3].endswith("s") and "2 chunks (" in lines[3]
    assert lines[4].split()[1:4] == ["Q4_K_M", "with", "bump-edges,"]
    assert lines[5].startswith(f"built {EMBEDDING_NAME}: ") and "bits per weight" in lines[5]

    manifest = json.loads(paths.manifest.read_text())
    assert manifest["sha256"] == sha256(paths.gguf) == sha256(by_hand["embedding"])
    assert manifest["size"] == paths.gguf.stat().st_size
    assert (manifest["source"]["repo"], manifest["type"], manifest["recipe"]) == (EMBEDDING_SOURCE, "Q4_K_M",
                                                                                  "bump-edges")
    assert manifest["imatrix"] == {"datasets": ["qwen3-gguf:calibration.jsonl"], "chunks": 2, "chunk_tokens": 512}
    assert set(manifest) >= {"llama_cpp_python_version", "qwen3_gguf_version", "created", "bits_per_weight"}

    before = files_and_mtimes(hub)
    with Embedder(by_hand["embedding"], device="cpu") as embedder:
        expected = embedder.encode("built on demand")
    for _ in range(2):                       # the build is used as it is: nothing rebuilt, nothing touched
        embedded = run("embed", "-m", EMBEDDING_NAME, "built on demand")
        assert embedded.exit_code == 0, embedded.output
        assert embedded.stderr == ""
        np.testing.assert_allclose(json.loads(embedded.stdout)["embedding"], expected, atol=1e-6)  # JSON rounds
    assert files_and_mtimes(hub) == before


@pytest.mark.slow
def test_a_reranker_builds_without_imatrix_and_scores_as_by_hand(hub, by_hand):
    result = run("rerank", "-m", RERANKER_NAME, "-q", "Where is Paris?", "--json", *DOCS)
    assert result.exit_code == 0, result.output
    steps = {line.split()[0]: line for line in result.stderr.splitlines()}
    assert steps["imatrix"].split(maxsplit=1)[1].startswith("skipped")
    with Reranker(by_hand["reranker"], device="cpu") as reranker:
        expected = reranker.rank("Where is Paris?", DOCS)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == [r.index for r in expected]
    assert [r["score"] for r in records] == pytest.approx([r.score for r in expected], abs=1e-6)
    manifest = json.loads(build_paths(lookup(RERANKER_NAME)).manifest.read_text())
    assert (manifest["name"], manifest["kind"], manifest["type"], manifest["imatrix"]) == (
        "qwen3-reranker-4b:q8_0", "reranker", "Q8_0", None)


@pytest.mark.slow
def test_models_lists_builds_and_remove_deletes_them(hub):
    for _ in range(2):                       # built (unless an earlier test did), then nothing to do
        built = run("models", "--build", "qwen3-reranker-4b:q8_0")
        assert built.exit_code == 0, built.output
        assert built.stdout.strip() == str(build_paths(lookup(RERANKER_NAME)).gguf)
    assert built.stderr == ""
    listing = run("models")
    assert listing.exit_code == 0, listing.output
    table = listing.stdout.split("\n\n")[0].splitlines()[1:]
    rows = {line.split()[0]: line.split()[1:] for line in table}
    manifest = json.loads(build_paths(lookup(RERANKER_NAME)).manifest.read_text())
    created = datetime.fromisoformat(manifest["created"]).astimezone()
    assert rows["qwen3-reranker-4b:q8_0"] == ["reranker", "2560", "built", f"{manifest['size'] / 2**20:.1f}", "MiB",
                                              *created.strftime("%Y-%m-%d %H:%M").split(), "(default)"]

    removed = run("models", "--remove", "qwen3-reranker-4b:q8_0")
    assert removed.exit_code == 0, removed.output
    assert removed.stdout.startswith("removed qwen3-reranker-4b:q8_0")
    with pytest.raises(NotBuilt):
        resolve_model(RERANKER_NAME, "reranker")
    assert not list((hub / "qwen3-reranker-4b").glob("*.gguf")), "the build and its converted GGUF are gone"
    after = {line.split()[0]: line.split()[1:] for line in run("models").stdout.split("\n\n")[0].splitlines()[1:]}
    assert after["qwen3-reranker-4b:q8_0"] == ["reranker", "2560", "to-build", "-", "-", "(default)"]
    again = run("models", "--remove", "qwen3-reranker-4b:q8_0")
    assert again.exit_code == 2
    assert again.stderr == "Error: qwen3-reranker-4b:q8_0 is not built (see qwen3-gguf models)\n"


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_that_resolves_and_resumes(hub, tmp_path, by_hand):
    marker = tmp_path / "quantizer-held"
    env = {**os.environ, "QWEN3_GGUF_BUILD_CACHE": str(tmp_path / "builds"), **holding_quantizer(marker)}
    process = subprocess.Popen([console_script(), "models", "--build", EMBEDDING_NAME, "--imatrix-chunks",
                                IMATRIX_CHUNKS], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        quantizer = held_quantizer_pid(marker, process)     # the build is quantizing, its output half written
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        seen = process.stderr.read()
    finally:
        process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, seen
    assert [line.split()[0] for line in seen.splitlines()][-1] == "imatrix", seen   # killed in the quantize step
    wait_until_gone(quantizer)                               # its parent gone, the held child exits

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN3_GGUF_BUILD_CACHE", str(tmp_path / "builds"))
        with pytest.raises(NotBuilt):
            resolve_model(EMBEDDING_NAME, "embedding")
        resumed = run("models", "--build", EMBEDDING_NAME, "--imatrix-chunks", IMATRIX_CHUNKS)
        assert resumed.exit_code == 0, resumed.output
        steps = {line.split()[0]: line.split(maxsplit=1)[1] for line in resumed.stderr.splitlines()}
        assert [steps[step].split()[0] for step in ("download", "convert", "imatrix")] == ["reused"] * 3
        assert steps["quantize"].startswith("Q4_K_M with bump-edges")
        assert sha256(resolve_model(EMBEDDING_NAME, "embedding")) == sha256(by_hand["embedding"])
    assert not [p for p in (tmp_path / "builds").rglob("*partial*")], "no temporary file is left"


def test_a_type_that_needs_the_missing_calibration_set_is_refused_before_any_download(hub, monkeypatch):
    def missing():
        raise FileNotFoundError("the calibration set quantize/calibration/calibration.jsonl is missing")

    monkeypatch.setattr("qwen3_gguf.builds.calibration_file", missing)
    # Qwen3-Reranker-8B is not in the cache: had the build asked for it, the message would say so.
    result = run("models", "--build", "qwen3-reranker-8b:iq2_xs")
    assert result.exit_code == 2
    assert result.stderr == ("Error: qwen3-reranker-8b:iq2_xs cannot be built: IQ2_XS needs an importance matrix "
                             "and the calibration set quantize/calibration/calibration.jsonl is missing\n")


def test_not_enough_disk_space_is_refused_with_the_sizes(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN3_GGUF_BUILD_CACHE", str(tmp_path / "builds"))
    monkeypatch.setattr("qwen3_gguf.builds.shutil.disk_usage", lambda path: SimpleNamespace(free=4096))
    result = run("models", "--build", "qwen3-reranker-4b:q4_k_m")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: not enough free space in {tmp_path} to build: it needs ")
    assert "(the converted GGUF " in result.stderr and ", the Q4_K_M GGUF " in result.stderr
    assert result.stderr.endswith("and 4.0 KiB are free\n")
    assert not list(tmp_path.rglob("*.gguf"))


class SilentHub:
    """A loopback endpoint that closes every connection unanswered (a Hub that cannot be reached),
    counting the connections: a retry would show as a second one."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._accepted = 0
        self._sentinel_seen = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                if connection.recv(1, socket.MSG_PEEK) == b"?":
                    self._sentinel_seen.set()
                else:
                    self._accepted += 1

    def connections(self) -> int:
        """Connections so far: one of ours goes in last and is accepted in order, after all of them."""
        self._sentinel_seen.clear()
        with socket.create_connection(self._listener.getsockname()) as sentinel:
            sentinel.sendall(b"?")
            assert self._sentinel_seen.wait(60)
        return self._accepted

    def close(self):
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(60)


@pytest.fixture
def silent_hub():
    hub = SilentHub()
    yield hub
    hub.close()


def test_an_unreachable_hub_fails_at_once_with_one_line(tmp_path, silent_hub):
    """No HF_HUB_OFFLINE, an endpoint that answers nothing: exit 2, one line, one probe and no retry."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=silent_hub.url,
               QWEN3_GGUF_BUILD_CACHE=str(tmp_path / "builds"))
    unreachable = f"the Hub ({silent_hub.url}) cannot be reached (HF_HUB_OFFLINE=1 skips trying)"
    cases = [
        (["embed", "-m", "qwen3-embedding-0.6b", "hello"],
         "Error: qwen3-embedding-0.6b:q8_0 (Qwen3-Embedding-0.6B-Q8_0.gguf from "
         f"Qwen/Qwen3-Embedding-0.6B-GGUF) is not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'}) and "
         f"{unreachable}; fetch it with: qwen3-gguf models --download qwen3-embedding-0.6b:q8_0 "
         "(or: hf download Qwen/Qwen3-Embedding-0.6B-GGUF Qwen3-Embedding-0.6B-Q8_0.gguf)\n"),
        (["rerank", "-m", "qwen3-reranker-8b:q4_k_m", "-q", "q", "doc"],
         "Error: the checkpoint Qwen/Qwen3-Reranker-8B is not in the Hugging Face cache "
         f"({tmp_path / 'hf' / 'hub'}) and {unreachable}; fetch it with: qwen3-gguf models --build "
         "qwen3-reranker-8b:q4_k_m (or: hf download Qwen/Qwen3-Reranker-8B)\n"),
        (["embed", "-m", "hf://someone/Community-GGUF/model-Q4_K_M.gguf", "hello"],
         "Error: hf://someone/Community-GGUF/model-Q4_K_M.gguf is not in the Hugging Face cache "
         f"({tmp_path / 'hf' / 'hub'}) and {unreachable}; fetch it with: the same command with the Hub reachable "
         "(or: hf download someone/Community-GGUF model-Q4_K_M.gguf)\n"),
    ]
    for args, message in cases:
        before = silent_hub.connections()
        result = subprocess.run([console_script(), *args], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr == message
        assert silent_hub.connections() - before == 1, f"{args}: the Hub was asked more than once (retries)"
    assert not (tmp_path / "builds").exists()


def test_an_unreachable_hub_is_probed_once_per_process(monkeypatch, tmp_path, silent_hub):
    """The same failure inside one process: the probe's answer is kept, so a second command asks nothing."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", silent_hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("QWEN3_GGUF_BUILD_CACHE", str(tmp_path / "builds"))
    for args in (["embed", "hello"], ["models", "--build", "qwen3-reranker-8b:q4_k_m"]):
        result = run(*args)
        assert result.exit_code == 2 and f"the Hub ({silent_hub.url}) cannot be reached" in result.stderr
    assert silent_hub.connections() == 1


def test_online_the_hub_sizes_are_checked_against_free_space_before_any_download(hub, monkeypatch, tmp_path):
    """The planning path of a machine with network (the Hub's answer stubbed: no network here): the
    file list and sizes come from the Hub's metadata, and a disk too small is refused before a byte
    is fetched."""
    monkeypatch.setenv("QWEN3_GGUF_BUILD_CACHE", str(tmp_path / "builds"))
    monkeypatch.setattr("qwen3_gguf.hub.offline", lambda: False)
    gib = 2**30
    files = {"config.json": 1_000, "tokenizer.json": 11_000_000, "tokenizer_config.json": 9_000, "README.md": 20_000,
             "generation_config.json": 200, "model.safetensors.index.json": 30_000,
             "model-00001-of-00002.safetensors": 5 * gib, "model-00002-of-00002.safetensors": 3 * gib}
    asked = []

    def model_info(self, repo, files_metadata=False, **kwargs):
        asked.append((repo, files_metadata))
        return SimpleNamespace(sha="f" * 40, siblings=[SimpleNamespace(rfilename=n, size=s) for n, s in files.items()])

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", model_info)
    monkeypatch.setattr("huggingface_hub.snapshot_download", no_download)
    monkeypatch.setattr("qwen3_gguf.builds.shutil.disk_usage", lambda path: SimpleNamespace(free=10 * gib))
    result = run("models", "--build", "qwen3-embedding-8b:q4_k_m+bump-edges")
    assert asked == [("Qwen/Qwen3-Embedding-8B", True)]
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: not enough free space in ")
    assert "it needs 18.8 GiB (the checkpoint download 8.0 GiB, the converted GGUF 8.0 GiB, the Q4_K_M GGUF 2.8 GiB)" \
        in result.stderr, result.stderr
    assert result.stderr.endswith("and 10.0 GiB are free\n")
