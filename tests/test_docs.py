"""Every console transcript and Python example in README.md and docs/ runs against the test-built models
(the contract is in docs_examples.py); a changed output or a removed option fails here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from docs_examples import ExampleFailed, matches, read_blocks, run_page
from hub_cache import HubCache

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])

# The catalog names the pages use, and the tiny models that stand in for them in the offline hub cache.
EMBEDDING_SOURCE = "Qwen/Qwen3-Embedding-0.6B"
RERANKER_SOURCE = "Qwen/Qwen3-Reranker-0.6B"
EMBEDDING_PUBLISHED = ("Qwen/Qwen3-Embedding-0.6B-GGUF", "Qwen3-Embedding-0.6B-Q8_0.gguf")
RERANKER_PUBLISHED = ("ggml-org/Qwen3-Reranker-0.6B-Q8_0-GGUF", "qwen3-reranker-0.6b-q8_0.gguf")

NOTES = {
    "tides.md": "# Tides\n\nTides are caused mainly by the Moon's gravity pulling on the oceans.\n"
                "Spring tides come when the Sun and the Moon line up.\n",
    "bread.txt": "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough.\n"
                 "Bake it hot, with steam for the first twenty minutes.\n",
    "solar.md": "# Solar panels\n\nSolar panels are made of silicon cells that turn sunlight into electricity.\n",
    "garden/tomatoes.md": "# Tomatoes\n\nWater tomatoes deeply twice a week and stake them before they flower.\n",
}


class DocsWorld:
    """What every page's folder starts with, and the environment its examples run in."""

    def __init__(self, root: Path, embedding_gguf: Path, reranker_gguf: Path):
        self.root = root
        self.embedding_gguf = embedding_gguf
        self.reranker_gguf = reranker_gguf
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "HF_HOME": str(root / "hf"),
            "HF_HUB_CACHE": str(root / "hf" / "hub"),
            "HF_HUB_OFFLINE": "1",
            "NO_COLOR": "1",
            "COLUMNS": "120",
        }

    def page_env(self, home: Path) -> dict[str, str]:
        """The environment of one page's examples: its own build cache and data folder (named collections), so no
        page sees another's files, nor the machine's."""
        return {**self.env, "QWEN3_GGUF_BUILD_CACHE": str(home / "builds"), "XDG_DATA_HOME": str(home / "data")}

    def page_folder(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        # Hard links: each page sees its own names, without copying 300 MB of models per page
        # (what the examples write replaces a file, it never writes into one).
        os.link(self.embedding_gguf, folder / "embedding.gguf")
        os.link(self.reranker_gguf, folder / "reranker.gguf")
        for name, text in NOTES.items():
            (folder / "notes" / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / "notes" / name).write_text(text, encoding="utf-8")
        return folder


@pytest.fixture(scope="session")
def docs_world(tmp_path_factory, converted, embedding_ckpt_256, reranker_wide_tied_ckpt) -> DocsWorld:
    root = tmp_path_factory.mktemp("docs-world")
    hub = HubCache(root / "hf" / "hub")
    hub.add_checkpoint(EMBEDDING_SOURCE, embedding_ckpt_256)
    hub.add_checkpoint(RERANKER_SOURCE, reranker_wide_tied_ckpt)
    hub.add(*EMBEDDING_PUBLISHED, converted(embedding_ckpt_256, "q8_0"))
    hub.add(*RERANKER_PUBLISHED, converted(reranker_wide_tied_ckpt, "q8_0"))
    return DocsWorld(root, converted(embedding_ckpt_256, "f32"), converted(reranker_wide_tied_ckpt, "f32"))


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO)) for page in PAGES])
def test_page_examples_run(page: Path, docs_world: DocsWorld, tmp_path: Path):
    try:
        run_page(page, docs_world.page_folder(tmp_path / "page"), docs_world.page_env(tmp_path / "home"))
    except ExampleFailed as failure:
        pytest.fail(str(failure), pytrace=False)


# --- the runner itself: it must be able to fail --------------------------------------------------------


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    (tmp_path / "work").mkdir()
    return page


def test_a_wrong_console_output_fails_naming_page_and_line(tmp_path: Path):
    page = _page(tmp_path, "# Page\n\n```console\n$ echo hello\nhello\n$ echo world\nmars\n```\n")
    with pytest.raises(ExampleFailed) as failure:
        run_page(page, tmp_path / "work", dict(os.environ))
    message = str(failure.value)
    assert message.startswith(f"{page}:6: output differs\necho world\n")
    assert "--- expected ---\nmars\n--- actual ---\nworld\n" in message


def test_a_wrong_python_output_fails_and_blocks_share_a_namespace(tmp_path: Path):
    page = _page(tmp_path, "```python\nx = 41\n```\n\ntext\n\n```python\nprint(x + 1)\n```\n\n```output\n43\n```\n")
    with pytest.raises(ExampleFailed) as failure:
        run_page(page, tmp_path / "work", dict(os.environ))
    assert str(failure.value).startswith(f"{page}:7: output differs\nprint(x + 1)\n")
    assert "--- expected ---\n43\n--- actual ---\n42\n" in str(failure.value)


def test_a_python_example_that_raises_fails(tmp_path: Path):
    page = _page(tmp_path, "```python\nraise ValueError('no such option')\n```\n")
    with pytest.raises(ExampleFailed, match=r"page\.md:1: the example raised(.|\n)*ValueError: no such option"):
        run_page(page, tmp_path / "work", dict(os.environ))


def test_console_and_python_share_the_page_folder_and_no_run_blocks_are_skipped(tmp_path: Path):
    page = _page(tmp_path, "```console\n$ printf 'a\\nb\\nc\\n' > letters.txt\n$ wc -l \\\n  letters.txt\n"
                           "3 letters.txt\n```\n"
                           "<!-- no-run: it would fail -->\n```console\n$ false\nnever\n```\n"
                           "```python\nimport subprocess\nsubprocess.run(['cat', 'letters.txt'])\n"
                           "print(open('letters.txt').read().count('\\n'))\n```\n```output\na\n...\n3\n```\n")
    assert run_page(page, tmp_path / "work", dict(os.environ)) == 3


@pytest.mark.parametrize(("expected", "actual", "ok"), [
    ("a\n...\nd\n", "a\nb\nc\nd\n", True),
    ("a\n...\nd\n", "a\nd\n", True),
    ("took ... s\n", "took 1.25 s\n", True),
    ("took ... s\n", "took 1.25 ms\n", False),
    ("took ... s\n", "took 1\nmore s\n", False),
    ("a\nb\n", "a\nb  \n\n", True),
    ("a\n...\n", "b\nc\n", False),
    ("took ... s\n", "took 1.25 s\nmore\n", False),
    ("(x+1)*[y]\n", "(x+1)*[y]\n", True),
])
def test_wildcards(expected: str, actual: str, ok: bool):
    assert matches(expected, actual) is ok


def test_output_block_pairs_only_with_the_python_block_right_before_it(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(1)\n```\n\n```output\n1\n```\n\n```output\n2\n```\n", encoding="utf-8")
    python, stray = read_blocks(page)
    assert (python.language, python.output.text, stray.language, stray.line) == ("python", "1\n", "output", 9)
