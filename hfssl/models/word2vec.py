"""The word2vec backbone and its export: word2vec text/binary vectors and a sentence-transformers model.

``Word2VecModel`` is a plain ``nn.Module`` with word2vec's two tables: ``input_embeddings`` (gensim's
``wv.vectors`` / word2vec.c's ``syn0``, initialised uniformly in ``±0.5 / vector_size``; these are the word
vectors) and ``output_embeddings`` (``syn1neg``, zeros). Row ``i`` is vocabulary word ``i`` (0 = most
frequent).

``export_word2vec`` writes into the output directory:

* ``word2vec.txt`` and ``word2vec.bin``: the word2vec text and binary formats (``V D`` header, then one word
  and its vector per row; float32 little-endian in the binary file, 9 significant digits in the text, so
  both reload bit-exactly), read by ``gensim.models.KeyedVectors.load_word2vec_format(path, binary=...)``;
* a sentence-transformers model: ``modules.json`` naming one ``StaticEmbedding`` module at the root,
  ``model.safetensors`` (``embedding.weight``: the vectors plus a zero row for ``[UNK]``), ``tokenizer.json``
  (the word-level tokenizer of training) and ``config_sentence_transformers.json``. ``SentenceTransformer(dir)``
  loads it with no custom code: a text's embedding is the mean of its words' vectors (unknown words count as
  zero vectors, which leaves cosine similarities unchanged);
* ``tokenizer_config.json`` (``AutoTokenizer`` loads the same tokenizer) and ``config.json`` (the word2vec
  settings, marked ``"export_format": "word2vec"``; the model card is ``hfssl.models.word2vec_card``'s).

Nothing here imports gensim or sentence-transformers: both are only used, when installed, to prove the
export reloads (:func:`verify_word2vec_export`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hfssl.errors import HfsslError

TEXT_FILE = "word2vec.txt"
BINARY_FILE = "word2vec.bin"
ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.StaticEmbedding"}]
ST_CONFIG = {"model_type": "SentenceTransformer", "prompts": {"query": "", "document": ""},
             "default_prompt_name": None, "similarity_fn_name": "cosine"}


@dataclass
class Word2VecConfig:
    """What a word2vec export was trained with (written to ``config.json``)."""

    vocab_size: int
    vector_size: int = 100
    architecture: str = "skipgram"
    window: int = 5
    negative: int = 5
    sample: float = 1e-3
    min_count: int = 5
    ns_exponent: float = 0.75
    cbow_mean: bool = True
    lowercase: bool = True
    max_sentence_length: int = 1000

    def to_dict(self) -> dict[str, Any]:
        # No "model_type": transformers would take the folder for one of its models (AutoTokenizer warns).
        return {"export_format": "word2vec", **asdict(self)}


class Word2VecModel(nn.Module):
    """Input (word vectors) and output (context) embedding tables."""

    def __init__(self, config: Word2VecConfig, generator: torch.Generator | None = None):
        super().__init__()
        if config.vector_size < 1:
            raise HfsslError(f"--vector_size must be positive, got {config.vector_size}")
        self.config = config
        self.input_embeddings = nn.Embedding(config.vocab_size, config.vector_size)
        self.output_embeddings = nn.Embedding(config.vocab_size, config.vector_size)
        with torch.no_grad():
            # word2vec.c / gensim: inputs uniform in [-0.5/D, 0.5/D), outputs zero.
            weight = torch.rand(config.vocab_size, config.vector_size, generator=generator)
            self.input_embeddings.weight.copy_((weight - 0.5) / config.vector_size)
            self.output_embeddings.weight.zero_()

    @property
    def vectors(self) -> torch.Tensor:
        return self.input_embeddings.weight


# ------------------------------------------------------------------------------------------ word2vec formats
def write_word2vec_format(path: str, words: Sequence[str], vectors: np.ndarray, *, binary: bool) -> None:
    """Write ``vectors`` (float32 ``[len(words), dim]``) in word2vec's text or binary format, atomically.

    An unwritable path raises HfsslError naming it.
    """
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ValueError(f"{len(words)} words but vectors of shape {vectors.shape}")
    for word in words:
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"word {word!r} cannot be written in word2vec format (empty or containing whitespace)")
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(f"{len(words)} {vectors.shape[1]}\n".encode())
            if binary:
                # As word2vec.c: word, space, raw float32 values, newline.
                for word, row in zip(words, vectors):
                    fh.write(word.encode("utf-8") + b" " + row.tobytes() + b"\n")
            else:
                fmt = "{:.9g}".format  # 9 significant digits: every float32 reads back exactly
                lines = [word + " " + " ".join(map(fmt, row)) for word, row in zip(words, vectors.tolist())]
                fh.write(("\n".join(lines) + "\n").encode("utf-8"))
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise HfsslError(f"cannot write the word vectors to {path}: {exc.strerror or exc}") from None


def read_word2vec_format(path: str, *, binary: bool) -> tuple[list[str], np.ndarray]:
    """Read a word2vec text or binary file (as written by word2vec.c, gensim or this module)."""
    with open(path, "rb") as fh:
        header = fh.readline().split()
        if len(header) != 2:
            raise HfsslError(f"{path} does not start with a 'count dimension' word2vec header")
        count, dim = int(header[0]), int(header[1])
        words: list[str] = []
        vectors = np.empty((count, dim), dtype=np.float32)
        if binary:
            data = fh.read()
            pos = 0
            for i in range(count):
                while data[pos:pos + 1] in (b"\n", b" "):
                    pos += 1
                end = data.index(b" ", pos)
                words.append(data[pos:end].decode("utf-8"))
                vectors[i] = np.frombuffer(data, dtype="<f4", count=dim, offset=end + 1)
                pos = end + 1 + 4 * dim
        else:
            for i in range(count):
                parts = fh.readline().decode("utf-8").rstrip("\n").split(" ")
                words.append(parts[0])
                vectors[i] = np.asarray(parts[1:], dtype=np.float32)
    return words, vectors


# ------------------------------------------------------------------------------------------ export
def export_word2vec(output_dir: str, words: Sequence[str], vectors: torch.Tensor, tokenizer: Any,
                    config: Word2VecConfig) -> list[str]:
    """Write every export format of ``vectors`` into ``output_dir`` (see the module docstring); returns the files."""
    from safetensors.torch import save_file

    from hfssl.data.words import as_transformers_tokenizer

    os.makedirs(output_dir, exist_ok=True)
    array = vectors.detach().to("cpu", torch.float32).numpy()
    write_word2vec_format(os.path.join(output_dir, TEXT_FILE), words, array, binary=False)
    write_word2vec_format(os.path.join(output_dir, BINARY_FILE), words, array, binary=True)
    try:
        # The sentence-transformers StaticEmbedding: the vocabulary rows, then [UNK] as a zero vector.
        table = torch.cat([torch.from_numpy(array), torch.zeros(1, array.shape[1])])
        save_file({"embedding.weight": table.contiguous()}, os.path.join(output_dir, "model.safetensors"))
        as_transformers_tokenizer(tokenizer).save_pretrained(output_dir)
        for name, content in (("modules.json", ST_MODULES), ("config_sentence_transformers.json", ST_CONFIG),
                              ("config.json", config.to_dict())):
            with open(os.path.join(output_dir, name), "w", encoding="utf-8") as fh:
                json.dump(content, fh, indent=2)
    except OSError as exc:
        raise HfsslError(f"cannot write the export to {output_dir}: {exc.strerror or exc}") from None
    return [TEXT_FILE, BINARY_FILE, "model.safetensors", "tokenizer.json", "modules.json",
            "config_sentence_transformers.json", "config.json"]


EXPORT_FILES = (TEXT_FILE, BINARY_FILE, "model.safetensors", "tokenizer.json", "modules.json", "config.json")


def check_export_writable(output_dir: str) -> None:
    """Fail before training, not after it, when an export file cannot be written (a directory in its place,
    a read-only directory)."""
    for name in EXPORT_FILES:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            raise HfsslError(f"cannot write the word vectors to {path}: it is a directory; remove it or choose "
                             "another --output_dir")
    probe = os.path.join(output_dir, f".{TEXT_FILE}.probe")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise HfsslError(f"cannot write the word vectors to {output_dir}: {exc.strerror or exc}") from None


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def verify_word2vec_export(output_dir: str, words: Sequence[str], vectors: torch.Tensor,
                           tolerance: float = 1e-6) -> list[str]:
    """Reload every export format and compare it with ``vectors``; raise HfsslError on any mismatch.

    Always: this module's own reader for both word2vec files and ``AutoTokenizer`` for the tokenizer. When
    installed: ``gensim.models.KeyedVectors.load_word2vec_format`` (text and binary) and
    ``SentenceTransformer(output_dir)`` (single words must embed to their vectors). Returns one line per check.
    """
    expected = vectors.detach().to("cpu", torch.float32).numpy()
    messages = []

    def check(what: str, got_words: Sequence[str], got: np.ndarray) -> None:
        if list(got_words) != list(words):
            raise HfsslError(f"the export in {output_dir} does not reload: {what} has other words than the model")
        diff = _max_diff(got, expected)
        if not diff <= tolerance:
            raise HfsslError(f"the export in {output_dir} does not reload: {what} differs from the model "
                             f"(max |diff| {diff:.3g})")
        messages.append(f"reloads with {what} (max |diff| {diff:.2g})")

    for name, binary in ((TEXT_FILE, False), (BINARY_FILE, True)):
        check(f"{name} (word2vec {'binary' if binary else 'text'} format)",
              *read_word2vec_format(os.path.join(output_dir, name), binary=binary))
    try:
        from gensim.models import KeyedVectors
    except ImportError:
        messages.append("gensim not installed: KeyedVectors reload not checked")
    else:
        for name, binary in ((TEXT_FILE, False), (BINARY_FILE, True)):
            kv = KeyedVectors.load_word2vec_format(os.path.join(output_dir, name), binary=binary)
            check(f"gensim KeyedVectors.load_word2vec_format({name!r}, binary={binary})", kv.index_to_key, kv.vectors)
    from transformers import AutoTokenizer

    probe = list(words[: min(len(words), 50)])
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    ids = tokenizer(" ".join(probe), add_special_tokens=False)["input_ids"]
    if ids != list(range(len(probe))):
        raise HfsslError(f"the export in {output_dir} does not reload: its tokenizer maps the vocabulary to other ids")
    messages.append("tokenizer reloads with AutoTokenizer (same word ids)")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        messages.append("sentence-transformers not installed: SentenceTransformer reload not checked")
    else:
        model = SentenceTransformer(output_dir, device="cpu")
        encoded = model.encode(probe, convert_to_numpy=True)
        diff = _max_diff(encoded, expected[: len(probe)])
        if not diff <= tolerance:
            raise HfsslError(f"the export in {output_dir} does not reload: SentenceTransformer embeds single words "
                             f"differently from their vectors (max |diff| {diff:.3g})")
        messages.append(f"reloads with SentenceTransformer (StaticEmbedding; max |diff| {diff:.2g})")
    return messages


RESULTS_FILE = "results.json"


def evaluate_and_record(output_dir: str, words: Sequence[str], vectors: torch.Tensor, *,
                        eval_files: dict[str, str | None], restrict_vocab: int, config: Word2VecConfig
                        ) -> dict[str, Any]:
    """Run the intrinsic evaluations whose files are known and write them to ``output_dir/results.json``."""
    from hfssl.evaluation.word_vectors import evaluate_word_vectors

    scores = evaluate_word_vectors(words, vectors.detach().cpu(), wordsim_file=eval_files.get("wordsim353"),
                                   simlex_file=eval_files.get("simlex999"),
                                   analogy_file=eval_files.get("google_analogy"), restrict_vocab=restrict_vocab)
    results = {"task": "word-vectors", "model_type": "word2vec", "architecture": config.architecture,
               "vocab_size": len(words), "vector_size": config.vector_size, "evaluation": scores,
               "evaluation_files": {k: os.path.basename(v) for k, v in eval_files.items() if v},
               "skipped": sorted(k for k, v in eval_files.items() if not v)}
    path = os.path.join(output_dir, RESULTS_FILE)
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(_finite_or_none(results), fh, indent=2)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        raise HfsslError(f"cannot write {path}: {exc.strerror or exc}") from None
    return results


def _finite_or_none(value: Any) -> Any:
    """NaN (an undefined correlation) as JSON null: results.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def export_hooks(words: Sequence[str], tokenizer: Any, config: Word2VecConfig, *,
                 eval_files: dict[str, str | None], restrict_vocab: int = 300_000
                 ) -> tuple[Callable[..., None], Callable[..., list[str]]]:
    """``(export_fn, verify_fn)`` for ``hfssl.training.train``.

    The export writes every format and then the evaluation (``results.json``), so that what the run pushes to
    the Hub carries its scores; the reload check is :func:`verify_word2vec_export`.
    """

    def export_fn(backbone: nn.Module, output_dir: str, state_dict: dict[str, torch.Tensor] | None) -> None:
        vectors = state_dict["input_embeddings.weight"] if state_dict is not None else backbone.input_embeddings.weight
        export_word2vec(output_dir, words, vectors, tokenizer, config)
        evaluate_and_record(output_dir, words, vectors, eval_files=eval_files, restrict_vocab=restrict_vocab,
                            config=config)

    def verify_fn(output_dir: str, backbone: nn.Module) -> list[str]:
        return verify_word2vec_export(output_dir, words, backbone.input_embeddings.weight)

    return export_fn, verify_fn


__all__ = ["BINARY_FILE", "RESULTS_FILE", "TEXT_FILE", "Word2VecConfig", "Word2VecModel", "check_export_writable",
           "evaluate_and_record",
           "export_hooks", "export_word2vec", "read_word2vec_format", "verify_word2vec_export", "write_word2vec_format"]
