"""Intrinsic evaluation of word vectors: word similarity (WordSim-353, SimLex-999) and analogies (Google).

The protocol is gensim's (``KeyedVectors.evaluate_word_pairs`` / ``evaluate_word_analogies``), so scores
compare with published gensim figures and with a gensim model trained on the same text:

* **Similarity**: Spearman (and Pearson) correlation between the human scores and the cosine similarity of
  the two words' vectors, over the pairs whose both words are in the vocabulary; the share of pairs left
  out is reported as ``oov_ratio``.
* **Analogies** ("a is to b as c is to d"): 3CosAdd, the word closest in cosine to ``b - a + c`` (unit
  vectors), ``a``, ``b`` and ``c`` excluded, searched among the ``restrict_vocab`` most frequent words;
  questions with a word outside them are skipped and counted in ``oov_ratio``.
* Matching is case-insensitive (a vocabulary that kept case answers with the most frequent casing; another
  casing of a question word is never an answer, and only the 5 best candidates count, as in gensim).

The three files ship inside the ``gensim`` package's test data; :func:`default_eval_file` finds them there
when gensim is installed, otherwise pass paths. Everything runs batched in torch (the 19,544 Google
questions against a 100k-word vocabulary take about a second on a CPU).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hfssl.errors import DataError

#: The evaluation sets, by the name used in results.json, and their file names in gensim's test data.
EVAL_FILES = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt", "google_analogy": "questions-words.txt"}
#: As gensim's default: analogy answers are searched among this many most frequent words.
ANALOGY_RESTRICT_VOCAB = 300_000


def default_eval_file(name: str) -> str | None:
    """The path of evaluation set ``name`` (a key of ``EVAL_FILES``) in gensim's test data, or None without gensim."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        return None
    path = datapath(EVAL_FILES[name])
    return path if os.path.isfile(path) else None


@dataclass
class WordPairs:
    """Word pairs with a human similarity score each."""

    first: list[str]
    second: list[str]
    scores: list[float]


def read_word_pairs(path: str) -> WordPairs:
    """Pairs from a tab-separated ``word1 word2 score`` file (``#`` lines are comments), as gensim reads them."""
    first, second, scores = [], [], []
    for lineno, line in _lines(path):
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{path} line {lineno}: expected 'word1<TAB>word2<TAB>score', got {line[:60]!r}")
        try:
            scores.append(float(parts[2]))
        except ValueError:
            raise DataError(f"{path} line {lineno}: the score {parts[2]!r} is not a number") from None
        first.append(parts[0])
        second.append(parts[1])
    if not scores:
        raise DataError(f"{path} holds no word pairs")
    return WordPairs(first, second, scores)


def read_analogies(path: str) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """Sections of a Google-format analogy file: ``: section`` headers, then ``a b c d`` lines."""
    sections: list[tuple[str, list[tuple[str, str, str, str]]]] = []
    for lineno, line in _lines(path):
        if line.startswith(":"):
            sections.append((line[1:].strip(), []))
            continue
        words = line.split()
        if len(words) != 4 or not sections:
            raise DataError(f"{path} line {lineno}: expected ': section' or four words 'a b c d', got {line[:60]!r}")
        sections[-1][1].append((words[0], words[1], words[2], words[3]))
    if not any(questions for _, questions in sections):
        raise DataError(f"{path} holds no analogy questions")
    return sections


def _lines(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, start=1):
                line = raw.strip()
                if line and not line.startswith("#"):
                    yield lineno, line
    except OSError as exc:
        raise DataError(f"cannot read the evaluation file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte offset {exc.start})") from None


class WordVectorIndex:
    """Unit-normalised vectors with a case-insensitive word lookup (the most frequent casing wins).

    ``words`` must be ordered by frequency, most frequent first (as hfssl's and gensim's vocabularies are).
    """

    def __init__(self, words: Sequence[str], vectors: torch.Tensor, restrict_vocab: int | None = None):
        if len(words) != vectors.shape[0]:
            raise ValueError(f"{len(words)} words but {vectors.shape[0]} vectors")
        limit = len(words) if restrict_vocab is None else min(restrict_vocab, len(words))
        self.words = list(words[:limit])
        vectors = vectors[:limit].detach().to(torch.float32)
        # Zero vectors (never trained) stay zero instead of becoming NaN.
        self.unit = vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)
        self.index: dict[str, int] = {}
        for i, word in enumerate(self.words):
            self.index.setdefault(word.upper(), i)
        # Row -> the row answering for its case-folded form (differs only for a word's rarer casings).
        self.canonical = torch.tensor([self.index[w.upper()] for w in self.words], dtype=torch.long)

    def lookup(self, word: str) -> int | None:
        return self.index.get(word.upper())

    def nearest(self, word: str, k: int = 8) -> list[tuple[str, float]]:
        """The ``k`` words closest in cosine to ``word`` (itself excluded); empty if it is not in the vocabulary."""
        i = self.lookup(word)
        if i is None:
            return []
        sims = self.unit @ self.unit[i]
        sims[i] = -math.inf
        top = torch.topk(sims, min(k, len(self.words) - 1))
        return [(self.words[j], round(float(s), 4)) for s, j in zip(top.values.tolist(), top.indices.tolist())]


def evaluate_word_pairs(index: WordVectorIndex, pairs: WordPairs) -> dict[str, float]:
    """Spearman and Pearson correlation of cosine similarity with the human scores, on in-vocabulary pairs."""
    from scipy.stats import pearsonr, spearmanr

    a, b, human = [], [], []
    for w1, w2, score in zip(pairs.first, pairs.second, pairs.scores):
        i, j = index.lookup(w1), index.lookup(w2)
        if i is not None and j is not None:
            a.append(i)
            b.append(j)
            human.append(score)
    total = len(pairs.scores)
    result = {"pairs": len(human), "oov_ratio": round(1 - len(human) / total, 4)}
    if len(human) < 3:
        return {**result, "spearman": float("nan"), "pearson": float("nan")}
    cosine = (index.unit[a] * index.unit[b]).sum(dim=1).tolist()
    with warnings.catch_warnings():  # constant cosines (untrained vectors) give NaN, which says it already
        warnings.simplefilter("ignore")
        result["spearman"] = float(spearmanr(human, cosine).statistic)
        result["pearson"] = float(pearsonr(human, cosine).statistic)
    return result


def evaluate_analogies(index: WordVectorIndex, sections: list[tuple[str, list[tuple[str, str, str, str]]]],
                       batch_size: int = 1024) -> dict[str, object]:
    """3CosAdd accuracy per section and overall, on questions whose four words are all in the vocabulary."""
    questions, names = [], []
    total = 0
    for name, items in sections:
        for words in items:
            total += 1
            ids = [index.lookup(w) for w in words]
            if None not in ids:
                questions.append(ids)
                names.append(name)
    result: dict[str, object] = {"questions": len(questions), "oov_ratio": round(1 - len(questions) / max(total, 1), 4)}
    if not questions:
        return {**result, "accuracy": float("nan"), "sections": {}}
    q = torch.tensor(questions, dtype=torch.long)
    correct = torch.zeros(len(q), dtype=torch.bool)
    unit = index.unit
    for start in range(0, len(q), batch_size):
        chunk = q[start:start + batch_size]
        # b - a + c on unit vectors, as gensim's most_similar(positive=[b, c], negative=[a]).
        target = unit[chunk[:, 1]] - unit[chunk[:, 0]] + unit[chunk[:, 2]]
        sims = target @ unit.T
        rows = torch.arange(len(chunk))[:, None]
        sims[rows, chunk[:, :3]] = -math.inf  # the question words are never the answer
        # As gensim: among the 5 best, the first that is not another casing of a question word is the answer.
        top = index.canonical[sims.topk(min(5, sims.shape[1]), dim=1).indices]
        allowed = (top[..., None] != chunk[:, None, :3]).all(dim=-1)
        first = allowed.to(torch.int8).argmax(dim=1)
        predicted = top[rows[:, 0], first]
        correct[start:start + len(chunk)] = allowed.any(dim=1) & (predicted == chunk[:, 3])
    result["accuracy"] = int(correct.sum()) / len(correct)
    per_section: dict[str, dict[str, float]] = {}
    flags = correct.tolist()
    for name in dict.fromkeys(names):
        hits = [ok for n, ok in zip(names, flags) if n == name]
        per_section[name] = {"accuracy": sum(hits) / len(hits), "questions": len(hits)}
    # Google's split: the first five sections are semantic, the "gram*" ones syntactic.
    for kind, test in (("semantic", lambda n: not n.startswith("gram")), ("syntactic", lambda n: n.startswith("gram"))):
        hits = [ok for n, ok in zip(names, flags) if test(n)]
        if hits:
            result[f"{kind}_accuracy"] = sum(hits) / len(hits)
    result["sections"] = per_section
    return result


def evaluate_word_vectors(words: Sequence[str], vectors: torch.Tensor, *, wordsim_file: str | None = None,
                          simlex_file: str | None = None, analogy_file: str | None = None,
                          restrict_vocab: int = ANALOGY_RESTRICT_VOCAB) -> dict[str, dict]:
    """Every evaluation whose file is given, as ``{"wordsim353": {...}, "simlex999": {...}, "google_analogy": {...}}``."""
    with torch.autocast("cpu", enabled=False):  # also inside a bf16 training loop: cosines in float32
        return _evaluate(words, vectors.float().cpu(), wordsim_file, simlex_file, analogy_file, restrict_vocab)


def _evaluate(words: Sequence[str], vectors: torch.Tensor, wordsim_file: str | None, simlex_file: str | None,
              analogy_file: str | None, restrict_vocab: int) -> dict[str, dict]:
    results: dict[str, dict] = {}
    index = WordVectorIndex(words, vectors)
    if wordsim_file:
        results["wordsim353"] = evaluate_word_pairs(index, read_word_pairs(wordsim_file))
    if simlex_file:
        results["simlex999"] = evaluate_word_pairs(index, read_word_pairs(simlex_file))
    if analogy_file:
        restricted = index if restrict_vocab >= len(index.words) else WordVectorIndex(words, vectors, restrict_vocab)
        results["google_analogy"] = evaluate_analogies(restricted, read_analogies(analogy_file))
    return results


def resolve_eval_files(given: dict[str, str | None]) -> dict[str, str | None]:
    """Each evaluation set's file: the path given, else gensim's copy, else None (that set is skipped)."""
    return {name: given.get(name) or default_eval_file(name) for name in EVAL_FILES}


def neighbour_lines(words: Sequence[str], vectors: torch.Tensor, probe_words: Sequence[str], k: int = 6
                    ) -> list[str]:
    """``nearest to 'king': queen (0.71), ...`` for the probe words in the vocabulary (a sanity check to read);
    without any, for a few frequent words past the function words."""
    index = WordVectorIndex(words, vectors)
    probes = [w for w in probe_words if w and index.lookup(w) is not None] or list(words[100:600:100])
    return [f"nearest to {word!r}: " + ", ".join(f"{w} ({s:.2f})" for w, s in index.nearest(word, k))
            for word in probes]


def summary_scores(results: dict[str, dict]) -> dict[str, float]:
    """The headline numbers of :func:`evaluate_word_vectors` as flat ``name: value`` pairs (for logs and tables)."""
    flat: dict[str, float] = {}
    for name, key in (("wordsim353", "spearman"), ("simlex999", "spearman"), ("google_analogy", "accuracy")):
        if name in results:
            flat[f"{name}_{key}"] = results[name][key]
            flat[f"{name}_oov_ratio"] = results[name]["oov_ratio"]
    return flat


__all__ = ["EVAL_FILES", "WordPairs", "WordVectorIndex", "default_eval_file", "evaluate_analogies",
           "evaluate_word_pairs", "evaluate_word_vectors", "neighbour_lines", "read_analogies", "read_word_pairs",
           "resolve_eval_files", "summary_scores"]
