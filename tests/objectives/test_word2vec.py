"""hfssl.objectives.word2vec against word2vec's definitions, written out pair by pair in plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hfssl.errors import ConfigError
from hfssl.models.word2vec import Word2VecConfig, Word2VecModel
from hfssl.objectives.word2vec import (
    CUM_TABLE_DOMAIN,
    Word2VecObjective,
    distinct_rows,
    keep_probabilities,
    negative_sampling_table,
    sample_negatives,
)

COUNTS = np.array([1000, 400, 120, 50, 20, 9, 5, 5, 3, 1], dtype=np.int64)


def batch_of(rows: list[list[int]], starts: list[list[int]]) -> dict:
    return {"word_ids": torch.tensor(rows), "sentence_starts": torch.tensor(starts, dtype=torch.bool),
            "num_words": sum(w >= 0 for row in rows for w in row)}


def test_subsampling_keeps_words_with_word2vec_probability():
    keep = keep_probabilities(COUNTS, 1e-2).numpy()
    threshold = 1e-2 * COUNTS.sum()
    for count, p in zip(COUNTS, keep):
        assert p == pytest.approx(min(1.0, (math.sqrt(count / threshold) + 1) * threshold / count), rel=1e-6)
    assert keep[0] < 0.2 and keep[-1] == 1.0
    assert (keep_probabilities(COUNTS, 0).numpy() == 1).all()


def test_the_negative_table_is_gensims_cum_table():
    table = negative_sampling_table(COUNTS, 0.75).numpy()
    weights = COUNTS.astype(np.float64) ** 0.75
    cumulative, expected = 0.0, []
    for w in weights:  # gensim's make_cum_table, as written there
        cumulative += w
        expected.append(round(cumulative / weights.sum() * CUM_TABLE_DOMAIN))
    assert table.tolist() == expected and table[-1] == CUM_TABLE_DOMAIN


def test_negatives_follow_the_unigram_distribution_to_the_three_quarters():
    table = negative_sampling_table(COUNTS, 0.75)
    draws = sample_negatives(table, (200_000,), torch.Generator().manual_seed(0))
    observed = np.bincount(draws.numpy(), minlength=len(COUNTS)) / len(draws)
    expected = COUNTS ** 0.75 / (COUNTS ** 0.75).sum()
    assert np.abs(observed - expected).max() < 0.005


def reference_windows(batch: dict, prepared: dict, window: int) -> np.ndarray:
    """Context slots by word2vec's definition: the kept words of each row in order (sub-sampled ones removed
    first), each centre seeing up to ``reach`` words on each side within its sentence."""
    words, kept, reach = prepared["words"], prepared["kept"], prepared["reach"]
    rows, length = words.shape
    slots = [o for o in range(-window, window + 1) if o != 0]
    expected = np.zeros((rows, length, 2 * window), dtype=bool)
    for r in range(rows):
        ids = batch["word_ids"][r].tolist()
        sentence = np.cumsum(batch["sentence_starts"][r].numpy())
        positions = [i for i in range(len(ids)) if ids[i] >= 0]
        n = int(kept[r].sum())
        kept_positions = positions if n == len(positions) else None
        # The prepared row must be a subsequence of the input row: recover the kept positions greedily.
        if kept_positions is None:
            kept_positions, i = [], 0
            for w in words[r, :n].tolist():
                while ids[i] != w:
                    i += 1
                kept_positions.append(i)
                i += 1
        for c in range(n):
            for s, o in enumerate(slots):
                j = c + o
                if 0 <= j < n and abs(o) <= reach[r, c] and sentence[kept_positions[j]] == sentence[kept_positions[c]]:
                    expected[r, c, s] = True
    return expected


@pytest.mark.parametrize("sample", [0.0, 1e-2])
def test_windows_are_word2vecs_dynamic_windows_within_sentences(sample):
    objective = Word2VecObjective(COUNTS, window=3, negative=2, sample=sample)
    gen = torch.Generator().manual_seed(1)
    rows = [[0, 1, 2, 0, 3, 0, 4, 5, 0, 6, 1, 0], [7, 0, 8, 9, 0, 1, 2, -1, -1, -1, -1, -1]]
    starts = [[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1]]
    batch = batch_of(rows, starts)
    for _ in range(20):
        prepared = objective.prepare_batch(batch, generator=gen)
        assert prepared["context"].shape[-1] == 6
        assert np.array_equal(prepared["context"].numpy(), reference_windows(batch, prepared, 3))
        assert ((prepared["reach"] >= 1) & (prepared["reach"] <= 3)).all()
        if sample == 0:  # nothing dropped: the rows are the words themselves
            assert prepared["words"][0].tolist() == rows[0] and prepared["words"][1, :7].tolist() == rows[1][:7]
        assert objective.target_counts(prepared)["loss"] == prepared["context"].sum()


def test_frequent_words_are_subsampled_at_their_rate():
    objective = Word2VecObjective(COUNTS, window=2, negative=1, sample=1e-2)
    batch = batch_of([[0] * 500 + [9] * 500], [[1] + [0] * 999])
    gen = torch.Generator().manual_seed(0)
    kept_frequent = kept_rare = 0
    for _ in range(20):
        prepared = objective.prepare_batch(batch, generator=gen)
        words = prepared["words"][prepared["kept"]]
        kept_frequent += int((words == 0).sum())
        kept_rare += int((words == 9).sum())
    assert kept_rare == 20 * 500
    assert kept_frequent / (20 * 500) == pytest.approx(float(objective.keep_prob[0]), abs=0.02)


def model_and_batch(architecture: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = Word2VecModel(Word2VecConfig(vocab_size=len(COUNTS), vector_size=6)).double()
    with torch.no_grad():  # non-zero output vectors so every term matters
        model.output_embeddings.weight.normal_(0, 0.5)
        model.input_embeddings.weight.normal_(0, 0.5)
    objective = Word2VecObjective(COUNTS, architecture=architecture, window=2, negative=3, sample=0.0, **kwargs)
    batch = batch_of([[0, 1, 2, 3, 4, 1, 0, 5], [6, 7, 0, 8, 9, 0, -1, -1]],
                     [[1, 0, 0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 1, 1]])
    return model, objective, objective.prepare_batch(batch, generator=torch.Generator().manual_seed(seed))


def reference_loss(model, prepared, architecture: str, window: int, cbow_mean: bool = True) -> tuple[torch.Tensor, int]:
    """The word2vec loss written pair by pair (skip-gram: context input vector predicts the centre, as
    word2vec.c/gensim; CBOW: mean/sum of the context vectors), negatives equal to the centre skipped."""
    vin, vout = model.input_embeddings.weight, model.output_embeddings.weight
    words, context, negatives = prepared["words"], prepared["context"], prepared["negatives"]
    slots = [o for o in range(-window, window + 1) if o != 0]
    total, count = torch.zeros((), dtype=torch.float64), 0

    def term(h, centre, negs):
        loss = -torch.nn.functional.logsigmoid(h @ vout[centre])
        for n in negs:
            if n != centre:
                loss = loss - torch.nn.functional.logsigmoid(-(h @ vout[n]))
        return loss

    for r in range(words.shape[0]):
        for c in range(words.shape[1]):
            ctx = [int(words[r, c + o]) for s, o in enumerate(slots) if context[r, c, s]]
            if not ctx:
                continue
            centre, negs = int(words[r, c]), negatives[r, c].tolist()
            if architecture == "skipgram":
                for w in ctx:
                    total = total + term(vin[w], centre, negs)
                    count += 1
            else:
                h = sum(vin[w] for w in ctx)
                total = total + term(h / len(ctx) if cbow_mean else h, centre, negs)
                count += 1
    return total, count


@pytest.mark.parametrize("block_size", [1, 3, 16])
@pytest.mark.parametrize("architecture", ["skipgram", "cbow"])
def test_the_batched_loss_equals_the_pair_by_pair_loss(architecture, block_size):
    # Skip-gram's blocks of centres: one centre, blocks that do not divide the rows (8 words), one block per row.
    model, objective, prepared = model_and_batch(architecture, block_size=block_size)
    out = objective(model, prepared)
    expected, count = reference_loss(model, prepared, architecture, window=2)
    assert count > 10 and objective.target_counts(prepared)["loss"] == count
    assert out.loss_sums["loss"].item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_skipgram_gradients_are_those_of_the_pair_by_pair_loss(block_size):
    model, objective, prepared = model_and_batch("skipgram", seed=3, block_size=block_size)
    objective(model, prepared).loss_sums["loss"].backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference_loss(model, prepared, "skipgram", window=2)[0].backward()
    for a, b in zip(got, model.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cbow_mean", [True, False])
def test_cbow_passes_gensims_error_to_every_context_word(cbow_mean):
    """gensim's CBOW: with the mean each context vector receives the full error of the hidden vector, with the
    sum the error divided by the context size (the opposite of plain autograd)."""
    model, objective, prepared = model_and_batch("cbow", seed=5, cbow_mean=cbow_mean)
    objective(model, prepared).loss_sums["loss"].backward()
    got_in, got_out = model.input_embeddings.weight.grad.clone(), model.output_embeddings.weight.grad.clone()
    vin, vout = model.input_embeddings.weight.detach(), model.output_embeddings.weight.detach().clone().requires_grad_()
    words, context, negatives = prepared["words"], prepared["context"], prepared["negatives"]
    slots = [-2, -1, 1, 2]
    expected_in = torch.zeros_like(vin)
    loss = torch.zeros((), dtype=torch.float64)
    for r in range(words.shape[0]):
        for c in range(words.shape[1]):
            ctx = [int(words[r, c + o]) for s, o in enumerate(slots) if context[r, c, s]]
            if not ctx:
                continue
            h = sum(vin[w] for w in ctx) / (len(ctx) if cbow_mean else 1)
            h = h.clone().requires_grad_()
            centre = int(words[r, c])
            term = -torch.nn.functional.logsigmoid(h @ vout[centre])
            for n in negatives[r, c].tolist():
                if n != centre:
                    term = term - torch.nn.functional.logsigmoid(-(h @ vout[n]))
            (grad_h,) = torch.autograd.grad(term, h, retain_graph=True)
            for w in ctx:
                expected_in[w] += grad_h if cbow_mean else grad_h / len(ctx)
            loss = loss + term
    loss.backward()
    torch.testing.assert_close(got_in, expected_in, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_out, vout.grad, rtol=1e-9, atol=1e-12)


def test_distinct_rows_inverts_to_the_ids():
    ids = torch.tensor([[7, 2, 7], [0, 2, 9]])
    rows, inverse = distinct_rows(ids, 12)
    assert rows.tolist() == [0, 2, 7, 9]
    assert torch.equal(rows[inverse].view_as(ids), ids)


@pytest.mark.parametrize("architecture", ["skipgram", "cbow"])
def test_sparse_embeddings_get_one_coalesced_row_per_distinct_word_with_the_dense_gradient(architecture):
    """With ``sparse=True`` tables (--sparse_updates) the lookups give row-sparse gradients, already summed per
    word (sorted, one entry per row), equal to the dense gradients (rows absent from the batch: no entry)."""
    model, objective, prepared = model_and_batch(architecture, seed=4)
    objective(model, prepared).loss_sums["loss"].backward()
    dense = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model.input_embeddings.sparse = model.output_embeddings.sparse = True
    objective(model, prepared).loss_sums["loss"].backward()
    for param, expected in zip(model.parameters(), dense):
        grad = param.grad
        assert grad.is_sparse and grad.sparse_dim() == 1
        rows = grad._indices()[0]
        assert bool((rows[1:] > rows[:-1]).all())  # one entry per row, sorted
        torch.testing.assert_close(grad.to_dense(), expected, rtol=1e-12, atol=1e-14)
    # Every row with a non-zero dense gradient is present (untouched rows are the ones absent).
    for param, expected in zip(model.parameters(), dense):
        touched = set(param.grad._indices()[0].tolist())
        assert set(expected.abs().sum(dim=1).nonzero()[:, 0].tolist()) <= touched


def test_the_same_generator_state_gives_the_same_batch():
    objective = Word2VecObjective(COUNTS, window=3, negative=4, sample=1e-2)
    batch = batch_of([list(range(10)) * 3], [[1] + [0] * 29])
    a = objective.prepare_batch(batch, generator=torch.Generator().manual_seed(7))
    b = objective.prepare_batch(batch, generator=torch.Generator().manual_seed(7))
    for key in ("words", "context", "negatives", "reach"):
        assert torch.equal(a[key], b[key]), key


def test_bad_settings_are_config_errors():
    for kwargs, match in (({"architecture": "glove"}, "skipgram, cbow"), ({"window": 0}, "--window"),
                          ({"negative": 0}, "--negative"), ({"sample": -1.0}, "--sample")):
        with pytest.raises(ConfigError, match=match):
            Word2VecObjective(COUNTS, **kwargs)
