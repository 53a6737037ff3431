"""The documentation's examples, read and run: the contract every page under docs/ and README.md is written to.

- A ```console block: each line starting with `$ ` is a bash command (a line ending in `\\` continues it), run
  in the page's folder; the lines up to the next `$ ` are its expected output (stdout and stderr together).
- A ```python block runs in one namespace per page, in the same folder, in a Python process of the page's own;
  when a ```output block follows it immediately, the block's stdout must match that.
- In expected output a line holding only `...` matches any number of lines, and `...` inside a line any text.
- `<!-- no-run: REASON -->` on the line before a fence: the block is not run.
- `<!-- docs-server: ARGS -->` as a page's first line: `qwen3-gguf serve ARGS` runs on a free loopback port
  while the page's blocks run, and `http://127.0.0.1:8080` in them stands for its address.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from server_harness import ServeProcess

DOCUMENTED_URL = "http://127.0.0.1:8080"
RUN_LANGUAGES = ("console", "python")
COMMAND_TIMEOUT = 600

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<language>[\w+-]*)[^\n]*$")
_NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>\S.*?)\s*-->\s*$")
_SERVER = re.compile(r"^<!--\s*docs-server:\s*(?P<args>.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    no_run: str | None = None
    end: int = 0  # 1-based line of the closing fence
    output: Block | None = None  # the ```output block that follows a ```python block

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Step:
    """One thing to run and what it must print."""

    where: str
    language: str
    code: str
    expected: str | None


class ExampleFailed(AssertionError):
    pass


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, in order, with their no-run marks and ```output partners."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not re.fullmatch(rf"[ \t]*{fence}`*\s*", lines[end]):
            body.append(lines[end][len(indent):] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        if end == len(lines):
            raise ExampleFailed(f"{page}:{index + 1}: the ``` block opened here is never closed")
        previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
        no_run = _NO_RUN.match(previous)
        block = Block(page, index + 1, opening["language"].lower(), "\n".join(body) + "\n",
                      no_run["reason"] if no_run else None, end + 1)
        follows_python = (blocks and blocks[-1].language == "python" and blocks[-1].output is None
                          and not any(text.strip() for text in lines[blocks[-1].end:index]))
        if block.language == "output" and follows_python:
            blocks[-1].output = block
        else:
            blocks.append(block)
        index = end + 1
    return blocks


def server_args(page: Path) -> str | None:
    first = page.read_text(encoding="utf-8").split("\n", 1)[0]
    found = _SERVER.match(first)
    return found["args"] if found else None


def steps(blocks: list[Block], url: str) -> list[Step]:
    """What a page runs: one step per console command and per python block, documented URL replaced by `url`."""
    found: list[Step] = []
    for block in blocks:
        if block.no_run is not None or block.language not in RUN_LANGUAGES:
            continue
        text = block.text.replace(DOCUMENTED_URL, url)
        if block.language == "python":
            expected = block.output.text.replace(DOCUMENTED_URL, url) if block.output else None
            found.append(Step(block.where, "python", text, expected))
            continue
        found.extend(_console_steps(block, text))
    return found


def _console_steps(block: Block, text: str) -> list[Step]:
    found: list[Step] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if not lines[index].startswith("$ "):
            raise ExampleFailed(f"{block.page}:{block.line + 1 + index}: console output without a `$ ` command "
                                f"before it: {lines[index]!r}")
        start = index
        command = [lines[index][2:]]
        while command[-1].endswith("\\") and index + 1 < len(lines):
            index += 1
            command.append(lines[index])
        index += 1
        output_start = index
        while index < len(lines) and not lines[index].startswith("$ "):
            index += 1
        expected = "".join(line + "\n" for line in lines[output_start:index])
        found.append(Step(f"{block.page}:{block.line + 1 + start}", "console", "\n".join(command), expected))
    return found


def matches(expected: str, actual: str) -> bool:
    """`...` alone on a line: any number of lines; `...` inside a line: any text. Trailing spaces and blank
    lines at the end do not count."""
    pattern = []
    for line in _normalized(expected).splitlines():
        if line.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(r"[^\n]*?".join(re.escape(part) for part in line.split("...")) + r"\n")
    return re.fullmatch("".join(pattern), _normalized(actual)) is not None


def _normalized(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "".join(line + "\n" for line in lines)


# The page's Python process: reads one JSON request per line, runs the code in one namespace with file
# descriptor 1 pointed at a temporary file (so child processes' output counts too), answers on a private fd.
_WORKER = r"""
import json, os, sys, tempfile, traceback
answers = os.fdopen(os.dup(1), "w")
namespace = {"__name__": "__main__"}
for request in sys.stdin:
    request = json.loads(request)
    with tempfile.TemporaryFile() as captured:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        error = None
        try:
            exec(compile(request["code"], request["where"], "exec"), namespace)
        except BaseException:
            error = traceback.format_exc()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        output = captured.read().decode("utf-8", "replace")
    answers.write(json.dumps({"output": output, "error": error}) + "\n")
    answers.flush()
"""


class PythonSession:
    """One Python process per page, so its examples share a namespace but not the test process's state."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty library cannot fill it
        self._process = subprocess.Popen([sys.executable, "-c", _WORKER], cwd=folder, env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    def run(self, step: Step) -> tuple[str, str | None]:
        self._process.stdin.write(json.dumps({"code": step.code, "where": step.where}) + "\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline()
        if not answer:
            self._process.wait(COMMAND_TIMEOUT)
            self._stderr.seek(0)
            raise ExampleFailed(f"{step.where}: the page's Python process died:\n{self._stderr.read()}")
        answer = json.loads(answer)
        return answer["output"], answer["error"]

    def close(self) -> None:
        self._process.stdin.close()
        try:
            self._process.wait(COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()
        self._stderr.close()


def run_page(page: Path, folder: Path, env: dict[str, str]) -> int:
    """Run every example of `page` in `folder`; raise ExampleFailed naming page and line on the first
    mismatch. Returns how many steps ran."""
    blocks = read_blocks(page)
    args = server_args(page)
    if args is None:
        return _run_steps(steps(blocks, DOCUMENTED_URL), folder, env)
    with ServeProcess(*shlex.split(args), env=env, cwd=folder) as server:
        return _run_steps(steps(blocks, server.url), folder, env)


def _run_steps(page_steps: list[Step], folder: Path, env: dict[str, str]) -> int:
    python: PythonSession | None = None
    try:
        for step in page_steps:
            if step.language == "console":
                done = subprocess.run(["bash", "-c", step.code], cwd=folder, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT)
                actual, error = done.stdout, None
            else:
                python = python or PythonSession(folder, env)
                actual, error = python.run(step)
            if error is not None:
                raise ExampleFailed(f"{step.where}: the example raised\n{step.code}\n--- output ---\n{actual}"
                                    f"--- error ---\n{error}")
            if step.expected is not None and not matches(step.expected, actual):
                raise ExampleFailed(f"{step.where}: output differs\n{step.code}\n--- expected ---\n{step.expected}"
                                    f"--- actual ---\n{actual}")
    finally:
        if python is not None:
            python.close()
    return len(page_steps)
