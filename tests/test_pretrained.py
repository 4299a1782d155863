"""--tokenizer_name / --model_name_or_path that cannot load fail at once, in one line naming the cause."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import constants

from hfssl.errors import ConfigError
from hfssl.pretrained import check_pretrained_source, looks_like_path


def test_paths_and_hub_ids_are_told_apart():
    for path in ("./tok", "../tok", "/data/tok", "~/tok", "out/gpt/tokenizer", "tok/", "C:\\tok", "a b"):
        assert looks_like_path(path), path
    for repo_id in ("gpt2", "bert-base-uncased", "user/model", "some-dir-that-does-not-exist"):
        assert not looks_like_path(repo_id), repo_id


def test_a_directory_passes_and_a_missing_or_file_path_is_one_line(tmp_path):
    assert check_pretrained_source(str(tmp_path), "--tokenizer_name") == str(tmp_path)
    with pytest.raises(ConfigError, match=r"^--tokenizer_name \S+/missing/tok: the local directory does not exist"):
        check_pretrained_source(str(tmp_path / "missing" / "tok"), "--tokenizer_name")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"model.safetensors is a file; give the directory"):
        check_pretrained_source(str(tmp_path / "model.safetensors"), "--model_name_or_path")


def test_a_hub_id_offline_is_looked_up_in_the_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--model_name_or_path user/model: no such local directory, and "
                                          r"'user/model' is not in the Hugging Face cache .*HF_HUB_OFFLINE is set"):
        check_pretrained_source("user/model", "--model_name_or_path")
    (tmp_path / "models--user--model" / "snapshots").mkdir(parents=True)
    assert check_pretrained_source("user/model", "--model_name_or_path") == "user/model"


def test_an_unreachable_hub_is_one_quick_line_not_a_minute_of_retries(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"--tokenizer_name some-dir-that-does-not-exist: no such local directory, "
                                          r".*the Hub \(http://127.0.0.1:9\) cannot be reached"):
        check_pretrained_source("some-dir-that-does-not-exist", "--tokenizer_name")
    assert time.perf_counter() - start < 5


def test_dataset_name_is_checked_the_same_way(tmp_path, monkeypatch):
    from hfssl.data.corpus import load_documents
    from hfssl.pretrained import _reachable

    with pytest.raises(ConfigError, match=r"--dataset_name \./my_data: the local directory does not exist"):
        load_documents(dataset_name="./my_data")
    (tmp_path / "rows.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ConfigError, match=r"rows.jsonl is a file: pass data files with --train_file"):
        load_documents(dataset_name=str(tmp_path / "rows.jsonl"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    _reachable.cache_clear()
    with pytest.raises(ConfigError, match=r"--dataset_name wikitext: no such local directory, and the Hub "
                                          r"\(http://127.0.0.1:9\) cannot be reached"):
        load_documents(dataset_name="wikitext")
