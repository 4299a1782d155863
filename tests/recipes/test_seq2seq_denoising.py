"""recipes/seq2seq_denoising.py as a user runs it: BART and T5 from scratch on real text, a trained tokenizer,
an export that AutoModelForSeq2SeqLM loads and that fills holes, exact resume, GLUE through
AutoModelForSequenceClassification, and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BartForConditionalGeneration,
    BartForSequenceClassification,
    BartModel,
    T5ForConditionalGeneration,
    T5ForSequenceClassification,
)

from tests.helpers import denoising
from tests.helpers.recipes import import_recipe, read_history

QUICK = ["--model_size", "tiny", "--max_seq_length", "32", "--per_device_train_batch_size", "8",
         "--max_eval_batches", "4", "--logging_steps", "5"]


@pytest.fixture
def recipe(repo_root):
    module = import_recipe(repo_root / "recipes" / "seq2seq_denoising.py")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield module
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A few hundred documents of real prose (the built-in corpus' first ones) in one .txt file per 20."""
    folder = tmp_path_factory.mktemp("corpus")
    texts = denoising.corpus_texts()
    for i in range(0, 200, 20):
        (folder / f"part{i:03d}.txt").write_text("\n\n".join(texts[i:i + 20]), encoding="utf-8")
    return folder


def run(recipe, *argv: str) -> None:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    recipe.main(list(argv))


def test_bart_trains_its_tokenizer_lowers_the_loss_exports_and_fills_masks(recipe, corpus, tmp_path, capsys):
    out = tmp_path / "bart"
    run(recipe, *QUICK, "--train_file", str(corpus / "*.txt"), "--vocab_size", "400", "--max_steps", "30",
        "--learning_rate", "3e-3", "--eval_steps", "15", "--checkpointing_steps", "0",
        "--noise", "text_infilling,sentence_permutation", "--output_dir", str(out))
    stdout = capsys.readouterr().out
    history = read_history(out)
    losses = [r["loss"] for r in history if "loss" in r]
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    assert losses[-1] < losses[0] - 0.5 and evals[-1] < evals[0]
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 400 and tok.mask_token == "<mask>"          # trained on the corpus, saved with the export
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert isinstance(model, BartForConditionalGeneration) and isinstance(AutoModel.from_pretrained(out), BartModel)
    assert model.config.decoder_start_token_id == tok.eos_token_id
    fill = next(line for line in stdout.splitlines() if line.startswith("fill: "))
    assert len(fill) > len("fill: ''")
    run_config = json.loads((out / "run_config.json").read_text())
    assert "text_infilling,sentence_permutation" in json.dumps(run_config)


def test_t5_span_corruption_trains_a_t5_tokenizer_and_resumes_bit_for_bit(recipe, corpus, tmp_path):
    """The corruption draws from the checkpointed generator: a resumed run is the uninterrupted one."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = [*QUICK, "--train_file", str(corpus / "*.txt"), "--noise", "span_corruption", "--vocab_size", "400",
              "--max_steps", "8", "--checkpointing_steps", "4", "--eval_steps", "8", "--logging_steps", "1",
              "--learning_rate", "3e-3", "--max_train_samples", "60"]
    run(recipe, *common, "--output_dir", str(full))
    model = AutoModelForSeq2SeqLM.from_pretrained(full)
    tok = AutoTokenizer.from_pretrained(full)
    assert isinstance(model, T5ForConditionalGeneration) and model.config.decoder_start_token_id == tok.pad_token_id
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    shutil.copytree(full / "checkpoints" / "step_4", resumed / "checkpoints" / "step_4")
    shutil.copytree(full / "tokenizer", resumed / "tokenizer")
    run(recipe, *common, "--resume_from_checkpoint", "latest", "--output_dir", str(resumed))
    one, two = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    logged = [[(r["step"], r.get("loss"), r.get("eval_loss")) for r in read_history(d)] for d in (full, resumed)]
    assert logged[0] == logged[1] and len([x for x in logged[0] if x[1] is not None]) == 8


def test_glue_runner_fine_tunes_bart_and_t5_exports_through_sequence_classification(recipe, corpus, tmp_path,
                                                                                     repo_root):
    rows = [("the film was good", "it was good", 1), ("a bad plot", "it was great", 0)] * 12
    for name, part in (("train", rows), ("dev", rows[:8])):
        with open(tmp_path / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("sentence1", "sentence2", "label"), *part])
    glue = import_recipe(repo_root / "recipes" / "glue_finetune.py")
    for family, cls in (("bart", BartForSequenceClassification), ("t5", T5ForSequenceClassification)):
        export = tmp_path / family
        denoising.tiny_model(family).save_pretrained(export)
        denoising.tokenizer(family).save_pretrained(export)
        model = AutoModelForSequenceClassification.from_pretrained(export, num_labels=2)
        assert isinstance(model, cls)
        AcceleratorState._reset_state(True)
        glue.main(["--model_name_or_path", str(export), "--train_file", str(tmp_path / "train.csv"),
                   "--validation_file", str(tmp_path / "dev.csv"), "--text_columns", "sentence1,sentence2",
                   "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
                   "--output_dir", str(tmp_path / f"glue-{family}")])
        (task,) = json.loads((tmp_path / f"glue-{family}" / "results.json").read_text())["tasks"].values()
        assert task["num_eval"] == 8 and 0.0 <= task["metrics"]["accuracy"]["mean"] <= 1.0


def one_line_error(recipe, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        run(recipe, *argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1, lines
    return info.value.code, lines[0]


def test_bad_input_is_one_line(recipe, corpus, tmp_path, capsys):
    bart_tok = denoising.save_tokenizer("bart", tmp_path / "bart-tok")
    t5_tok = denoising.save_tokenizer("t5", tmp_path / "t5-tok")
    data = ["--train_file", str(corpus / "part000.txt"), "--max_steps", "2", "--output_dir", str(tmp_path / "out"),
            *QUICK]
    cases = [
        (["--noise", "masking"], 2, "--noise 'masking': choose from text_infilling"),
        (["--noise", "span_corruption", "--tokenizer_name", str(bart_tok)], 1, "needs sentinel tokens <extra_id_0>"),
        (["--noise", "text_infilling", "--tokenizer_name", str(t5_tok)], 1, "has none: give a BART tokenizer"),
        (["--model_type", "t5", "--noise", "text_infilling", "--tokenizer_name", str(t5_tok)], 1,
         "is BART's corruption but the model is t5"),
        (["--model_type", "gpt2"], 1, "--model_type gpt2: denoising pretraining trains bart or t5"),
        (["--noise", "span_corruption", "--tokenizer_name", str(t5_tok), "--max_seq_length", "4000"], 1,
         "noise spans per row but the tokenizer has 100 sentinels"),
        (["--mask_ratio", "1.5"], 2, "--mask_ratio and --noise_density must be in (0, 1)"),
    ]
    for extra, code, message in cases:
        got_code, line = one_line_error(recipe, [*data, *extra], capsys)
        assert (got_code, message in line) == (code, True), (extra, line)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_the_uninterrupted_run(python_exe, repo_root, corpus, tmp_path):
    tok = denoising.save_tokenizer("bart", tmp_path / "tok")

    def command(out: Path, *extra: str) -> list[str]:
        return [python_exe, str(repo_root / "recipes" / "seq2seq_denoising.py"), *QUICK, "--tokenizer_name",
                str(tok), "--train_file", str(corpus / "*.txt"), "--noise", "text_infilling,sentence_permutation",
                "--max_steps", "60", "--checkpointing_steps", "10", "--eval_steps", "30", "--logging_steps", "3",
                "--shuffle_buffer_size", "32", "--config_overrides", "dropout=0.1", "--output_dir", str(out), *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    subprocess.run(command(reference), env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(command(interrupted), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = interrupted / "checkpoints" / "step_20"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert first.exists() and not (interrupted / "all_results.json").exists(), "killed too late to test resume"
    resumed = subprocess.run(command(interrupted, "--resume_from_checkpoint", "latest"), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    one, two = load_file(reference / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert all(torch.equal(one[k], two[k]) for k in one)
    keys = ("step", "loss", "eval_loss", "grad_norm", "lr")
    assert ([{k: r[k] for k in keys if k in r} for r in read_history(reference)]
            == [{k: r[k] for k in keys if k in r} for r in read_history(interrupted)])
