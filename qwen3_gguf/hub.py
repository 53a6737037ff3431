"""The Hugging Face Hub, through huggingface_hub: its cache, `HF_HOME`, tokens and offline mode apply.

Before the first request a quick probe (one HEAD of the endpoint, no retries) tells whether the Hub
can be reached. When it cannot, every call is answered from the cache alone: a machine without
network fails at once with this project's message instead of waiting through huggingface_hub's
retries, and `HF_HUB_OFFLINE=1` skips even the probe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

PROBE_SECONDS = 1.5
HF_URL = re.compile(r"^hf://(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>[^/\s]+))?/(?P<file>\S+\.gguf)$", re.IGNORECASE)

# What the converter reads from a checkpoint repository (the weights come on top).
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "README.md", "modules.json")
REQUIRED_FILES = ("config.json", "tokenizer.json")
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def offline() -> bool:
    """True when the Hub is not to be asked: HF_HUB_OFFLINE=1, or the probe found no answer.

    After a failed probe huggingface_hub is put in its own offline mode for the rest of the
    process, so that nothing inside it tries the network either (its user-agent code fetches a
    registry from the endpoint, with a timeout of its own).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if _answers(constants.ENDPOINT):
        return False
    _unreachable.add(constants.ENDPOINT)
    constants.HF_HUB_OFFLINE = True
    return True


_unreachable: set[str] = set()   # endpoints whose probe failed in this process


@functools.cache
def _answers(endpoint: str) -> bool:
    """Whether `endpoint` answers an HTTP request within PROBE_SECONDS (any status will do)."""
    from huggingface_hub import get_session

    try:
        with quiet():
            get_session().head(endpoint, timeout=PROBE_SECONDS)
    except Exception:  # noqa: BLE001 - refused, unresolvable, timed out or a proxy error: all mean "no Hub"
        return False
    return True


def why_offline() -> str:
    from huggingface_hub import constants

    if constants.ENDPOINT in _unreachable:
        return f"the Hub ({constants.ENDPOINT}) cannot be reached (HF_HUB_OFFLINE=1 skips trying)"
    return "offline mode is on (HF_HUB_OFFLINE=1)"


@contextlib.contextmanager
def quiet():
    """huggingface_hub's own warnings (retries, cache fallbacks) off: the errors raised say it all."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def hub_file(repo: str, filename: str, *, what: str, fetch: str, revision: str | None = None) -> Path:
    """`filename` of `repo` from the cache, downloaded first when the Hub can be reached.

    `what` names the file in messages and `fetch` is the command that gets it.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        with quiet():
            return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=offline()))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise UserError(
            f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why_offline()}; "
            f"fetch it with: {fetch} (or: hf download {repo} {filename})"
        ) from None
    except HfHubHTTPError as exc:
        raise UserError(f"could not download {filename} from {repo}: {str(exc).splitlines()[0]}") from None


def hf_reference(text: str) -> tuple[str, str, str | None] | None:
    """(repo, file, revision) of `hf://OWNER/REPO[@REVISION]/FILE.gguf`, or None for anything else."""
    match = HF_URL.match(text.strip())
    return (match["repo"], match["file"], match["revision"]) if match else None


def hf_gguf(text: str) -> Path:
    """The GGUF an `hf://OWNER/REPO/FILE.gguf` reference names, from the cache or downloaded."""
    parsed = hf_reference(text)
    if parsed is None:
        raise UserError(f"{text!r} is not an hf://OWNER/REPO/FILE.gguf reference")
    repo, filename, revision = parsed
    return hub_file(repo, filename, revision=revision, what=text,
                    fetch="the same command with the Hub reachable")


# --- checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of a checkpoint the converter reads, at one revision, before any download."""

    repo: str
    revision: str                  # the commit hash
    sizes: dict[str, int]          # file → bytes
    missing: tuple[str, ...]       # files not yet in the cache

    @property
    def weight_bytes(self) -> int:
        return sum(size for name, size in self.sizes.items() if name.endswith(".safetensors"))

    @property
    def missing_bytes(self) -> int:
        return sum(self.sizes[name] for name in self.missing)


def checkpoint_files(repo: str, *, fetch: str) -> CheckpointFiles:
    """What downloading `repo`'s checkpoint takes: asked of the Hub, or read from the cache offline.

    `fetch` is the command that fetches it, for the message when offline and not cached.
    """
    return _cached_checkpoint(repo, fetch=fetch) if offline() else _remote_checkpoint(repo)


def _remote_checkpoint(repo: str) -> CheckpointFiles:
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    try:
        with quiet():
            info = HfApi().model_info(repo, files_metadata=True)
    except HfHubHTTPError as exc:
        raise UserError(f"could not list the files of {repo}: {str(exc).splitlines()[0]}") from None
    available = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    wanted = [name for name in CHECKPOINT_FILES if name in available]
    if WEIGHTS_INDEX in available:
        wanted += [WEIGHTS_INDEX, *(name for name in available if re.fullmatch(r"model-\d+-of-\d+\.safetensors", name))]
    elif WEIGHTS in available:
        wanted.append(WEIGHTS)
    _check_complete(repo, wanted)
    sizes = {name: available[name] for name in wanted}
    missing = tuple(name for name in wanted
                    if not isinstance(try_to_load_from_cache(repo, name, revision=info.sha), str))
    return CheckpointFiles(repo, info.sha, sizes, missing)


def _cached_checkpoint(repo: str, *, fetch: str) -> CheckpointFiles:
    from huggingface_hub import constants, try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json")
    if not isinstance(config, str):
        raise UserError(f"the checkpoint {repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                        f"{why_offline()}; fetch it with: {fetch} (or: hf download {repo})")
    folder = Path(config).parent
    present = [name for name in (*CHECKPOINT_FILES, WEIGHTS_INDEX, WEIGHTS) if (folder / name).is_file()]
    if WEIGHTS_INDEX in present:
        import json

        shards = sorted(set(json.loads((folder / WEIGHTS_INDEX).read_text())["weight_map"].values()))
        present = [name for name in present if name != WEIGHTS] + shards
    _check_complete(repo, present, folder=folder, fetch=fetch)
    sizes = {name: (folder / name).stat().st_size for name in present}
    return CheckpointFiles(repo, folder.name, sizes, missing=())


def _check_complete(repo: str, names: list[str], *, folder: Path | None = None, fetch: str = "") -> None:
    absent = [name for name in REQUIRED_FILES if name not in names]
    if not any(name.endswith(".safetensors") for name in names):
        absent.append(WEIGHTS)
    elif folder is not None:
        absent += [name for name in names if name.endswith(".safetensors") and not (folder / name).is_file()]
    if not absent:
        return
    if folder is None:
        raise UserError(f"{repo} is not a Qwen3 checkpoint this tool can convert: it has no {', '.join(absent)}")
    raise UserError(f"the cached checkpoint {repo} ({folder}) lacks {', '.join(absent)} and {why_offline()}; "
                    f"fetch it with: {fetch} (or: hf download {repo})")


def download_checkpoint(files: CheckpointFiles) -> Path:
    """The snapshot folder holding `files`, downloading the missing ones (with huggingface_hub's bars)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        with quiet():
            return Path(snapshot_download(files.repo, revision=files.revision, allow_patterns=list(files.sizes),
                                          local_files_only=not files.missing))
    except HfHubHTTPError as exc:
        raise UserError(f"could not download {files.repo}: {str(exc).splitlines()[0]}") from None
