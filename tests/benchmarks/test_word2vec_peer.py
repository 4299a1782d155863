"""benchmarks/word2vec_peer.py runs both contenders on a small corpus and ends with one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_benchmark_compares_hfssl_and_gensim_on_the_same_sentences(repo_root, tmp_path):
    pytest.importorskip("gensim")
    corpus = tmp_path / "corpus.txt"
    words = [f"w{i}" for i in range(40)]
    corpus.write_text("\n\n".join(" ".join(words[(3 * d + j * j) % 40] for j in range(50)) for d in range(80)),
                      encoding="utf-8")
    result = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "word2vec_peer.py"), "--train_file",
                             str(corpus), "--epochs", "1", "--vector_size", "8", "--max_sentence_length", "100",
                             "--contenders", "hfssl,gensim_1", "--hfssl_threads", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["corpus"]["words_in_vocabulary"] == 4000 and report["corpus"]["vocab_size"] == 40
    for name in ("hfssl", "gensim_1"):
        assert report[name]["vocab_size"] == 40 and report[name]["words_per_second"] > 0
        assert "simlex999_spearman" in report[name]
    assert report["ratios"]["speed_vs_gensim_1"] > 0
