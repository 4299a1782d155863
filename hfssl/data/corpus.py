"""Streaming document corpora: local files, Hub datasets and the built-in default corpus.

Every reader yields ``{"text": str}``, one *document* per example, as a ``datasets.IterableDataset``
so nothing is ever held in memory beyond one file (plain ``.txt``) or one record.

What counts as a document:

* ``.txt`` or no suffix (optionally ``.gz``): the whole file, unless it holds WikiExtractor
  ``<doc ...>`` blocks (``wiki_00``), in which case each block is one document. The file is read whole.
* ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` (optionally ``.gz`` for the text formats): one row.
* a Hub dataset: one row of ``text_column``.

Validation hold-out (recipes; :func:`load_documents_from_args`): ``--validation_split_percentage P`` cuts
documents into passages of about 2,000 characters at paragraph breaks and holds out P% of them, evenly
spread; the training side keeps the text between them. So one big file, or a few books, gives both a
training and a validation stream; ``--validation_split_documents N`` holds out the first N whole documents.

Cleaning applied to every document: CRLF/CR -> LF, Project Gutenberg licence header/footer stripped
(``strip_gutenberg``), documents shorter than ``min_document_chars`` (after stripping whitespace) dropped.
Bad input raises :class:`hfssl.errors.DataError` naming the file (and line or byte offset): paths and
globs are checked eagerly, record-level problems on the first bad record while iterating.
"""

from __future__ import annotations

import csv
import functools
import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import datasets

from hfssl.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from hfssl.config import DataArguments

# Extension-less files are plain text too: WikiExtractor writes wiki_00, wiki_01, ...
TEXT_SUFFIXES = (".txt", ".text", "")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet",)
_ALL_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES
_SUFFIX_LIST = "/".join(s for s in _ALL_SUFFIXES if s) + " (optionally .gz) or no suffix for plain text"

_FEATURES = datasets.Features({"text": datasets.Value("string")})

# Gutenberg markers vary across eras: "*** START OF THIS PROJECT GUTENBERG EBOOK X ***",
# "*** START OF THE PROJECT GUTENBERG EBOOK X ***", "***START OF THE PROJECT GUTENBERG ETEXT ...".
_GUTENBERG_START = re.compile(
    r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|TEXT)[^\n]*$", re.I | re.M
)
# Releases before ~2000 have no START marker: the licence ("the small print") ends with this line instead.
_GUTENBERG_SMALL_PRINT_END = re.compile(r"^\*END\*?\s*THE SMALL PRINT!.*$", re.I | re.M)
# Where a book's text ends at the latest: its END marker, the line just before it ("End of the Project
# Gutenberg EBook of X, by Y", the last line of all in old releases), or the next book's licence or START
# marker when several books were concatenated into one file.
_GUTENBERG_BOOK_END = re.compile(
    r"^(?:\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|TEXT)|\s*End of (?:the |this )?Project Gutenberg"
    r"|\*+\s*START\*+\s*THE SMALL PRINT|\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|TEXT))",
    re.I | re.M,
)
# A credit paragraph right after the START marker.
_GUTENBERG_CREDIT = re.compile(r"\A\s*(?:Produced|Prepared|Transcribed|E-text prepared) by\b.*?(?:\n\s*\n|\Z)",
                               re.I | re.S)
_WIKI_DOC_OPEN = re.compile(r"^<doc [^>]*>\s*$", re.M)


# --------------------------------------------------------------------------------------------- cleaning
def normalize_newlines(text: str) -> str:
    """CRLF and lone CR become LF (Gutenberg books use CRLF)."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg_boilerplate(text: str) -> str:
    """Keep only the book(s) of a Project Gutenberg file (text without Gutenberg markers is kept as it is).

    Each book is what follows a START marker (for releases before ~2000: the end of "the small print"), up
    to its END marker or closing "End of the Project Gutenberg EBook of ..." line, without the producer
    credit that opens it. A file of several concatenated books keeps all of them, blank-line separated.
    A file whose markers frame no text at all is kept whole.
    """
    starts = sorted([*_GUTENBERG_START.finditer(text), *_GUTENBERG_SMALL_PRINT_END.finditer(text)],
                    key=lambda m: m.start())
    if not starts:
        return text
    books = []
    for start in starts:
        end = _GUTENBERG_BOOK_END.search(text, start.end())
        body = text[start.end() : end.start() if end else len(text)]
        credit = _GUTENBERG_CREDIT.match(body)
        if credit and credit.end() < 1000:
            body = body[credit.end() :]
        if body.strip():
            books.append(body.strip())
    # Markers that leave nothing (a README quoting the licence at its end) did not frame a book: keep it all.
    return "\n\n\n".join(books) if books else text


def clean_document(text: str, *, strip_gutenberg: bool = True) -> str:
    """Newline normalisation, optional Gutenberg stripping and outer whitespace trimming."""
    text = normalize_newlines(text)
    if strip_gutenberg:
        text = strip_gutenberg_boilerplate(text)
    return text.strip()


# --------------------------------------------------------------------------------------------- file readers
def _base_suffix(path: str) -> str:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _decode(
    data: bytes, path: str, encoding_errors: str, base_offset: int = 0, line: int | None = None
) -> str:
    try:
        return data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        where = f"line {line}, " if line is not None else ""
        raise DataError(
            f"{path} is not valid UTF-8 ({where}byte offset {base_offset + exc.start}): convert it to UTF-8 "
            "or pass --encoding_errors replace"
        ) from None


def _read_txt(path: str, encoding_errors: str) -> Iterator[str]:
    try:
        with _open_binary(path) as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    # A UTF-8 BOM is not part of the text.
    text = _decode(raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw, path, encoding_errors)
    text = normalize_newlines(text)
    if _WIKI_DOC_OPEN.search(text) is None:
        yield text
        return
    # WikiExtractor output: <doc id=.. title=..>\nTitle\n\nbody\n</doc>; the title line is kept as a heading.
    for match in re.finditer(r"^<doc [^>]*>\n(.*?)^</doc>\s*$", text, re.S | re.M):
        yield match.group(1)


def _read_jsonl(path: str, text_column: str, encoding_errors: str) -> Iterator[str]:
    try:
        fh = _open_binary(path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    with fh:
        head = fh.peek(64)[:64].lstrip() if hasattr(fh, "peek") else b""
        if head.startswith(b"["):
            # A .json file holding one array of records.
            data = _decode(fh.read(), path, encoding_errors)
            try:
                records = json.loads(data)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
            for i, record in enumerate(records):
                yield _text_field(record, text_column, path, f"record {i}")
            return
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, path, encoding_errors, base_offset=offset, line=lineno)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {lineno} is not valid JSON ({exc.msg}): one JSON object per line"
                ) from None
            yield _text_field(record, text_column, path, f"line {lineno}")


def _text_field(record: object, text_column: str, path: str, where: str) -> str:
    if not isinstance(record, dict) or text_column not in record:
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise DataError(
            f"{path} {where} has no {text_column!r} field (found: {keys}); pass --text_column with the right name"
        )
    value = record[text_column]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path} {where}: field {text_column!r} is {type(value).__name__}, expected a string")
    return value


def _read_csv(path: str, text_column: str, encoding_errors: str) -> Iterator[str]:
    delimiter = "\t" if _base_suffix(path) == ".tsv" else ","
    try:
        raw = _open_binary(path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    # utf-8-sig drops a BOM; decoding errors surface while reading, reported with the row number.
    with io.TextIOWrapper(raw, encoding="utf-8-sig", errors=encoding_errors, newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            if reader.fieldnames is None:
                return
            if text_column not in reader.fieldnames:
                raise DataError(
                    f"{path} has no column {text_column!r} (columns: {', '.join(reader.fieldnames)}); "
                    "pass --text_column"
                )
            for record in reader:
                yield record[text_column] or ""
        except UnicodeDecodeError:
            # reader.line_num: physical lines read so far (the decoder fails a little ahead of the csv parser).
            raise DataError(
                f"{path} is not valid UTF-8 (near line {reader.line_num + 1}): convert it or pass "
                "--encoding_errors replace"
            ) from None
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num} is not valid CSV: {exc}") from None


def _read_parquet(path: str, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read {path} as parquet: {exc}") from None
    if text_column not in pf.schema_arrow.names:
        raise DataError(
            f"{path} has no column {text_column!r} (columns: {', '.join(pf.schema_arrow.names)}); pass --text_column"
        )
    for batch in pf.iter_batches(batch_size=1024, columns=[text_column]):
        for value in batch.column(0).to_pylist():
            yield value or ""


def read_file_documents(
    path: str, *, text_column: str = "text", encoding_errors: str = "strict"
) -> Iterator[str]:
    """Raw (uncleaned) documents of one local file, chosen by its suffix."""
    suffix = _base_suffix(path)
    if suffix in TEXT_SUFFIXES:
        return _read_txt(path, encoding_errors)
    if suffix in JSON_SUFFIXES:
        return _read_jsonl(path, text_column, encoding_errors)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, text_column, encoding_errors)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, text_column)
    raise DataError(_unsupported(path))


_ARCHIVE_SUFFIXES = (".tar", ".tgz", ".zip", ".7z", ".rar", ".tar.bz2", ".tar.xz", ".bz2", ".xz", ".zst")


def _unsupported(path: str) -> str:
    if path.lower().endswith(_ARCHIVE_SUFFIXES + (".tar.gz",)):
        return (f"{path} is an archive: extract it first (e.g. tar -xzf / unzip) and pass the extracted files or "
                "their folder to --train_file")
    return f"{path}: unsupported file type {_base_suffix(path) or '(none)'}; use {_SUFFIX_LIST}"


def expand_files(patterns: list[str] | str, flag: str = "--train_file") -> list[str]:
    """Expand files/globs/directories into a sorted, de-duplicated list; raise if anything matches nothing.

    ``flag`` is the option the patterns came from, for the error messages."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise DataError(f"no files given: pass {flag} with one or more files or globs")
    files: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern) or glob.has_magic(pattern):
            # Directories and globs pick the readable files among what they match (a README.md or
            # .DS_Store beside the data is not an error); an explicit file of another type is.
            if os.path.isdir(pattern):
                candidates = [
                    os.path.join(root, name) for root, _, names in os.walk(pattern) for name in names
                ]
            else:
                candidates = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
            matches = sorted(
                p
                for p in candidates
                if not os.path.basename(p).startswith(".") and _base_suffix(p) in _ALL_SUFFIXES
            )
            if not matches:
                archives = [p for p in candidates if p.lower().endswith(_ARCHIVE_SUFFIXES + (".tar.gz",))]
                hint = f" (it holds archives such as {archives[0]}: extract them first)" if archives else ""
                raise DataError(f"{flag} {pattern!r} matches no {_SUFFIX_LIST} files{hint}")
        elif os.path.isfile(pattern):
            if _base_suffix(pattern) not in _ALL_SUFFIXES:
                raise DataError(_unsupported(pattern))
            matches = [pattern]
        else:
            raise DataError(f"{flag} {pattern} does not exist")
        for path in matches:
            if path not in files:
                files.append(path)
    return files


def _check_readable(path: str) -> None:
    """Cheap eager check: the file opens and (for .gz) really is gzip."""
    try:
        with _open_binary(path) as fh:
            fh.read(1)
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


# --------------------------------------------------------------------------------------------- generators
def _file_documents_gen(
    files: tuple[str, ...],
    text_column: str,
    encoding_errors: str,
    min_document_chars: int,
    strip_gutenberg: bool,
) -> Iterator[dict[str, str]]:
    kept = 0
    for path in files:
        for raw in read_file_documents(path, text_column=text_column, encoding_errors=encoding_errors):
            text = clean_document(raw, strip_gutenberg=strip_gutenberg)
            if len(text) >= max(1, min_document_chars):
                kept += 1
                yield {"text": text}
    if kept == 0:
        shown = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataError(f"the corpus is empty: {_no_document(min_document_chars)} in {shown}")


def _hub_documents_gen(
    source: tuple, text_column: str, min_document_chars: int, strip_gutenberg: bool
) -> Iterator[dict[str, str]]:
    dataset_name, dataset_config_name, split = source
    try:
        ds = datasets.load_dataset(dataset_name, dataset_config_name, split=split, streaming=True)
    except Exception as exc:  # offline, unknown id, unknown split: all user-fixable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "OfflineModeIsEnabled" in first:
            first = "offline mode (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) is on and it is not in the datasets cache"
        raise DataError(f"cannot load dataset {dataset_name!r} (split {split!r}): {first}") from None
    kept = 0
    for i, record in enumerate(ds):
        value = _text_field(record, text_column, f"dataset {dataset_name}", f"row {i}")
        text = clean_document(value, strip_gutenberg=strip_gutenberg)
        if len(text) >= max(1, min_document_chars):
            kept += 1
            yield {"text": text}
    if kept == 0:
        raise DataError(f"dataset {dataset_name!r} split {split!r} has {_no_document(min_document_chars)}")


def _take_skip_gen(
    source: datasets.IterableDataset, start: int, stop: int | None
) -> Iterator[dict[str, str]]:
    seen = 0
    for i, example in enumerate(source):
        if stop is not None and i >= stop:
            return
        seen = i + 1
        if i >= start:
            yield example
    if start and seen <= start:
        # Only the training side skips; what it skipped is the validation hold-out.
        raise DataError(
            f"--validation_split_documents {start} holds out all {_count(seen, 'document')} of the corpus (each .txt file "
            "is one document), leaving nothing to train on: use --validation_split_percentage 5 instead (it "
            "holds out 5% of the text, cutting long documents into passages) or a smaller "
            "--validation_split_documents"
        )


def _no_document(min_document_chars: int) -> str:
    if min_document_chars <= 1:
        return "no document with any text"
    return f"no document of at least {min_document_chars} characters (--min_document_chars)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --------------------------------------------------------------------------------------------- hold-out
#: ``--validation_split_percentage`` holds out whole *passages*: documents cut into pieces of about this many
#: characters, at a paragraph break when there is one nearby. A single 400 kB book is then 200 passages, so
#: a corpus of one file or a handful of books still splits into training and validation text.
HOLDOUT_PASSAGE_CHARS = 2_000
_WHITESPACE = re.compile(r"\s")


def passage_starts(text: str, size: int = HOLDOUT_PASSAGE_CHARS) -> list[int]:
    """Offsets where the passages of ``text`` start (the first is 0).

    A passage ends at the first blank line after ``size`` characters, else the first line break, else the
    first whitespace (within another ``size`` characters), else after exactly ``size`` characters. A tail
    shorter than ``size // 2`` stays with the passage before it. A pure function of the text: the same
    corpus always gives the same passages, which exact resume relies on.
    """
    starts = [0]
    start = 0
    while len(text) - start >= size + size // 2:
        target = start + size
        window_end = target + size
        cut = text.find("\n\n", target, window_end)
        if cut >= 0:
            cut += 2
        else:
            cut = text.find("\n", target, window_end)
            if cut >= 0:
                cut += 1
            else:
                match = _WHITESPACE.search(text, target, window_end)
                cut = match.end() if match else target
        if len(text) - cut < size // 2:
            break
        starts.append(cut)
        start = cut
    return starts


def is_held_out(index: int, percentage: int) -> bool:
    """Whether passage ``index`` (counted over the whole corpus) is validation text.

    Exactly ``percentage``% of the passages, evenly spread, the first one included: with 5, passages 0,
    20, 40, ... So the validation side is never empty, and the training side is empty only when the whole
    corpus is one passage.
    """
    return (index * percentage + 99) // 100 < ((index + 1) * percentage + 99) // 100


def _holdout_gen(source: datasets.IterableDataset, percentage: int, side: str) -> Iterator[dict[str, str]]:
    """The validation passages, or the training text between them.

    On the training side a document comes out whole when none of its passages is held out, else as the runs of
    consecutive training passages between the held-out ones (each run one document: the text that really
    follows a run's end was taken out).
    """
    index = 0  # passages before the current document
    chars = kept = 0
    for example in source:
        text = example["text"]
        chars += len(text)
        starts = passage_starts(text)
        held = [is_held_out(index + i, percentage) for i in range(len(starts))]
        index += len(starts)
        bounds = starts + [len(text)]
        if side == "validation":
            pieces = [text[bounds[i] : bounds[i + 1]] for i in range(len(starts)) if held[i]]
        elif not any(held):
            pieces = [text]
        else:
            pieces = []
            run = None  # first passage of the current run of training passages
            for i, out in enumerate(held + [True]):
                if out and run is not None:
                    pieces.append(text[bounds[run] : bounds[i]])
                    run = None
                elif not out and run is None:
                    run = i
        for piece in pieces:
            piece = piece.strip()
            if piece:
                kept += 1
                yield {"text": piece}
    if side == "train" and kept == 0:
        raise DataError(
            f"--validation_split_percentage {percentage} leaves nothing to train on: the whole corpus ({chars} "
            f"characters) is one passage of about {HOLDOUT_PASSAGE_CHARS} or fewer, and it went to validation; give "
            "more text, a --validation_file, or --validation_split_percentage 0 (no validation)"
        )


# --------------------------------------------------------------------------------------------- public API
def load_documents(
    *,
    train_file: list[str] | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    text_column: str = "text",
    encoding_errors: str = "strict",
    min_document_chars: int = 1,
    strip_gutenberg: bool = True,
    files_flag: str = "--train_file",
) -> datasets.IterableDataset:
    """Stream cleaned documents (``{"text": str}``) from local files or a Hub dataset.

    ``files_flag`` names the option ``train_file`` came from in error messages (e.g. ``--validation_file``).

    Paths and globs are checked now; malformed records raise :class:`DataError` while iterating, and a
    stream that ends without a single document raises too (never a silent empty dataset).
    """
    if encoding_errors not in ("strict", "replace"):
        raise DataError(f"encoding_errors must be 'strict' or 'replace', got {encoding_errors!r}")
    if train_file and dataset_name:
        raise DataError("give either train_file or dataset_name, not both")
    if train_file:
        files = expand_files(train_file, files_flag)
        for path in files:
            _check_readable(path)
        # A tuple (not a list) keeps the files in one shard: order stays deterministic and the
        # "empty corpus" check sees the whole corpus. Ranks are split by StatefulLoader instead.
        return datasets.IterableDataset.from_generator(
            _file_documents_gen,
            features=_FEATURES,
            gen_kwargs={
                "files": tuple(files),
                "text_column": text_column,
                "encoding_errors": encoding_errors,
                "min_document_chars": min_document_chars,
                "strip_gutenberg": strip_gutenberg,
            },
        )
    if dataset_name:
        from hfssl.pretrained import check_dataset_source

        check_dataset_source(dataset_name)
        return datasets.IterableDataset.from_generator(
            _hub_documents_gen,
            features=_FEATURES,
            gen_kwargs={
                "source": (dataset_name, dataset_config_name, split),
                "text_column": text_column,
                "min_document_chars": min_document_chars,
                "strip_gutenberg": strip_gutenberg,
            },
        )
    raise DataError("no data given: pass train_file or dataset_name (or use builtin_corpus_files())")


def validation_holdout(data_args: DataArguments) -> tuple[str, int] | None:
    """Where a recipe's validation data comes from, as ``(kind, amount)``; None when there is none.

    In order of precedence: ``("file", 0)`` for ``--validation_file`` (nothing is held out of the training
    data); ``("documents", N)`` for ``--validation_split_documents N``; ``("hub_split", 0)`` for a Hub
    dataset that has a ``validation`` split (as ``run_clm.py``, which only carves one out when there is
    none); ``("percentage", P)`` for ``--validation_split_percentage P``.
    """
    if data_args.validation_file:
        return ("file", 0)
    if data_args.validation_split_documents > 0:
        return ("documents", data_args.validation_split_documents)
    if data_args.dataset_name and _hub_has_validation_split(data_args.dataset_name, data_args.dataset_config_name):
        return ("hub_split", 0)
    if data_args.validation_split_percentage > 0:
        return ("percentage", data_args.validation_split_percentage)
    return None


def describe_holdout(holdout: tuple[str, int] | None) -> str:
    """The flags behind a hold-out, for log lines and error messages."""
    if holdout is None:
        return "no validation data"
    kind, amount = holdout
    return {"file": "--validation_file", "documents": f"--validation_split_documents {amount}",
            "hub_split": "the dataset's validation split",
            "percentage": f"--validation_split_percentage {amount}"}[kind]


@functools.lru_cache(maxsize=8)
def _hub_has_validation_split(dataset_name: str, dataset_config_name: str | None) -> bool:
    from hfssl.pretrained import check_dataset_source

    check_dataset_source(dataset_name)  # an unreachable Hub: one line now, not ~25 s of retries
    try:
        return "validation" in datasets.get_dataset_split_names(dataset_name, dataset_config_name)
    except Exception:  # offline or unknown: loading the training split reports the real problem
        return False


def load_documents_from_args(data_args: DataArguments, split: str = "train") -> datasets.IterableDataset:
    """Documents for a recipe's ``DataArguments``.

    * No ``--train_file``/``--dataset_name``: the built-in corpus (:func:`builtin_corpus_files`).
    * ``split="validation"``: what :func:`validation_holdout` names. A held-out share comes out of the
      training stream, and ``split="train"`` then leaves out exactly that text:
      ``--validation_split_documents N`` takes the first N documents, ``--validation_split_percentage P``
      takes P% of the *passages* (see :func:`passage_starts`), so even a single book gives both sides.
      Without any validation source a DataError says what to pass.
    * ``--max_train_samples`` caps the number of training *documents* (after the hold-out).
    """
    common = dict(
        text_column=data_args.text_column,
        encoding_errors=data_args.encoding_errors,
        min_document_chars=data_args.min_document_chars,
        strip_gutenberg=data_args.strip_gutenberg,
    )
    if split not in ("train", "validation"):
        raise DataError(f"split must be 'train' or 'validation', got {split!r}")
    holdout = validation_holdout(data_args)
    kind, amount = holdout or ("none", 0)
    if split == "validation":
        if kind == "none":
            raise DataError(
                "no validation data: pass --validation_file, --validation_split_percentage P (P% of the training "
                "text) or --validation_split_documents N (the first N training documents)"
            )
        if kind == "file":
            return load_documents(train_file=list(data_args.validation_file), files_flag="--validation_file",
                                  **common)
    if data_args.dataset_name:
        train = load_documents(
            dataset_name=data_args.dataset_name,
            dataset_config_name=data_args.dataset_config_name,
            split="validation" if split == "validation" and kind == "hub_split" else "train",
            **common,
        )
        if split == "validation" and kind == "hub_split":
            return train
    else:
        files = list(data_args.train_file) if data_args.train_file else builtin_corpus_files()
        train = load_documents(train_file=files, **common)

    if kind == "percentage":
        stream = datasets.IterableDataset.from_generator(
            _holdout_gen, features=_FEATURES, gen_kwargs={"source": train, "percentage": amount, "side": split}
        )
        if split == "validation" or data_args.max_train_samples is None:
            return stream
        return datasets.IterableDataset.from_generator(
            _take_skip_gen, features=_FEATURES,
            gen_kwargs={"source": stream, "start": 0, "stop": data_args.max_train_samples},
        )
    held_out = amount if kind == "documents" else 0
    if split == "validation":
        return datasets.IterableDataset.from_generator(
            _take_skip_gen, features=_FEATURES, gen_kwargs={"source": train, "start": 0, "stop": held_out}
        )
    stop = None
    if data_args.max_train_samples is not None:
        stop = held_out + data_args.max_train_samples
    if held_out == 0 and stop is None:
        return train
    return datasets.IterableDataset.from_generator(
        _take_skip_gen, features=_FEATURES, gen_kwargs={"source": train, "start": held_out, "stop": stop}
    )


def builtin_corpus_files() -> list[str]:
    """The small default corpus (docstrings of Python's standard library), built once into a cache dir."""
    from hfssl.data.builtin_corpus import ensure_builtin_corpus

    return ensure_builtin_corpus()
