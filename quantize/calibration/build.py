"""Build calibration.jsonl, the default imatrix calibration set, from text on this machine.

    python quantize/calibration/build.py

Sources (see README.md for provenance and licences):
- handwritten.jsonl: queries with passages that answer them, written for this project in
  eleven languages;
- stdlib_queries.jsonl: hand-written queries, each paired with the docstring or the source of
  the Python standard-library object it asks about;
- more standard-library docstrings (English prose) and function sources (code), and the
  Chinese/Japanese/Korean sample texts of CPython's codec tests, as documents without a query.

Output: one JSON object per line with "document", optionally "query", plus "lang" and
"source". Records are interleaved so that any prefix of the file mixes every kind of text in
proportion (imatrix --chunks N reads a prefix). Deterministic for a given Python version.
"""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import random
import sysconfig
from pathlib import Path

HERE = Path(__file__).parent
OUTPUT = HERE / "calibration.jsonl"

PROSE_BUDGET = 150_000      # bytes of standard-library docstrings used as plain documents
CODE_BUDGET = 100_000       # bytes of standard-library source code
MIN_TEXT, MAX_TEXT = 200, 2_500
MODULES = """
textwrap json csv pathlib collections itertools functools datetime decimal fractions statistics
random re string difflib heapq bisect argparse logging shutil tempfile zipfile gzip hashlib
secrets sqlite3 urllib.parse email.utils socket threading queue subprocess asyncio contextlib
dataclasses enum typing inspect ast pickle copy pprint calendar os.path io glob fnmatch base64
struct weakref math operator timeit doctest configparser tomllib plistlib html mimetypes uuid
ipaddress colorsys zoneinfo graphlib sched shlex filecmp tarfile lzma bz2 zlib unittest
unittest.mock fileinput gettext locale numbers abc selectors smtplib http.client http.cookies
wave xml.etree.ElementTree netrc optparse trace pdb cmd code codecs
""".split()
CJK_SAMPLES = {  # CPython test data: Lib/test/cjkencodings/*-utf8.txt
    "gb2312-utf8.txt": "zh", "gbk-utf8.txt": "zh", "big5-utf8.txt": "zh",
    "euc_jp-utf8.txt": "ja", "euc_jisx0213-utf8.txt": "ja", "euc_kr-utf8.txt": "ko",
}
PYTHON = f"python-{platform.python_version()}"


def main() -> None:
    pairs = [dict(record, source="handwritten") for record in _jsonl(HERE / "handwritten.jsonl")]
    used: set[str] = set()
    for query in _jsonl(HERE / "stdlib_queries.jsonl"):
        part, text = _text_of(_resolve(query["object"]), query["part"])
        used.add(text)
        pairs.append({"query": query["query"], "document": text, "lang": query["lang"],
                      "source": f"{PYTHON}:{query['object']} ({part})"})

    prose, code = [], []
    for module_name, name, obj in _public_objects():
        doc = _clip(inspect.getdoc(obj) or "")
        if len(doc) >= MIN_TEXT and doc not in used and _size(prose) < PROSE_BUDGET:
            used.add(doc)
            prose.append({"document": doc, "lang": "en", "source": f"{PYTHON}:{module_name}.{name} (docstring)"})
        if inspect.isfunction(obj) and _size(code) < CODE_BUDGET:
            source = inspect.getsource(obj)
            if MIN_TEXT <= len(source) <= MAX_TEXT and source not in used:
                used.add(source)
                code.append({"document": source, "lang": "python",
                             "source": f"{PYTHON}:{module_name}.{name} (source)"})

    samples_dir = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
    samples = [{"document": (samples_dir / file).read_text(encoding="utf-8").strip(), "lang": lang,
                "source": f"{PYTHON}:Lib/test/cjkencodings/{file}"}
               for file, lang in CJK_SAMPLES.items() if (samples_dir / file).is_file()]

    records = _interleave([pairs, prose, code, samples], random.Random(20240601))
    with OUTPUT.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{OUTPUT.name}: {len(records)} records ({len(pairs)} query/document pairs, {len(prose)} docstrings, "
          f"{len(code)} functions, {len(samples)} CJK samples), {OUTPUT.stat().st_size:,} bytes")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _resolve(dotted: str):
    """An object by its dotted name, e.g. "pathlib.Path.glob" or "urllib.parse.quote"."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def _public_objects():
    """(module, name, object) for the public classes and functions each module defines."""
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        yield module_name, "__doc__", module
        for name, obj in sorted(vars(module).items()):
            if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__ \
                    and (inspect.isclass(obj) or inspect.isfunction(obj)):
                yield module_name, name, obj


def _clip(text: str) -> str:
    """At most MAX_TEXT characters, cut at a paragraph (or line) boundary."""
    text = text.strip()
    if len(text) <= MAX_TEXT:
        return text
    cut = text.rfind("\n\n", 0, MAX_TEXT)
    if cut < MIN_TEXT:
        cut = text.rfind("\n", 0, MAX_TEXT)
    return text[:cut if cut >= MIN_TEXT else MAX_TEXT].rstrip()


def _text_of(obj, part: str) -> tuple[str, str]:
    """("docstring" | "source", text): the source when asked for, or when the docstring is
    missing or short and the object is written in Python."""
    doc = inspect.getdoc(obj) or ""
    if part == "source" or len(doc) < MIN_TEXT:
        try:
            return "source", _clip(inspect.getsource(obj))
        except (OSError, TypeError):  # implemented in C
            pass
    return "docstring", _clip(doc)


def _size(records: list[dict]) -> int:
    return sum(len(r["document"].encode("utf-8")) for r in records)


def _interleave(groups: list[list[dict]], rng: random.Random) -> list[dict]:
    """Shuffle each group, then merge them so each keeps its share all along the file."""
    keyed = []
    for group in groups:
        rng.shuffle(group)
        keyed += [((i + 0.5) / len(group), record) for i, record in enumerate(group)]
    return [record for _, record in sorted(keyed, key=lambda item: item[0])]


if __name__ == "__main__":
    main()
