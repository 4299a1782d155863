"""recipes/gpt_clm.py end to end as a user runs it (real subprocesses, built-in corpus, tiny sizes)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaForCausalLM,
)


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    from hfssl.data.corpus import builtin_corpus_files, load_documents

    return [d["text"] for d in load_documents(train_file=builtin_corpus_files()).take(300)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from hfssl.data.corpus import builtin_corpus_files, load_documents
    from hfssl.data.tokenizer_training import train_tokenizer

    docs = load_documents(train_file=builtin_corpus_files()).take(300)
    path = tmp_path_factory.mktemp("gpt_tokenizer")
    train_tokenizer((d["text"] for d in docs), vocab_size=400, model_max_length=32).save_pretrained(path)
    return path


QUICK = ["--model_size", "tiny", "--vocab_size", "400", "--max_seq_length", "32", "--per_device_train_batch_size", "8",
         "--validation_split_documents", "16", "--max_eval_batches", "4", "--logging_steps", "10",
         "--checkpointing_steps", "20"]


@pytest.fixture
def gpt_main(repo_root):
    """The recipe's ``main`` imported in-process (fast: no interpreter start-up per run)."""
    spec = importlib.util.spec_from_file_location("gpt_clm_recipe", repo_root / "recipes" / "gpt_clm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass resolves the recipe's annotations through sys.modules
    spec.loader.exec_module(module)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield module.main
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def one_line_exit(main, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return info.value.code, err


def recipe(python_exe: str, repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TQDM_DISABLE", None)
    return subprocess.run([python_exe, str(repo_root / "recipes" / "gpt_clm.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_default_corpus_run_trains_a_tokenizer_lowers_the_loss_and_exports(python_exe, repo_root, tmp_path):
    out = tmp_path / "gpt"
    result = recipe(python_exe, repo_root, *QUICK, "--max_steps", "40", "--learning_rate", "3e-3",
                    "--eval_steps", "20", "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    # stderr is a pipe, not a terminal: progress comes as log lines at --logging_steps, not bar redraws.
    assert "\r" not in result.stderr
    progress = [line.split("hfssl.progress: ")[1] for line in result.stderr.splitlines() if "hfssl.progress" in line]
    assert [line.split(",")[0] for line in progress] == ["train: 10/40 (25%)", "train: 20/40 (50%)",
                                                          "train: 30/40 (75%)", "train: 40/40 (100%)"], progress
    assert all(" | loss=" in line and "step/s" in line for line in progress)
    sample = next(line for line in result.stdout.splitlines() if line.startswith("sample: "))
    assert ast.literal_eval(sample[len("sample: "):]).startswith("The"), sample
    records = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8")]
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert losses[-1] < losses[0] and evals[-1] < evals[0]
    results = json.load(open(out / "all_results.json"))
    assert results["eval_perplexity"] > 1 and results["global_step"] == 40

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 400
    # Trained with the vocabulary padded to a multiple of 64 (the recipe default); exported unpadded.
    checkpoint = load_file(out / "checkpoints" / "step_40" / "model.safetensors")
    assert checkpoint["backbone.transformer.wte.weight"].shape[0] == 448
    assert json.load(open(out / "config.json"))["vocab_size"] == 400
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, GPT2LMHeadModel) and isinstance(AutoModel.from_pretrained(out), GPT2Model)
    ids = tokenizer("Return a new list", return_tensors="pt")["input_ids"]
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] == ids.shape[1] + 4



def test_rerun_into_a_dir_with_checkpoints_and_bad_flags_fail_in_one_line(gpt_main, tokenizer_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = [*QUICK, "--tokenizer_name", str(tokenizer_dir), "--max_steps", "2", "--checkpointing_steps", "2",
            "--output_dir", out]
    gpt_main(args)
    capsys.readouterr()
    code, err = one_line_exit(gpt_main, args, capsys)
    assert code == 1 and "--resume_from_checkpoint latest" in err and "--overwrite_output_dir" in err
    for bad, expected in ((["--max_steps", "many"], 2), (["--mixed_precision", "fp8"], 2),
                          (["--torch_compile_mode", "fastest"], 2), (["--pad_vocab_size_to_multiple_of", "0"], 2),
                          (["--loss_chunk_size", "0"], 2),
                          (["--tokenizer_name", str(tmp_path / "missing")], 1),
                          (["--tokenizer_name", str(tokenizer_dir), "--model_type", "t5"], 1)):
        code, err = one_line_exit(gpt_main, [*bad, "--output_dir", str(tmp_path / "bad")], capsys)
        assert code == expected, (bad, err)
    # Mistakes a newcomer makes first, each answered with the actual cause.
    (tmp_path / "file").write_text("x")
    for bad, expected, message in (
            (["--tokenizer_name", str(tmp_path / "missing")], 1, "missing: the local directory does not exist"),
            (["--tokenizer_name", "some-dir-that-does-not-exist"], 1, "no such local directory, and "
                                                                      "'some-dir-that-does-not-exist' is not in the"),
            (["--model_name_or_path", "./no/such/model"], 1, "--model_name_or_path ./no/such/model: the local "
                                                             "directory does not exist"),
            (["--max_steps", "0"], 2, "--max_steps must be a positive number of optimizer steps, got 0"),
            (["--max_steps", "-1"], 1, "--max_steps -1: give a positive number of optimizer steps (the training "
                                       "data is streamed"),
            (["--output_dir", str(tmp_path / "file")], 2, "file is a file, not a directory"),
            (["--tokenizer_name", str(tokenizer_dir), "--validation_file", str(tmp_path / "val.txt")], 1,
             "--validation_file " + str(tmp_path / "val.txt") + " does not exist")):
        args = [*bad] if "--output_dir" in bad else [*bad, "--output_dir", str(tmp_path / "bad")]
        code, err = one_line_exit(gpt_main, args, capsys)
        assert (code, message in err) == (expected, True), (bad, err)


def test_a_few_books_from_a_config_file_train_with_the_default_hold_out(gpt_main, tokenizer_dir, corpus_texts,
                                                                         tmp_path):
    """Each .txt file is one document: the default hold-out takes 5% of the text in passages, not whole files,
    so three books (or one) still train and evaluate. The config gives ``train_file`` as a string glob and the
    flag after it overrides its max_steps."""
    books = tmp_path / "books"
    books.mkdir()
    for i in range(3):
        (books / f"book{i}.txt").write_text("\n\n".join(corpus_texts[i * 30 : (i + 1) * 30]), encoding="utf-8")
    config = tmp_path / "gpt.yaml"
    config.write_text(f"train_file: {books}/*.txt\ntokenizer_name: {tokenizer_dir}\nmodel_size: tiny\n"
                      f"max_seq_length: 32\nper_device_train_batch_size: 4\nmax_eval_batches: 2\n"
                      f"checkpointing_steps: 0\nmax_steps: 50\noutput_dir: {tmp_path / 'out'}\n")
    gpt_main([str(config), "--max_steps", "2", "--eval_steps", "2"])
    results = json.load(open(tmp_path / "out" / "all_results.json"))
    assert results["global_step"] == 2 and results["eval_loss"] > 0
    run_config = json.load(open(tmp_path / "out" / "run_config.json"))
    assert "validation_split_percentage" in json.dumps(run_config)


def test_resume_on_a_changed_corpus_is_a_one_line_error(gpt_main, tokenizer_dir, tmp_path, capsys):
    """A checkpoint's data position means nothing in another corpus: resuming there is refused, not silent."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} talks about topic {i % 7} at some length." for i in range(300)))
    out = str(tmp_path / "out")
    args = [*QUICK, "--tokenizer_name", str(tokenizer_dir), "--train_file", str(corpus), "--checkpointing_steps",
            "2", "--validation_split_documents", "0", "--output_dir", out]
    gpt_main([*args, "--max_steps", "2"])
    capsys.readouterr()
    with corpus.open("a") as fh:
        fh.write("\n\nA new document appended after the checkpoint.")
    with pytest.raises(SystemExit) as info:
        gpt_main([*args, "--max_steps", "4", "--resume_from_checkpoint", "latest"])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert info.value.code == 1 and errors == lines[-1:], lines  # log lines may precede the one error line
    assert "checkpoint was taken on other data (train_file item 0:" in errors[0] and "corpus.txt'," in errors[0]
    assert "--overwrite_output_dir" in errors[0]


def test_llama_from_scratch_then_continued_pretraining(gpt_main, tokenizer_dir, tmp_path):
    first, second = tmp_path / "llama", tmp_path / "continued"
    gpt_main([*QUICK, "--tokenizer_name", str(tokenizer_dir), "--model_type", "llama", "--max_steps", "5",
              "--document_boundaries", "--output_dir", str(first)])
    assert isinstance(AutoModelForCausalLM.from_pretrained(first), LlamaForCausalLM)
    AcceleratorState._reset_state(True)
    gpt_main([*QUICK, "--model_name_or_path", str(first), "--max_steps", "5", "--learning_rate", "1e-3",
              "--output_dir", str(second)])
    before, after = AutoModelForCausalLM.from_pretrained(first), AutoModelForCausalLM.from_pretrained(second)
    assert isinstance(after, LlamaForCausalLM)
    # It started from the first model's weights and tokenizer, then moved a little.
    assert AutoTokenizer.from_pretrained(second).get_vocab() == AutoTokenizer.from_pretrained(first).get_vocab()
    name = "model.embed_tokens.weight"
    delta = (after.state_dict()[name] - before.state_dict()[name]).abs().max().item()
    assert 0 < delta < 0.1
