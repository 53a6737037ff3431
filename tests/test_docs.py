"""Every console transcript and Python example in README.md and docs/ runs against the test-built models
(the contract is in docs_examples.py); a changed output or a removed option fails here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from docs_examples import ExampleFailed, matches, read_blocks, run_page

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
