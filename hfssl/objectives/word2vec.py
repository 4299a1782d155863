"""word2vec with negative sampling: skip-gram and CBOW, as word2vec.c and gensim define them, batched on the device.

``prepare_batch`` turns blocks of word ids (``hfssl.data.words``) into training windows, with every random
draw taken from the loop's checkpointed generator (so ``--resume_from_checkpoint`` is exact):

1. **Sub-sampling** (``sample``): a word with corpus count ``c`` is kept with probability
   ``(sqrt(c / (sample * N)) + 1) * sample * N / c`` (capped at 1; ``N`` = words in the vocabulary), and
   dropped words are removed *before* windows are built, so windows reach further, as in gensim.
2. **Dynamic window** (``window``): each centre draws ``b`` uniformly in ``[0, window)`` and sees the
   ``window - b`` words on each side (closer words are used more often), within its sentence (document or
   ``max_sentence_length`` block).
3. **Negatives** (``negative``): drawn from the unigram distribution raised to ``ns_exponent`` (0.75) by
   binary search in a cumulative table of integer weights (gensim's ``cum_table``); a negative equal to the
   positive target is skipped, as in word2vec.c.

``forward`` scores everything with batched matrix products, no per-pair Python loop. Skip-gram cuts each row
into blocks of ``block_size`` centres and multiplies a block's target vectors with the ``block_size + 2 * window``
input vectors its windows reach, in one dense product per block; the (centre, context, target) scores are a band
of that product, read by a strided view (see ``_skipgram_loss``). CBOW multiplies each centre's stacked context
vectors with its targets.

Row-sparse gradients: when the model's embedding tables have ``sparse=True`` (``recipes/word2vec.py
--sparse_updates``, on by default for one CPU process), the lookups return sparse gradients with one summed row
per distinct word of the batch, which ``hfssl.training.optim_sparse.RowSparseAdamW`` applies to those rows only
(no dense ``V x D`` gradient, no full-table optimizer pass), with the same result as dense AdamW.

* **Skip-gram**: each (centre, context) pair predicts the centre's output vector from the *context's* input
  vector (word2vec.c's and gensim's orientation) against the centre's negatives. The ``negative`` words are
  drawn once per centre and shared by its context words (Ji et al. 2016, "Parallelizing Word2Vec in Shared
  and Distributed Memory"; gensim draws them per pair): the same expected gradient with ~10x fewer rows to
  gather. Loss term count: pairs.
* **CBOW**: the mean (``cbow_mean``) or sum of the context input vectors predicts the centre against its own
  negatives; as gensim, every context vector then receives the full error with the mean and the error
  divided by the context size with the sum. Loss term count: centres with at least one context word.

Losses are sums of ``-log sigmoid(±score)`` over targets, divided by the loop by the global count, so
accumulation and multi-process training are exact.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hfssl.errors import ConfigError
from hfssl.objectives.base import Objective, ObjectiveOutput

ARCHITECTURES = ("skipgram", "cbow")
#: Integer weights of the cumulative negative-sampling table sum to this (gensim's domain), so sampling is exact
#: integer arithmetic, identical on every device.
CUM_TABLE_DOMAIN = 2**31 - 1


def keep_probabilities(counts: np.ndarray, sample: float) -> torch.Tensor:
    """Sub-sampling keep probability per word (word2vec.c / gensim formula; 1 everywhere when ``sample`` is 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return torch.ones(len(counts), dtype=torch.float32)
    threshold = sample * counts.sum()
    keep = (np.sqrt(counts / threshold) + 1) * threshold / counts
    return torch.from_numpy(np.minimum(keep, 1.0)).to(torch.float32)


def negative_sampling_table(counts: np.ndarray, ns_exponent: float = 0.75) -> torch.Tensor:
    """Cumulative integer weights of ``count ** ns_exponent`` (int64, last entry = ``CUM_TABLE_DOMAIN``)."""
    weights = np.asarray(counts, dtype=np.float64) ** ns_exponent
    cumulative = np.round(np.cumsum(weights) / weights.sum() * CUM_TABLE_DOMAIN).astype(np.int64)
    return torch.from_numpy(cumulative)


def sample_negatives(cum_table: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None
                     ) -> torch.Tensor:
    """Word ids drawn from the distribution of ``cum_table`` (see :func:`negative_sampling_table`)."""
    draws = torch.randint(0, int(cum_table[-1]), shape, generator=generator, device=cum_table.device)
    return torch.searchsorted(cum_table, draws, right=True).clamp_(max=len(cum_table) - 1)


def distinct_rows(ids: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values of ``ids`` (sorted) and each id's position among them: ``rows[inverse] == ids``.

    A presence mask over the table and a running count (linear in table size + ids, no sort)."""
    flat = ids.reshape(-1)
    present = torch.zeros(num_rows, dtype=torch.bool, device=ids.device)
    present[flat] = True
    rows = present.nonzero()[:, 0]
    inverse = (torch.cumsum(present, 0) - 1)[flat]
    return rows, inverse


class _RowSparseLookup(torch.autograd.Function):
    """``weight[ids]`` whose gradient is a sparse COO tensor with one (coalesced) row per distinct id.

    As ``nn.Embedding(sparse=True)``, but the optimizer receives the rows already summed: torch's own sparse
    embedding gradient has one row per *lookup* (3-4x more rows for word2vec's tables), which the optimizer
    would have to sort and sum again at every step."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        rows, inverse = distinct_rows(ids, weight.shape[0])
        ctx.save_for_backward(rows, inverse)
        ctx.table_shape = weight.shape
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        rows, inverse = ctx.saved_tensors
        dim = ctx.table_shape[1]
        values = torch.zeros(len(rows), dim, dtype=grad.dtype, device=grad.device)
        values.index_add_(0, inverse, grad.reshape(-1, dim))
        return torch.sparse_coo_tensor(rows[None], values, ctx.table_shape, is_coalesced=True,
                                       check_invariants=False), None


def lookup(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """``embedding(ids)``; with ``embedding.sparse`` the gradient is row-sparse, one row per distinct id."""
    if embedding.sparse and torch.is_grad_enabled() and embedding.weight.requires_grad:
        return _RowSparseLookup.apply(embedding.weight, ids)
    return embedding(ids)


def _at_least_float32(scores: torch.Tensor) -> torch.Tensor:
    """Scores from a bf16/fp16 autocast matmul are summed in float32 (float64 stays float64)."""
    return scores if scores.dtype == torch.float64 else scores.float()


class Word2VecObjective(Objective):
    """Skip-gram or CBOW with negative sampling on a ``hfssl.models.word2vec.Word2VecModel`` backbone."""

    primary_term: ClassVar[str] = "loss"

    def __init__(self, counts: np.ndarray, *, architecture: str = "skipgram", window: int = 5, negative: int = 5,
                 sample: float = 1e-3, ns_exponent: float = 0.75, cbow_mean: bool = True, block_size: int = 16):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
        if window < 1:
            raise ConfigError(f"--window must be at least 1, got {window}")
        if negative < 1:
            raise ConfigError(f"--negative must be at least 1 (this is word2vec with negative sampling), got {negative}")
        if sample < 0:
            raise ConfigError(f"--sample must be >= 0 (0 disables sub-sampling), got {sample}")
        self.architecture = architecture
        self.window = window
        self.negative = negative
        self.sample = sample
        self.cbow_mean = cbow_mean
        self.block_size = block_size
        # Derived from the vocabulary counts, never trained: not part of checkpoints (persistent=False).
        self.register_buffer("keep_prob", keep_probabilities(counts, sample), persistent=False)
        self.register_buffer("cum_table", negative_sampling_table(counts, ns_exponent), persistent=False)
        # The context slots of a window: offsets -window..-1, 1..window (the centre is not a slot).
        offsets = [o for o in range(-window, window + 1) if o != 0]
        self.slot_offsets = offsets
        self.register_buffer("slot_index", torch.tensor([o + window for o in offsets]), persistent=False)
        self.register_buffer("slot_distance", torch.tensor([abs(o) for o in offsets]), persistent=False)

    # ------------------------------------------------------------------ windows, on the device
    def prepare_batch(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        word_ids, starts = batch["word_ids"].long(), batch["sentence_starts"]
        rows, length = word_ids.shape
        W = self.window
        present = word_ids >= 0
        sentence = torch.cumsum(starts.to(torch.int32), dim=1)
        if self.sample > 0:
            uniform = torch.rand(rows, length, generator=generator, device=word_ids.device)
            keep = present & (uniform < self.keep_prob[word_ids.clamp(min=0)])
        else:
            keep = present
        # Drop the sub-sampled words: a stable sort moves the kept ones to the front of each row, in order.
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
        words = torch.gather(word_ids, 1, order).clamp_(min=0)
        sentence = torch.gather(sentence, 1, order)
        keep = torch.gather(keep, 1, order)
        if words.device.type == "cpu":
            # On a CPU the rows are cut to the longest kept row: a host sync there costs nothing, and ~a third of
            # the positions (the sub-sampled ones) are not computed at all. Accelerators keep static shapes.
            width = max(int(keep.sum(dim=1).max()), 1)
            words, sentence, keep = words[:, :width], sentence[:, :width], keep[:, :width]
        reach = W - torch.randint(0, W, words.shape, generator=generator, device=words.device)
        # Context slots [rows, length, 2W]: inside the row, kept, same sentence, within this centre's window.
        keep_win = F.pad(keep, (W, W), value=False).unfold(1, 2 * W + 1, 1)[..., self.slot_index]
        sentence_win = F.pad(sentence, (W, W), value=-1).unfold(1, 2 * W + 1, 1)[..., self.slot_index]
        context = (keep_win & (sentence_win == sentence[..., None]) & (self.slot_distance <= reach[..., None])
                   & keep[..., None])
        negatives = sample_negatives(self.cum_table, (*words.shape, self.negative), generator)
        return {"words": words, "kept": keep, "sentence": sentence, "reach": reach, "context": context,
                "negatives": negatives, "num_words": batch.get("num_words", 0)}

    def target_counts(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        context = batch["context"]
        if self.architecture == "skipgram":
            return {"loss": context.sum()}
        return {"loss": context.any(dim=-1).sum()}

    def input_tokens(self, batch: dict[str, Any]) -> int:
        """Corpus words in the batch before sub-sampling (what gensim's words/s counts)."""
        return int(batch.get("num_words", 0))

    # ------------------------------------------------------------------ loss
    def forward(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        words, context, negatives = batch["words"], batch["context"], batch["negatives"]
        # Output targets of each centre: itself (positive) then its negatives; a negative equal to the
        # centre is skipped (weight 0), as word2vec.c does.
        targets = torch.cat([words[..., None], negatives], dim=-1)  # [rows, length, 1 + negative]
        target_weight = torch.cat([torch.ones_like(words[..., None], dtype=torch.bool),
                                   negatives != words[..., None]], dim=-1)
        if self.architecture == "skipgram":
            loss = self._skipgram_loss(model, words, context, targets, target_weight)
        else:
            loss = self._cbow_loss(model, words, context, targets, target_weight)
        return ObjectiveOutput(loss_sums={"loss": loss})

    def _sign(self, like: torch.Tensor) -> torch.Tensor:
        """+1 for the positive, -1 for negatives: loss = softplus(-sign * score) = -log sigmoid(sign * score)."""
        sign = torch.full((1 + self.negative,), -1.0, device=like.device,
                          dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)
        sign[0] = 1.0
        return sign

    def _blocks(self, length: int) -> tuple[int, int]:
        """Centres per block and blocks per row: a block's scores are one dense matrix product (see
        ``_skipgram_loss``); smaller blocks waste fewer products, larger ones make better matrix products."""
        block = min(self.block_size, length)
        return block, -(-length // block)

    def _skipgram_loss(self, model: nn.Module, words: torch.Tensor, context: torch.Tensor, targets: torch.Tensor,
                       target_weight: torch.Tensor) -> torch.Tensor:
        """Each (centre, context) pair scores the context's input vector against the centre's targets.

        The pairs form a band: centre ``j`` pairs with inputs ``j - W .. j + W``. Centres are cut into blocks of
        ``B``; the ``B + 2W`` input vectors a block reaches (gathered by the embedding lookup, so the table's
        gradient stays a plain lookup's) are multiplied with the block's ``B * (1 + negative)`` target vectors
        in one dense matrix product, and the band is read out of it by a strided view (no copy): a few times
        the products strictly needed, but at matrix-product speed instead of one tiny product per centre.
        """
        W, K = self.window, 1 + self.negative
        rows, length = words.shape
        B, nb = self._blocks(length)
        padded = nb * B
        ids_in = F.pad(words, (W, padded - length + W)).unfold(1, B + 2 * W, B)  # [rows, nb, B + 2W]
        inputs = lookup(model.input_embeddings, ids_in.reshape(rows * nb, B + 2 * W))  # [rows*nb, B + 2W, dim]
        ids_out = F.pad(targets, (0, 0, 0, padded - length)).reshape(rows * nb, B * K)
        outputs = lookup(model.output_embeddings, ids_out)  # [rows*nb, B*K, dim]
        # Targets x inputs (not the transpose): the larger table's gradient, outputs', then comes out contiguous.
        scores = torch.bmm(outputs, inputs.transpose(1, 2))  # [rows*nb, B*K, B + 2W]
        # Centre j of a block, target k, input j + W + o: element (j*K + k, j + W + o) of its block's product.
        span = B + 2 * W
        band = scores.as_strided((rows * nb, B, 2 * W + 1, K), (scores.stride(0), K * span + 1, 1, span),
                                 scores.storage_offset())
        # Weights [rows, padded, 2W + 1, K]: context slots (the centre's own slot W never is one) x targets.
        slots = torch.cat([context[..., :W], torch.zeros_like(context[..., :1]), context[..., W:]], dim=-1)
        weight = slots[..., None] & target_weight[..., None, :]
        weight = F.pad(weight, (0, 0, 0, 0, 0, padded - length)).reshape(rows * nb, B, 2 * W + 1, K)
        sign = self._sign(inputs)
        losses = F.softplus(-sign * _at_least_float32(band))
        return (losses * weight).sum()

    def _cbow_loss(self, model: nn.Module, words: torch.Tensor, context: torch.Tensor, targets: torch.Tensor,
                   target_weight: torch.Tensor) -> torch.Tensor:
        W = self.window
        vectors_in = lookup(model.input_embeddings, words)  # [rows, length, dim]
        vectors_out = lookup(model.output_embeddings, targets)  # [rows, length, 1 + negative, dim]
        sign = self._sign(vectors_in)
        # The input vectors of each centre's 2W context slots, [rows, length, 2W, dim]: shifted slices of one
        # gather (each word's vector is looked up once, not once per window it falls in), stacked contiguous
        # so the batched matrix products below run at full speed.
        length = words.shape[1]
        padded = F.pad(vectors_in, (0, 0, W, W))
        windows = torch.stack([padded[:, W + o:W + o + length] for o in self.slot_offsets], dim=2)
        mask = context.to(vectors_in.dtype)
        summed = torch.matmul(mask[..., None, :], windows)[..., 0, :]  # [rows, length, dim]
        size = mask.sum(dim=-1, keepdim=True).clamp(min=1)
        # gensim: with the mean every context vector gets the full error, with the sum error / size.
        forward_scale, backward_scale = (1 / size, 1.0) if self.cbow_mean else (1.0, 1 / size)
        hidden = summed * backward_scale + (summed * forward_scale - summed * backward_scale).detach()
        scores = torch.matmul(vectors_out, hidden[..., None])[..., 0]  # [rows, length, 1 + negative]
        losses = F.softplus(-sign * _at_least_float32(scores))
        weight = context.any(dim=-1, keepdim=True) & target_weight
        return (losses * weight).sum()

__all__ = ["ARCHITECTURES", "Word2VecObjective", "distinct_rows", "keep_probabilities", "lookup", "negative_sampling_table",
           "sample_negatives"]
