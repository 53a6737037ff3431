"""Build eval.jsonl, the default retrieval evaluation set of `qwen3-gguf sweep`.

    python quantize/eval/build.py

The sweep ranks every document for every query with a reference model and with each
quantized model, and compares the rankings. This script assembles what it ranks, from text
on this machine only (see README.md for provenance and licences):

- handwritten.jsonl: search queries with short passages that answer them, written for this
  project in eleven languages;
- stdlib_queries.jsonl: hand-written queries, each answered by the docstring ("doc") or the
  source code ("source") of one Python standard-library object, taken from the running
  interpreter;
- distractors: more standard-library docstrings, chosen by a fixed rule from DISTRACTOR_MODULES,
  stored without a query, so that every query is ranked against a few hundred documents.

Output: one JSON object per line with "query" (absent for distractors), "document", "lang" and
"source". Records are interleaved by kind and language so that any prefix of the file mixes
them. The output is deterministic for a given Python version.

The build stops with an error (BuildError) when:
- a query or a document of this set is also in ../calibration/calibration.jsonl, or one of
  them contains the other (compared with whitespace collapsed), or a query equals a
  calibration query ignoring case;
- a standard-library object used here is also a source of calibration.jsonl (in either part),
  or is a method of a class whose source code is there;
- a query is repeated, a document is repeated, or a stdlib_queries.jsonl object cannot be
  resolved or has no source code;
- a text is outside its length bounds (LENGTHS), or a record has an unknown key, part or
  language.
"""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import random
import re
import sys
import textwrap
import warnings
from pathlib import Path

HERE = Path(__file__).parent
OUTPUT = HERE / "eval.jsonl"
CALIBRATION = HERE.parent / "calibration" / "calibration.jsonl"
PYTHON = f"python-{platform.python_version()}"

LANGS = ("en", "zh", "de", "es", "ar", "hi", "ja", "ru", "fr", "ko", "pt")
LENGTHS = {  # (min, max) characters
    "query": (3, 100),
    "handwritten document": (100, 1_000),
    "stdlib document": (200, 3_000),
}
DISTRACTORS = 120           # standard-library docstrings added as documents without a query
PER_MODULE = 3              # at most this many distractors from one module
MIN_DOCUMENTS = 350
DISTRACTOR_MODULES = (
    "getopt", "hmac", "tokenize", "dis", "pkgutil", "platform", "traceback", "warnings",
    "linecache", "shelve", "dbm", "compileall", "py_compile", "pyclbr", "types", "queue",
    "socketserver", "http.server", "http.client", "http.cookiejar", "http.cookies",
    "urllib.request", "urllib.robotparser", "urllib.error", "email.message", "email.header",
    "email.parser", "email.policy", "email.charset", "email.mime.text", "json.encoder",
    "json.decoder", "xml.dom.minidom", "xml.sax.saxutils", "html.parser", "quopri", "tarfile",
    "zipfile", "bz2", "lzma", "mimetypes", "uuid", "ipaddress", "concurrent.futures", "asyncio",
    "unittest.mock", "smtplib", "ftplib", "poplib", "imaplib", "xml.etree.ElementTree", "cmd",
    "code", "locale", "gettext", "optparse", "selectors", "mailbox", "pstats", "tracemalloc",
    "pdb", "bdb", "zipimport", "runpy", "sysconfig", "modulefinder", "pickletools", "symtable",
    "calendar", "fractions", "reprlib",
)


class BuildError(Exception):
    """The evaluation set is inconsistent; the message says which record and why."""


def main() -> None:
    calibration = _Calibration(CALIBRATION)
    seen = _Seen()

    handwritten = []
    for number, record in enumerate(_jsonl(HERE / "handwritten.jsonl"), 1):
        where = f"handwritten.jsonl:{number}"
        _keys(record, {"lang", "query", "document"}, where)
        _lang(record["lang"], where)
        query, document = record["query"].strip(), record["document"].strip()
        _bounds(query, "query", where)
        _bounds(document, "handwritten document", where)
        seen.query(query, where)
        seen.document(document, where)
        handwritten.append({"query": query, "document": document, "lang": record["lang"],
                            "source": "handwritten"})

    stdlib = []
    for number, record in enumerate(_jsonl(HERE / "stdlib_queries.jsonl"), 1):
        where = f"stdlib_queries.jsonl:{number} ({record.get('object')})"
        _keys(record, {"object", "part", "lang", "query"}, where)
        _lang(record["lang"], where)
        if record["part"] not in ("doc", "source"):
            raise BuildError(f"{where}: part must be 'doc' or 'source', not {record['part']!r}")
        obj = _resolve(record["object"], where)
        document = _text(obj, record["part"], where)
        query = record["query"].strip()
        _bounds(query, "query", where)
        _bounds(document, "stdlib document", where)
        seen.query(query, where)
        seen.document(document, where)
        seen.object(obj, record["object"], where)
        part = "docstring" if record["part"] == "doc" else "source"
        stdlib.append({"query": query, "document": document, "lang": record["lang"],
                       "source": f"{PYTHON}:{record['object']} ({part})", "_object": obj})

    distractors = []
    per_module: dict[str, int] = {}
    for module_name, name, obj in _candidates():
        if len(distractors) >= DISTRACTORS:
            break
        if per_module.get(module_name, 0) >= PER_MODULE:
            continue
        document = _own_doc(obj)
        low, high = LENGTHS["stdlib document"]
        if not low <= len(document) <= high or calibration.uses(obj) or seen.has_object(obj) \
                or seen.has_document(document) or calibration.overlapping_document(document):
            continue
        dotted = module_name if name is None else f"{module_name}.{name}"
        seen.document(document, dotted)
        seen.object(obj, dotted, dotted)
        per_module[module_name] = per_module.get(module_name, 0) + 1
        distractors.append({"document": document, "lang": "en",
                            "source": f"{PYTHON}:{dotted} (docstring)", "_object": obj})
    if len(distractors) < DISTRACTORS:
        raise BuildError(f"only {len(distractors)} distractors found in DISTRACTOR_MODULES, "
                         f"{DISTRACTORS} wanted")

    records = handwritten + stdlib + distractors
    calibration.check(records)
    if len(records) < MIN_DOCUMENTS:
        raise BuildError(f"{len(records)} documents, at least {MIN_DOCUMENTS} wanted")

    groups: dict[tuple[str, str, str], list[dict]] = {}  # (kind, query or not, lang)
    for record in records:
        kind = "handwritten" if record["source"] == "handwritten" else record["source"].rsplit(" ", 1)[1]
        groups.setdefault((kind, "query" if "query" in record else "", record["lang"]), []).append(record)
    ordered = _interleave([groups[key] for key in sorted(groups)], random.Random(20240917))
    with OUTPUT.open("w", encoding="utf-8", newline="\n") as f:
        for record in ordered:
            record = {key: value for key, value in record.items() if not key.startswith("_")}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{OUTPUT.name}: {len(ordered)} documents, {len(handwritten) + len(stdlib)} with a query "
          f"({len(handwritten)} handwritten, {len(stdlib)} standard library), {len(distractors)} "
          f"distractors; {OUTPUT.stat().st_size:,} bytes; disjoint from {CALIBRATION.name} "
          f"({len(calibration.documents)} documents, {len(calibration.queries)} queries, "
          f"{len(calibration.objects)} objects checked)")


class _Calibration:
    """What calibration.jsonl contains: its queries, its documents, its standard-library objects."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise BuildError(f"{path} not found: the disjointness check needs the calibration set")
        records = _jsonl(path)
        self.queries = {_fold(r["query"]) for r in records if "query" in r}
        self.documents = [_collapse(r["document"]) for r in records]
        self.document_set = set(self.documents)
        self.objects: dict[object, str] = {}
        self.sources: set = set()  # objects whose source code is in the calibration set
        for record in records:
            match = re.fullmatch(r"python-[^:]+:(\S+) \((docstring|source)\)", record["source"])
            if match:  # the CJK samples of Lib/test are files, not objects; their text is checked
                name = match[1].removesuffix(".__doc__")
                key = _identity(_resolve(name, f"{path.name}: {record['source']}"))
                self.objects[key] = name
                if match[2] == "source":
                    self.sources.add(key)

    def uses(self, obj) -> bool:
        """Whether the calibration set uses this object, or the source of a class enclosing it
        (a class's source contains its methods)."""
        return self.used_as(obj) is not None

    def used_as(self, obj) -> str | None:
        if _identity(obj) in self.objects:
            return self.objects[_identity(obj)]
        for owner in _owners(obj):
            if _identity(owner) in self.sources:
                return f"{self.objects[_identity(owner)]} (source)"
        return None

    def overlapping_document(self, document: str) -> str | None:
        """The calibration document equal to this one, containing it, or contained in it."""
        text = _collapse(document)
        if text in self.document_set:
            return text
        return next((other for other in self.documents if text in other or other in text), None)

    def check(self, records: list[dict]) -> None:
        for record in records:
            where = f"{record['source']} ({record['document'][:60]!r}...)"
            if "_object" in record and self.uses(record["_object"]):
                raise BuildError(f"{where}: object is also a source of {CALIBRATION.name} "
                                 f"({self.used_as(record['_object'])})")
            if "query" in record and _fold(record["query"]) in self.queries:
                raise BuildError(f"{where}: query {record['query']!r} is also in {CALIBRATION.name}")
            other = self.overlapping_document(record["document"])
            if other is not None:
                raise BuildError(f"{where}: document overlaps a {CALIBRATION.name} document "
                                 f"({other[:60]!r}...)")


class _Seen:
    """Queries, documents and objects already in the set, to refuse repeats."""

    def __init__(self):
        self.queries: dict[str, str] = {}
        self.documents: dict[str, str] = {}
        self.objects: dict[object, str] = {}

    def query(self, query: str, where: str) -> None:
        key = _fold(query)
        if key in self.queries:
            raise BuildError(f"{where}: query {query!r} repeats {self.queries[key]}")
        self.queries[key] = where

    def document(self, document: str, where: str) -> None:
        key = _collapse(document)
        if key in self.documents:
            raise BuildError(f"{where}: document repeats {self.documents[key]}")
        self.documents[key] = where

    def has_document(self, document: str) -> bool:
        return _collapse(document) in self.documents

    def object(self, obj, name: str, where: str) -> None:
        key = _identity(obj)
        if key in self.objects:
            raise BuildError(f"{where}: {name} is already used by {self.objects[key]}")
        self.objects[key] = where

    def has_object(self, obj) -> bool:
        return _identity(obj) in self.objects


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _keys(record: dict, expected: set[str], where: str) -> None:
    if set(record) != expected:
        raise BuildError(f"{where}: keys {sorted(record)}, expected {sorted(expected)}")


def _lang(lang: str, where: str) -> None:
    if lang not in LANGS:
        raise BuildError(f"{where}: unknown lang {lang!r} (one of {', '.join(LANGS)})")


def _bounds(text: str, kind: str, where: str) -> None:
    low, high = LENGTHS[kind]
    if not low <= len(text) <= high:
        raise BuildError(f"{where}: {kind} has {len(text)} characters, outside {low}..{high}: {text[:60]!r}")


def _resolve(dotted: str, where: str):
    """An object by its dotted name, e.g. "email.message.Message.get_param" or "getopt"."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            with warnings.catch_warnings():  # deprecated modules still import in 3.11
                warnings.simplefilter("ignore", DeprecationWarning)
                obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                obj = getattr(obj, attribute)
        except AttributeError as error:
            raise BuildError(f"{where}: cannot resolve {dotted}: {error}") from None
        return obj
    raise BuildError(f"{where}: cannot resolve {dotted}: no such module")


def _text(obj, part: str, where: str) -> str:
    """The object's own docstring or its dedented source code."""
    if part == "doc":
        return _own_doc(obj)
    try:
        return textwrap.dedent(inspect.getsource(obj)).strip()
    except (OSError, TypeError) as error:  # written in C, or a frozen module
        raise BuildError(f"{where}: no source code: {error}") from None


def _own_doc(obj) -> str:
    """The object's own docstring, cleaned like inspect.getdoc; "" when it has none of its own
    (inspect.getdoc would fall back to a base class's docstring, shared by many objects)."""
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc).strip() if isinstance(doc, str) else ""


def _owners(obj):
    """The classes a function or class is defined in, innermost first (from its __qualname__)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    names = (getattr(obj, "__qualname__", None) or "").split(".")[:-1]
    owner, found = module, []
    for name in names:
        owner = getattr(owner, name, None)
        if not inspect.isclass(owner):
            break
        found.append(owner)
    return found[::-1]


def _identity(obj):
    """A key that is the same for every lookup of one object (bound methods are new each time)."""
    function = getattr(obj, "__func__", None)
    if function is not None:
        return id(function)
    owner = getattr(obj, "__self__", None)
    if inspect.isbuiltin(obj) and owner is not None and not inspect.ismodule(owner):
        return (id(owner), obj.__name__)
    return id(obj)


def _candidates():
    """(module, name or None, object): each distractor module, then its public classes and
    functions, each class followed by its methods, in name order."""
    for module_name in DISTRACTOR_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module(module_name)
        except ImportError:  # a module missing from this build of Python
            continue
        yield module_name, None, module
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield module_name, name, obj
            elif inspect.isclass(obj):
                yield module_name, name, obj
                for attribute, member in sorted(vars(obj).items()):
                    if not attribute.startswith("_") and inspect.isfunction(member):
                        yield module_name, f"{name}.{attribute}", member


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _fold(text: str) -> str:
    return _collapse(text).casefold()


def _interleave(groups: list[list[dict]], rng: random.Random) -> list[dict]:
    """Shuffle each group, then merge them so that each keeps its share all along the file;
    a random phase per group keeps groups of equal size from lining up."""
    keyed = []
    for group in groups:
        rng.shuffle(group)
        phase = rng.random()
        keyed += [((i + phase) / len(group), record) for i, record in enumerate(group)]
    return [record for _, record in sorted(keyed, key=lambda item: item[0])]


if __name__ == "__main__":
    main()
