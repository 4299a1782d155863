"""Pure, device-agnostic BERT masking: choose positions, then corrupt them 80/10/10.

Selection is *exact per sequence*, as in Google's ``create_pretraining_data.py``: each row
gets ``round(p * n)`` targets (at least one), where ``n`` counts its maskable tokens
(not special, not padding), capped at ``max_predictions_per_seq`` when one is given. Exact
counts keep the number of MLM targets per batch stable, so the loss normalisation does not
swing with the luck of a Bernoulli draw. Of the chosen tokens each one independently becomes
``[MASK]`` (80%), a random non-special token (10%) or stays unchanged (10%).

Whole-word masking uses the same code path: tokens are grouped into words (a word is a
token plus its following ``##`` continuation pieces), words are visited in a random order
and taken while the running token count stays within the target; a word that would overshoot
is skipped and later, shorter words still fill the budget (a few vectorised rounds). A row gets
at most ``round(p * n)`` targets, usually exactly that many, and a word is never split.
Token-level masking is the special case where every token starts its own word.

Everything is vectorised (sort + scatter) so it runs on the GPU inside the objective and
gives a fresh mask on every call (dynamic masking, RoBERTa style).

Because the per-row count has a bound known from the batch *width* alone
(:func:`max_targets_per_row`), the targets fit a fixed number of slots per row
(:func:`prediction_positions`): the sparse MLM head then runs on a ``(batch, slots)`` gather with
static shapes, without the device-to-host sync and the data-dependent shape of ``hidden[labels != -100]``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

IGNORE_INDEX = -100
_WHOLE_WORD_PASSES = 4


def _rand(shape: torch.Size | tuple[int, ...], device: torch.device, generator: torch.Generator | None
          ) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=generator)


def random_token_candidates(vocab_size: int, special_token_ids: Iterable[int],
                            device: torch.device | str | None = None) -> torch.Tensor:
    """All ids in ``[0, vocab_size)`` except the special ones: the pool for the 10% random swaps."""
    keep = torch.ones(vocab_size, dtype=torch.bool, device=device)
    special = [i for i in special_token_ids if i is not None and 0 <= i < vocab_size]
    if special:
        keep[torch.tensor(special, device=device)] = False
    return keep.nonzero().squeeze(1)


def word_start_table(tokenizer, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool lookup ``table[token_id]``: False for WordPiece continuation pieces (``##ing``).

    Index it with ``input_ids`` on the device to get the per-token word starts that
    whole-word masking needs. Raises ValueError for tokenizers without such pieces.
    """
    prefix = "##"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        prefix = getattr(backend.model, "continuing_subword_prefix", None) or prefix
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    table = torch.ones(size, dtype=torch.bool)
    continuation = [idx for tok, idx in vocab.items() if tok.startswith(prefix) and len(tok) > len(prefix)]
    if not continuation:
        raise ValueError(
            f"whole-word masking needs a WordPiece tokenizer whose pieces start with {prefix!r}; "
            f"{type(tokenizer).__name__} has none"
        )
    table[torch.tensor(continuation)] = False
    return table.to(device)


def _targets_per_row(n_candidates: torch.Tensor, mlm_probability: float,
                     max_predictions_per_seq: int | None) -> torch.Tensor:
    """``round(p * n)`` (at least 1 where ``n > 0``), capped at ``max_predictions_per_seq``: the rule
    both the masking and the slot bound use, so the two can never disagree by a rounding step."""
    target = torch.floor(n_candidates.float() * mlm_probability + 0.5).long()
    target = torch.where(n_candidates > 0, target.clamp(min=1), target)
    if max_predictions_per_seq is not None:
        target = target.clamp(max=max_predictions_per_seq)
    return target


@functools.lru_cache(maxsize=256)
def max_targets_per_row(seq_len: int, mlm_probability: float, max_predictions_per_seq: int | None = None) -> int:
    """The most targets :func:`select_positions` can choose in a row of width ``seq_len``.

    The count rises with the number of maskable tokens, which is at most ``seq_len``, so this is a
    host-side bound from the shape alone (no device sync). Cached: it is asked once per step.
    """
    if max_predictions_per_seq is not None and max_predictions_per_seq < 1:
        raise ValueError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
    # Same float32 arithmetic as the masking itself, on a CPU scalar.
    return int(_targets_per_row(torch.tensor([seq_len]), mlm_probability, max_predictions_per_seq).item())


def prediction_positions(labels: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Long ``(batch, num_slots)``: the positions of each row's targets (labels != -100) in ascending
    order, then, in unused slots, positions of non-targets (their label is -100, so a gather of
    ``labels`` at these positions pads the slots with the ignore index by itself).

    Static shapes and no host sync (``topk`` on a key, not boolean indexing). A row with more than
    ``num_slots`` targets would lose some, so ``num_slots`` must be at least the row maximum, e.g.
    :func:`max_targets_per_row` for labels from :func:`mask_tokens`.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (batch, seq), got shape {tuple(labels.shape)}")
    seq = labels.shape[1]
    if not 0 < num_slots <= seq:
        raise ValueError(f"num_slots must be in [1, {seq}] for width {seq}, got {num_slots}")
    arange = torch.arange(seq, device=labels.device)
    # Targets keep their position as key, non-targets are pushed behind every target.
    key = arange + (labels == IGNORE_INDEX).long() * seq
    return torch.topk(key, num_slots, dim=1, largest=False, sorted=True).indices


def select_positions(
    candidates: torch.Tensor,
    mlm_probability: float,
    *,
    word_starts: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_predictions_per_seq: int | None = None,
) -> torch.Tensor:
    """Bool ``(batch, seq)`` of positions to predict, chosen among ``candidates``.

    ``word_starts`` (bool, same shape) groups a token with the continuation tokens after
    it; ``None`` means every token is its own word. ``max_predictions_per_seq`` caps the
    per-row count (BERT's flag of that name): fewer targets are *chosen*, none is dropped later.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    batch, seq = candidates.shape
    device = candidates.device
    starts = torch.ones_like(candidates) if word_starts is None else word_starts.clone()
    # A non-candidate (special/padding) token ends any word before it and starts a new one after it,
    # so a stray "##" piece after [SEP] never joins the special token's group.
    prev_not_cand = torch.ones_like(candidates)
    prev_not_cand[:, 1:] = ~candidates[:, :-1]
    starts |= ~candidates | prev_not_cand
    word_id = starts.long().cumsum(1) - 1                          # (B, S), word index of every token

    if max_predictions_per_seq is not None and max_predictions_per_seq < 1:
        raise ValueError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
    target = _targets_per_row(candidates.sum(1), mlm_probability, max_predictions_per_seq)

    ones = torch.ones_like(word_id)
    word_len = torch.zeros_like(word_id).scatter_add_(1, word_id, ones).gather(1, word_id)
    arange = torch.arange(seq, device=device).expand(batch, seq)
    chosen = torch.zeros_like(candidates)
    remaining = target
    # Token-level masking is exact after one pass. With whole words, a word that would overshoot
    # the budget ends a pass; later passes retry with the words that still fit (Google's greedy
    # "skip the word and continue", in a few vectorised rounds instead of a Python loop).
    for _ in range(1 if word_starts is None else _WHOLE_WORD_PASSES):
        eligible = candidates & ~chosen & (word_len <= remaining.unsqueeze(1))
        # One random key per word, shared by its tokens; ineligible tokens sort last.
        word_key = _rand((batch, seq), device, generator)
        token_key = word_key.gather(1, word_id).masked_fill(~eligible, 2.0)
        # Stable sort keeps each word's tokens contiguous even if two words drew the same key.
        order = torch.sort(token_key, dim=1, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, arange)  # position in the random order
        word_end_rank = torch.zeros_like(rank).scatter_reduce(1, word_id, rank, reduce="amax",
                                                              include_self=False)
        new = eligible & (word_end_rank.gather(1, word_id) < remaining.unsqueeze(1))
        chosen |= new
        remaining = remaining - new.sum(1)
    return chosen


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    special_tokens_mask: torch.Tensor,
    random_token_ids: torch.Tensor | None = None,
    vocab_size: int | None = None,
    mlm_probability: float = 0.15,
    word_starts: torch.Tensor | None = None,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    generator: torch.Generator | None = None,
    max_predictions_per_seq: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt ``input_ids`` (batch, seq) for MLM; returns ``(masked_input_ids, labels)``.

    ``special_tokens_mask`` is True where a token must never be chosen (special tokens and
    padding). ``random_token_ids`` is the 1-D pool of replacement ids (see
    :func:`random_token_candidates`), so a random replacement is never a special token.
    Giving ``vocab_size`` instead builds that pool from ``[0, vocab_size)`` minus the mask
    token and every id found at a special position of this batch; pass ``random_token_ids``
    to also exclude special tokens that do not occur in the batch (``[UNK]``, say).
    ``labels`` hold the original id at chosen positions and -100 elsewhere. Inputs are not
    modified; all tensors (and ``generator``) must live on ``input_ids.device``.
    ``max_predictions_per_seq`` caps the targets per row; a row never has more than
    ``max_targets_per_row(seq, mlm_probability, max_predictions_per_seq)``.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    if mask_replace_prob + random_replace_prob > 1.0:
        raise ValueError("mask_replace_prob + random_replace_prob must be <= 1")
    special = special_tokens_mask.bool()
    if random_token_ids is None:
        if vocab_size is None:
            raise ValueError("give random_token_ids or vocab_size")
        present = torch.unique(input_ids[special]).tolist()
        random_token_ids = random_token_candidates(vocab_size, [mask_token_id, *present], input_ids.device)
    if random_token_ids.numel() == 0:
        raise ValueError("random_token_ids is empty: the vocabulary has no ordinary tokens")
    chosen = select_positions(~special, mlm_probability, word_starts=word_starts, generator=generator,
                              max_predictions_per_seq=max_predictions_per_seq)
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)

    u = _rand(input_ids.shape, input_ids.device, generator)
    to_mask = chosen & (u < mask_replace_prob)
    to_random = chosen & (u >= mask_replace_prob) & (u < mask_replace_prob + random_replace_prob)
    pick = torch.randint(random_token_ids.numel(), input_ids.shape, device=input_ids.device, generator=generator)
    masked = input_ids.masked_fill(to_mask, mask_token_id)
    masked = torch.where(to_random, random_token_ids[pick].to(input_ids.dtype), masked)
    return masked, labels
