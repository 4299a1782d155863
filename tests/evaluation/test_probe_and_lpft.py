"""Linear probe freezes the encoder exactly; LP-FT fine-tunes from the probed head; the loop trains."""

from __future__ import annotations

import datasets
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

from hfssl.evaluation.finetune import build_model, make_dataloader, predict, tokenize_dataset, train
from hfssl.evaluation.glue import GLUE_TASKS
from hfssl.evaluation.linear_probe import extract_features, train_head
from hfssl.evaluation.lp_ft import head_state, lp_ft

SST2 = GLUE_TASKS["sst2"]


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


@pytest.fixture(scope="module")
def toy_train(tokenizer) -> datasets.Dataset:
    words = ["good", "bad"]
    rows = {"text_a": [f"this is {words[i % 2]} stuff number {i}" for i in range(48)], "label": [1 - i % 2 for i in range(48)]}
    return tokenize_dataset(datasets.Dataset.from_dict(rows), tokenizer, 32)


def _encoder_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier.")}


def test_features_are_the_heads_input(tiny_bert, tokenizer, toy_train, accelerator):
    set_seed(0)
    model = build_model(str(tiny_bert), SST2).eval()
    feats = extract_features(model, make_dataloader(toy_train, tokenizer, 16, shuffle=False), accelerator)
    assert feats.inputs.shape == (48, 32) and not feats.first_token
    batch = next(iter(make_dataloader(toy_train, tokenizer, 16, shuffle=False)))
    with torch.no_grad():
        pooled = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"]).pooler_output
    torch.testing.assert_close(feats.inputs[:16], pooled)
    assert feats.labels.tolist() == toy_train["labels"]


def test_linear_probe_leaves_encoder_bit_for_bit_unchanged(tiny_bert, tokenizer, toy_train, accelerator):
    set_seed(0)
    model = build_model(str(tiny_bert), SST2)
    before = _encoder_state(model)
    head_before = head_state(model)
    feats = extract_features(model, make_dataloader(toy_train, tokenizer, 16, shuffle=False), accelerator)
    losses = train_head(model, feats, regression=False, epochs=20, learning_rate=1e-2, batch_size=16, seed=0,
                        show_progress=False)
    after = _encoder_state(model)
    assert before.keys() == after.keys() and len(before) > 20
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(head_before["weight"], head_state(model)["weight"])
    assert losses[-1] < losses[0]


def test_lp_ft_fine_tunes_from_the_probed_head(tiny_bert, tokenizer, toy_train, accelerator):
    set_seed(0)
    model = build_model(str(tiny_bert), SST2)
    initial_head, initial_encoder = head_state(model), _encoder_state(model)
    feats = extract_features(model, make_dataloader(toy_train, tokenizer, 16, shuffle=False), accelerator)
    at_ft_start: dict[str, torch.Tensor] = {}

    def capture(m):
        at_ft_start.update(head_state(m))
        at_ft_start["encoder_word_embeddings"] = m.bert.embeddings.word_embeddings.weight.detach().clone()

    result = lp_ft(model, feats, make_dataloader(toy_train, tokenizer, 16, shuffle=True, seed=0), accelerator,
                   regression=False, lp_epochs=5, lp_learning_rate=1e-2, ft_learning_rate=1e-4, num_epochs=1,
                   lp_batch_size=16, seed=0, on_ft_begin=capture, logging_steps=1)
    # Fine-tuning started exactly from the probe's result, not from the random head...
    for key, value in result.probe_head_state.items():
        assert torch.equal(at_ft_start[key], value), key
    assert not torch.equal(result.probe_head_state["weight"], initial_head["weight"])
    # ...and from the untouched pretrained encoder; then it trained everything.
    assert torch.equal(at_ft_start["encoder_word_embeddings"], initial_encoder["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(head_state(model)["weight"], result.probe_head_state["weight"])
    changed = [k for k, v in _encoder_state(model).items() if not torch.equal(v, initial_encoder[k])]
    assert any("encoder.layer.0" in k for k in changed)
    assert result.ft_stats.steps == 3 and len(result.ft_stats.losses) == 3


def test_finetune_regression_reduces_loss_and_predicts_scores(tiny_bert, tokenizer, accelerator):
    rows = {"text_a": [f"score {i % 4} here" for i in range(64)], "text_b": ["pair"] * 64,
            "label": [float(i % 4) for i in range(64)]}
    ds = tokenize_dataset(datasets.Dataset.from_dict(rows), tokenizer, 16)
    set_seed(0)
    model = build_model(str(tiny_bert), GLUE_TASKS["stsb"])
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    stats = train(model, make_dataloader(ds, tokenizer, 8, shuffle=True), accelerator, learning_rate=1e-3,
                  num_epochs=3, logging_steps=8)
    assert stats.steps == 24 and stats.losses[-1][1] < stats.losses[0][1]
    preds, labels = predict(model, make_dataloader(ds, tokenizer, 32, shuffle=False), accelerator, regression=True)
    assert preds.dtype.kind == "f" and preds.shape == (64,)
    assert labels.tolist() == rows["label"]


def test_first_token_heads_are_probed_on_the_first_token(tokenizer, accelerator):
    # RoBERTa's head takes the sequence output but reads only <s>: the cache keeps just that token.
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                           type_vocab_size=2, num_labels=2)
    set_seed(0)
    model = RobertaForSequenceClassification(config)
    rows = {"text_a": ["a short one", "a somewhat longer sentence here"], "label": [0, 1]}
    ds = tokenize_dataset(datasets.Dataset.from_dict(rows), tokenizer, 16)
    feats = extract_features(model, make_dataloader(ds, tokenizer, 2, shuffle=False), accelerator)
    assert feats.first_token and feats.inputs.shape == (2, 32)
    model.eval()
    with torch.no_grad():
        batch = next(iter(make_dataloader(ds, tokenizer, 2, shuffle=False)))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        torch.testing.assert_close(model.classifier(feats.inputs.unsqueeze(1)), logits)


def _offset_features(n: int = 64, dim: int = 32, seed: int = 0):
    """Head inputs that share a large common vector and differ by a small class signal: what a random-init
    pooler or a barely pretrained encoder gives (docs/glue_results.md: between-example spread 0.2%-5%)."""
    from hfssl.evaluation.linear_probe import Features

    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    inputs = 5.0 * torch.randn(dim, generator=generator) + 0.01 * torch.randn(n, dim, generator=generator)
    inputs[:, 0] += 0.05 * (2 * labels - 1)
    return Features(inputs, labels)


def test_probe_standardises_the_features_and_folds_it_into_the_head(tiny_bert):
    """A probe on the raw offset features stays at chance; on standardised features it separates them, and
    after folding the model's own head does the same from raw features (what predict() and LP-FT use)."""
    features = _offset_features()
    accuracy = {}
    for standardise in (False, True):
        set_seed(0)
        model = build_model(str(tiny_bert), SST2)
        train_head(model, features, regression=False, epochs=100, learning_rate=5e-2, batch_size=64, seed=0,
                   show_progress=False, standardise=standardise)
        with torch.no_grad():
            predictions = model.classifier(features.inputs).argmax(-1)
        accuracy[standardise] = (predictions == features.labels).float().mean().item()
    assert accuracy[True] >= 0.95 and accuracy[False] <= 0.7, accuracy


def test_fold_standardisation_is_exact_and_finds_the_input_layer(tokenizer):
    from hfssl.evaluation.linear_probe import feature_stats, fold_standardisation, input_layer

    generator = torch.Generator().manual_seed(0)
    x = 3.0 + 0.1 * torch.randn(50, 16, generator=generator)
    mean, std = feature_stats(x)
    layer = torch.nn.Linear(16, 3)
    with torch.no_grad():
        expected = layer((x - mean) / std)
    fold_standardisation(layer, mean, std)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                           num_labels=2)
    head = RobertaForSequenceClassification(config).classifier
    assert input_layer(head, x[:2].unsqueeze(1)) is head.dense  # RoBERTa's head reads the first token via dense
    assert input_layer(torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 2)), x[:2]) is None


def test_gpt2_without_pad_token_pads_with_eos_and_probes_the_last_real_token(tmp_path, accelerator):
    """A GPT-2 export (no padding token, like the stock gpt2 tokenizer): batches pad with <|endoftext|>, and the
    probe caches the hidden state of each row's last real token, the one GPT2ForSequenceClassification scores."""
    from hfssl.evaluation.finetune import load_tokenizer
    from tests.evaluation.glue_fixtures import write_tiny_gpt2

    path = write_tiny_gpt2(tmp_path / "gpt2")
    tokenizer = load_tokenizer(str(path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    rows = {"text_a": ["a lovely film", "the concert was dreadful and boring", "what a trip"], "label": [1, 0, 1]}
    ds = tokenize_dataset(datasets.Dataset.from_dict(rows), tokenizer, 16)
    set_seed(0)
    model = build_model(str(path), SST2, pad_token_id=tokenizer.pad_token_id)
    assert model.config.pad_token_id == tokenizer.eos_token_id
    feats = extract_features(model, make_dataloader(ds, tokenizer, 3, shuffle=False), accelerator)
    assert not feats.first_token and feats.inputs.shape == (3, 32)
    with torch.no_grad():
        for i, text in enumerate(rows["text_a"]):
            alone = model.transformer(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, -1]
            torch.testing.assert_close(feats.inputs[i], alone, atol=1e-5, rtol=1e-4)
    train_head(model, feats, regression=False, epochs=2, learning_rate=1e-2, batch_size=2, show_progress=False)
    preds, labels = predict(model, make_dataloader(ds, tokenizer, 3, shuffle=False), accelerator, regression=False)
    assert preds.shape == (3,) and labels.tolist() == [1, 0, 1]


def test_classifier_from_a_pretraining_export_loads_without_the_report_table(tiny_bert, tmp_path, capfd, caplog):
    """transformers prints a LOAD REPORT table per seed and task for the expected part (new classifier, unused
    cls.* heads of a BertForPreTraining export); the runner says it in one line and warns only about surprises."""
    from transformers import AutoConfig, BertForPreTraining, BertModel

    config = AutoConfig.from_pretrained(tiny_bert)
    BertForPreTraining(config).save_pretrained(tmp_path / "pretraining")
    no_embeddings = BertModel(config)
    state = {k: v for k, v in no_embeddings.state_dict().items() if not k.startswith("embeddings.word_")}
    no_embeddings.save_pretrained(tmp_path / "broken", state_dict=state)
    with caplog.at_level("INFO", logger="hfssl"):
        build_model(str(tmp_path / "pretraining"), SST2)
        build_model(str(tmp_path / "broken"), SST2)
    assert "LOAD REPORT" not in capfd.readouterr().err
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("hfssl")]
    assert any(level == "INFO" and "unused checkpoint weights: cls.*" in m for level, m in records), records
    warnings = [m for level, m in records if level == "WARNING"]
    assert len(warnings) == 1 and "bert.embeddings.word_embeddings.weight" in warnings[0], records
