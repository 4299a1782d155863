"""Corpus readers: formats, cleaning, validation split and every bad input's message."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfssl.config import DataArguments
from hfssl.data.corpus import builtin_corpus_files, clean_document, load_documents, load_documents_from_args
from hfssl.errors import DataError

GUTENBERG = (
    "The Project Gutenberg EBook of Test, by Nobody\r\n\r\nLicence blah.\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK TEST ***\r\n\r\nCHAPTER I.\r\nIt was a dark night.\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK TEST ***\r\nEnd of licence.\r\n"
)


def texts(**kwargs) -> list[str]:
    return [ex["text"] for ex in load_documents(**kwargs)]


def test_builtin_corpus_is_real_prose_and_deterministic(corpus_files):
    assert builtin_corpus_files() == corpus_files
    docs = texts(train_file=corpus_files)
    assert len(docs) > 500
    total = sum(map(len, docs))
    assert total > 1_000_000
    # English prose, not code: common function words are frequent.
    words = " ".join(docs[:200]).lower().split()
    assert words.count("the") > 0.02 * len(words)
    assert docs == texts(train_file=corpus_files)


def test_txt_is_one_document_and_gutenberg_is_stripped(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(GUTENBERG.encode())
    (doc,) = texts(train_file=[str(path)])
    assert doc == "CHAPTER I.\nIt was a dark night."
    (raw,) = texts(train_file=[str(path)], strip_gutenberg=False)
    assert raw.startswith("The Project Gutenberg EBook") and "\r" not in raw
    assert clean_document("no markers here\r\n") == "no markers here"


def test_gutenberg_credit_closing_line_and_pre_2000_small_print_are_stripped():
    modern = ("The Project Gutenberg EBook of Pride and Prejudice\r\n*** START OF THIS PROJECT GUTENBERG EBOOK PRIDE "
              "***\r\n\r\nProduced by Anonymous Volunteers\r\n\r\n\r\nPRIDE AND PREJUDICE\r\n\r\nChapter 1\r\n"
              "It is a truth.\r\n\r\n\r\nEnd of the Project Gutenberg EBook of Pride and Prejudice, by Jane Austen"
              "\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK PRIDE ***\r\nLicence.\r\n")
    assert clean_document(modern) == "PRIDE AND PREJUDICE\n\nChapter 1\nIt is a truth."
    old = ("The Project Gutenberg Etext of Heidi by Johanna Spyri\n\nCopyright laws are changing.\n"
           "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\nWhy is this small print?\n"
           "*END THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.07.00*END*\n\n\nHEIDI\n\nUp the Mountain.\n"
           "\n\nEnd of The Project Gutenberg Etext of Heidi\nby Johanna Spyri\n\n")
    assert clean_document(old) == "HEIDI\n\nUp the Mountain."


def test_wikiextractor_doc_blocks_and_min_chars(tmp_path):
    wiki = (
        '<doc id="1" url="?curid=1" title="Stub">\nStub\n\n</doc>\n'
        '<doc id="2" url="?curid=2" title="Real">\nReal\n\nReal is a real article with a body.\n</doc>\n'
    )
    # WikiExtractor names its shards wiki_00, wiki_01 (no suffix): plain text.
    path = tmp_path / "wiki_00.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(wiki)
    assert texts(train_file=[str(path)]) == ["Stub", "Real\n\nReal is a real article with a body."]
    assert texts(train_file=[str(path)], min_document_chars=20) == [
        "Real\n\nReal is a real article with a body."
    ]


def test_jsonl_json_csv_parquet_and_globs(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "first doc", "id": 1}\n\n{"text": "second doc"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"body": "third"}, {"body": "fourth"}]))
    (tmp_path / "c.csv").write_text('id,text\n1,"fifth, with comma"\n2,"sixth\nmultiline"\n')
    pq.write_table(pa.table({"text": ["seventh", None, "eighth"]}), tmp_path / "d.parquet")
    with gzip.open(tmp_path / "e.jsonl.gz", "wt") as fh:
        fh.write('{"text": "ninth"}\n')
    assert texts(train_file=[str(tmp_path / "a.jsonl")]) == ["first doc", "second doc"]
    assert texts(train_file=[str(tmp_path / "b.json")], text_column="body") == ["third", "fourth"]
    assert texts(train_file=[str(tmp_path / "c.csv")]) == ["fifth, with comma", "sixth\nmultiline"]
    assert texts(train_file=[str(tmp_path / "d.parquet")]) == ["seventh", "eighth"]
    assert texts(train_file=[str(tmp_path / "*.jsonl*")]) == ["first doc", "second doc", "ninth"]


def test_directories_and_globs_skip_unrelated_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one.txt").write_text("one")
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "two.jsonl").write_text('{"text": "two"}\n')
    assert texts(train_file=[str(tmp_path)]) == ["one", "two"]
    assert texts(train_file=[str(tmp_path / "**" / "*")]) == ["one", "two"]


def test_validation_split_holds_out_leading_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(10)))
    args = DataArguments(train_file=[str(path)], validation_split_documents=3, max_train_samples=4)
    val = [ex["text"] for ex in load_documents_from_args(args, split="validation")]
    train = [ex["text"] for ex in load_documents_from_args(args)]
    assert val == ["document 0", "document 1", "document 2"]
    assert train == ["document 3", "document 4", "document 5", "document 6"]
    with pytest.raises(DataError, match="no validation data: pass --validation_file, --validation_split_percentage"):
        load_documents_from_args(DataArguments(train_file=[str(path)]), split="validation")
    # No data arguments at all: the built-in corpus.
    first = next(iter(load_documents_from_args(DataArguments())))["text"]
    assert first == texts(train_file=builtin_corpus_files())[0]


# ----------------------------------------------------------------------------------- bad inputs
def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match=r"--train_file .*nope\.txt does not exist"):
        load_documents(train_file=[str(tmp_path / "nope.txt")])
    with pytest.raises(DataError, match=r"--train_file '.*\*\.jsonl' matches no .txt/.text/.jsonl"):
        load_documents(train_file=[str(tmp_path / "*.jsonl")])
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(DataError, match="unsupported file type .docx"):
        load_documents(train_file=[str(tmp_path / "x.docx")])


def test_empty_corpus_after_cleaning_raises_instead_of_yielding_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("   \n\n  ")
    (tmp_path / "b.jsonl").write_text('{"text": "tiny"}\n')
    ds = load_documents(
        train_file=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], min_document_chars=10
    )
    with pytest.raises(DataError, match="corpus is empty.*at least 10 characters"):
        list(ds)


def test_non_utf8_reports_file_and_offset_or_is_replaced(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"Caf" + "é au lait".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"latin1\.txt is not valid UTF-8 \(byte offset 3\).*--encoding_errors replace"
    ):
        list(load_documents(train_file=[str(path)]))
    assert texts(train_file=[str(path)], encoding_errors="replace") == ["Caf\ufffd au lait"]
    jpath = tmp_path / "bad.jsonl"
    jpath.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl is not valid UTF-8 \(line 2, byte offset 28\)"):
        list(load_documents(train_file=[str(jpath)]))


def test_jsonl_bad_line_and_missing_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "broken"\n')
    ds = load_documents(train_file=[str(path)])
    with pytest.raises(DataError, match=r"bad\.jsonl line 2 is not valid JSON"):
        list(ds)
    path.write_text('{"text": "ok"}\n{"content": "x"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2 has no 'text' field \(found: content\)"):
        list(load_documents(train_file=[str(path)]))
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("id,body\n1,x\n")
    with pytest.raises(DataError, match=r"t\.csv has no column 'text' \(columns: id, body\)"):
        list(load_documents(train_file=[str(csv_path)]))


def test_corrupt_gzip_is_caught_eagerly(tmp_path):
    path = tmp_path / "x.txt.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"cannot read .*x\.txt\.gz"):
        load_documents(train_file=[str(path)])


def test_offline_hub_dataset_fails_with_one_line(monkeypatch):
    ds = load_documents(dataset_name="hfssl-test/does-not-exist")
    with pytest.raises(DataError, match="cannot load dataset 'hfssl-test/does-not-exist'"):
        next(iter(ds))


def test_real_shared_corpus_wikipedia_and_gutenberg(shared_data):
    text_dir = shared_data / "text"
    wiki = sorted((text_dir / "wikipedia_en").glob("wiki_*"))[0]
    book = text_dir / "gutenberg" / "1013.txt.gz"
    articles = texts(train_file=[str(wiki)])
    assert len(articles) > 100 and not any("<doc" in a or "</doc>" in a for a in articles)
    # Most WikiExtractor articles are stubs (a title line); a length floor drops them.
    kept = texts(train_file=[str(wiki)], min_document_chars=200)
    assert 0 < len(kept) < len(articles) / 2
    if book.is_file():
        (doc,) = texts(train_file=[str(book)])
        # Header (title page metadata), markers and the licence after the END marker are gone; the book stays.
        for boilerplate in ("Release Date:", "*** START", "*** END", "FULL LICENSE", "\r", "End of the Project"):
            assert boilerplate not in doc
        assert len(doc) > 300_000 and "the Moon" in doc


def test_archives_are_named_as_such(tmp_path):
    import tarfile

    (tmp_path / "a.txt").write_text("inside the archive")
    with tarfile.open(tmp_path / "speeches.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "a.txt", arcname="a.txt")
    (tmp_path / "a.txt").unlink()
    with pytest.raises(DataError, match=r"speeches.tar.gz is an archive: extract it first"):
        load_documents(train_file=[str(tmp_path / "speeches.tar.gz")])
    with pytest.raises(DataError, match=r"matches no .* files \(it holds archives such as .*speeches.tar.gz"):
        load_documents(train_file=[str(tmp_path)])


def test_concatenated_gutenberg_books_all_stay_and_a_licence_only_file_is_kept(tmp_path):
    two = GUTENBERG + GUTENBERG.replace("It was a dark night.", "It was a bright day.")
    assert clean_document(two) == "CHAPTER I.\nIt was a dark night.\n\n\nCHAPTER I.\nIt was a bright day."
    readme = "Selections\n\nNotes.\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n"
    assert clean_document(readme) == readme.strip()
