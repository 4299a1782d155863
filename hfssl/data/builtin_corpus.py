"""The built-in default corpus: docstrings of Python's standard library.

Every machine that runs hfssl has it, it is real English prose (a few MB), and building it needs no
network and no imports of the modules themselves: sources are parsed with :mod:`ast`, so nothing is
executed. One document per module (its docstring plus its functions') and one per class (its docstring
plus its methods'). The result is written once, atomically, to
``$HFSSL_CACHE`` (default ``~/.cache/hfssl``) as JSONL and reused; its content depends only on the
Python version, which is part of the file name.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

# Tests, demos and vendored code add little prose and a lot of noise.
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "lib2to3",
    "turtledemo",
}
_MIN_DOC_CHARS = 200
_FORMAT_VERSION = 1


def cache_dir() -> Path:
    """Where hfssl caches derived data (``$HFSSL_CACHE``, else ``$XDG_CACHE_HOME/hfssl``, else ``~/.cache/hfssl``)."""
    if os.environ.get("HFSSL_CACHE"):
        return Path(os.environ["HFSSL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hfssl"


def _stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                found.append(Path(dirpath) / name)
    return sorted(found)


def _docstrings(node: ast.AST) -> Iterator[str]:
    doc = ast.get_docstring(node, clean=True)
    if doc:
        yield doc
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(child, clean=True)
            if doc:
                yield doc


def _documents_of(path: Path, root: Path) -> Iterator[str]:
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    module_doc = "\n\n".join(_docstrings(tree))
    if len(module_doc) >= _MIN_DOC_CHARS:
        yield module_doc
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            class_doc = "\n\n".join(_docstrings(node))
            if len(class_doc) >= _MIN_DOC_CHARS:
                yield class_doc


def build_builtin_corpus(path: Path) -> None:
    """Write the corpus to ``path`` (JSONL, ``{"text": ...}`` per line) atomically."""
    root = Path(sysconfig.get_paths()["stdlib"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for source in _stdlib_sources():
                for doc in _documents_of(source, root):
                    fh.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        # rename is atomic: concurrent builders (parallel test processes) never see a partial file.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_builtin_corpus() -> list[str]:
    """Paths of the built-in corpus files, building them on first use."""
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    path = cache_dir() / f"stdlib-docstrings-{version}-v{_FORMAT_VERSION}.jsonl"
    if not path.is_file():
        build_builtin_corpus(path)
    return [str(path)]
