"""recipes/train_tokenizer.py end to end in a real subprocess."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hfssl.data import builtin_corpus_files, load_documents

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    return [ex["text"] for ex in load_documents(train_file=builtin_corpus_files())]


def run(python_exe, repo_root, *args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(
        [python_exe, str(repo_root / "recipes" / "train_tokenizer.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_trains_on_gzipped_files_and_reloads(python_exe, repo_root, tmp_path, corpus_texts):
    for i in range(3):
        with gzip.open(tmp_path / f"part{i}.jsonl.gz", "wt", encoding="utf-8") as fh:
            for text in corpus_texts[i * 60 : (i + 1) * 60]:
                fh.write(json.dumps({"content": text}) + "\n")
    out = tmp_path / "tok"
    proc = run(
        python_exe,
        repo_root,
        "--train_file",
        str(tmp_path / "part*.jsonl.gz"),
        "--text_column",
        "content",
        "--tokenizer_type",
        "wordpiece",
        "--vocab_size",
        "700",
        "--lowercase",
        "--output_dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "trained on 180 documents" in proc.stderr
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 700 and tok.cls_token == "[CLS]"
    assert tok.tokenize("THE Return")[:2] == ["the", "return"]  # lowercased
    config = json.loads((out / "run_config.json").read_text())
    assert json.dumps(config).count("wordpiece") >= 1


def test_no_data_arguments_uses_the_builtin_corpus(python_exe, repo_root, tmp_path):
    proc = run(
        python_exe,
        repo_root,
        "--output_dir",
        str(tmp_path / "tok"),
        "--vocab_size",
        "600",
        "--max_train_samples",
        "100",
    )
    assert proc.returncode == 0, proc.stderr
    assert "stdlib-docstrings" in proc.stderr and "trained on 100 documents" in proc.stderr
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = "Return the value — déjà vu."
    assert tok.decode(tok(text)["input_ids"]) == text


def _recipe_main():
    spec = importlib.util.spec_from_file_location(
        "train_tokenizer_recipe", REPO_ROOT / "recipes" / "train_tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train_file", "missing/*.txt"], "--train_file 'missing/*.txt' matches no .txt/"),
        (["--vocab_size", "100"], "vocab_size 100 is too small for a bpe tokenizer"),
        (["--tokenizer_type", "sentencepiece"], "--tokenizer_type must be one of bpe, wordpiece, unigram"),
        (["--train_file", "BAD"], "is not valid UTF-8 (byte offset 5)"),
        (["--train_file", "EMPTY"], "the corpus is empty"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch, args, message):
    # In-process (the subprocess path is covered below) to keep the suite fast.
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\xff world")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [{"BAD": str(bad), "EMPTY": str(empty)}.get(a, a) for a in args]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        _recipe_main()([*args, "--output_dir", str(tmp_path / "o")])
    assert exit_info.value.code in (1, 2)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]


def test_bad_input_in_a_subprocess_exits_1_without_traceback(python_exe, repo_root, tmp_path):
    proc = run(
        python_exe,
        repo_root,
        "--train_file",
        str(tmp_path / "nope.jsonl"),
        "--output_dir",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"train_tokenizer.py: error: --train_file {tmp_path / 'nope.jsonl'} does not exist"
    )
    assert "Traceback" not in proc.stderr


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "tok").write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        _recipe_main()(["--output_dir", str(tmp_path / "tok")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--output_dir {tmp_path / 'tok'} is a file, not a directory" in err
