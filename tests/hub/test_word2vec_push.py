"""recipes/word2vec.py --push_to_hub against the fake Hub: the repo loads with SentenceTransformer and gensim, no
custom code, and its card is a sentence-transformers card with the scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub.hub_helpers import ALICE_TOKEN, FakeHub, hub_env, remote_files, run_python

RELOAD = """
import json, sys
import numpy as np
from gensim.models import KeyedVectors
from huggingface_hub import hf_hub_download
from sentence_transformers import SentenceTransformer
local, repo = sys.argv[1], sys.argv[2]
kv = KeyedVectors.load_word2vec_format(hf_hub_download(repo, "word2vec.bin"), binary=True)
mine = KeyedVectors.load_word2vec_format(local + "/word2vec.bin", binary=True)
model = SentenceTransformer(repo, device="cpu")
words = kv.index_to_key[:20]
print(json.dumps({"same_vectors": bool(np.array_equal(kv.vectors, mine.vectors)),
                  "st_matches": bool(np.allclose(model.encode(words), kv[words], atol=1e-6)),
                  "modules": [type(m).__name__ for m in model]}))
"""


@pytest.mark.slow
def test_a_word2vec_run_pushes_a_sentence_transformers_repo_that_reloads(fake_hub: FakeHub, tmp_path: Path):
    repo_root = Path(__file__).resolve().parents[2]
    corpus = tmp_path / "corpus.txt"
    words = [f"w{i}" for i in range(30)]
    corpus.write_text("\n\n".join(" ".join(words[(d + j) % 30] for j in range(40)) for d in range(60)),
                      encoding="utf-8")
    out = tmp_path / "w2v"
    env = hub_env(fake_hub.url, tmp_path / "push-home", token=ALICE_TOKEN)
    trained = subprocess.run([sys.executable, str(repo_root / "recipes" / "word2vec.py"), "--train_file", str(corpus),
                              "--vector_size", "8", "--max_sentence_length", "100", "--num_train_epochs", "1",
                              "--push_to_hub", "--hub_model_id", "alice/w2v", "--output_dir", str(out)],
                             env=env, capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert trained.returncode == 0, trained.stderr[-3000:]
    files = remote_files(fake_hub, "alice/w2v")
    assert {"word2vec.txt", "word2vec.bin", "model.safetensors", "tokenizer.json", "modules.json",
            "config_sentence_transformers.json", "config.json", "results.json", "README.md"} <= files
    assert not any(f.startswith(("checkpoints/", "vocabulary/")) for f in files)
    loaded = run_python(RELOAD, hub_env(fake_hub.url, tmp_path / "load-home"), str(out), "alice/w2v", timeout=240)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == {
        "same_vectors": True, "st_matches": True, "modules": ["StaticEmbedding"]}
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "library_name: sentence-transformers" in card and 'SentenceTransformer("alice/w2v")' in card
