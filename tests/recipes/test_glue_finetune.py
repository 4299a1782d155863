"""recipes/glue_finetune.py end to end: pretraining helps, the GLUE table, results.json, modes, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from tests.conftest import REPO_ROOT
from tests.evaluation.glue_fixtures import minilm_path, write_glue_dir, write_sentiment_task, write_tiny_bert

RECIPE = REPO_ROOT / "recipes" / "glue_finetune.py"


def _recipe_main():
    spec = importlib.util.spec_from_file_location("glue_finetune_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def main():
    return _recipe_main()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_path())


def _error_line(main, args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1
    return lines[0]


def test_pretrained_checkpoint_beats_random_init(main, tmp_path):
    """Same architecture, data and budget: the real pretrained MiniLM generalises to unseen words, random init cannot."""
    train_file, dev_file = write_sentiment_task(tmp_path, n_train=256, n_dev=100)
    scores = {}
    for init in ("pretrained", "random"):
        out = tmp_path / init
        main(["--model_name_or_path", minilm_path(), "--train_file", str(train_file), "--validation_file",
              str(dev_file), "--text_columns", "sentence", "--label_column", "label", "--init", init,
              "--num_train_epochs", "1", "--learning_rate", "1e-4", "--per_device_train_batch_size", "16",
              "--max_seq_length", "32", "--seed", "0", "--output_dir", str(out)])
        results = json.loads((out / "results.json").read_text())
        assert results["init"] == init
        scores[init] = results["tasks"]["custom"]["metrics"]["accuracy"]["mean"]
    print(scores)
    assert scores["pretrained"] > 0.85, scores
    assert scores["random"] < 0.7, scores
    assert scores["pretrained"] - scores["random"] > 0.2, scores


def test_all_tasks_table_and_results_json(main, tiny_bert, tmp_path, capsys):
    glue = write_glue_dir(tmp_path / "glue", ["SST-2", "MRPC", "STS-B", "MNLI", "CoLA"], repeat=4)
    out = tmp_path / "out"
    main(["--model_name_or_path", str(tiny_bert), "--task_name", "all", "--glue_dir", str(glue),
          "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--max_eval_samples", "6",
          "--learning_rate", "1e-3", "--output_dir", str(out)])
    stdout = capsys.readouterr().out
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["System", "MNLI-(m/mm)", "QQP", "QNLI", "SST-2", "CoLA", "STS-B", "MRPC", "RTE", "Average"]
    ours = [c.strip() for c in table[2].strip("|").split("|")]
    assert ours[2] == ours[3] == ours[8] == "-"  # QQP, QNLI, RTE: no data -> skipped, shown as "-"
    assert "/" in ours[1] and all(c != "-" for c in (ours[4], ours[5], ours[6], ours[7], ours[9]))
    assert table[3].startswith("| BERT-base (paper, GLUE test)")

    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"model_name_or_path", "mode", "init", "config", "tasks", "average"}
    assert (results["mode"], results["init"], results["model_name_or_path"]) == ("finetune", "pretrained", str(tiny_bert))
    assert set(results["tasks"]) == {"sst2", "mrpc", "stsb", "mnli", "cola"}
    assert set(results["skipped"]) == {"qqp", "qnli", "rte", "wnli"}
    assert set(results["tasks"]["mrpc"]["metrics"]) == {"f1", "accuracy"}
    assert set(results["tasks"]["stsb"]["metrics"]) == {"pearson", "spearmanr"}
    assert set(results["tasks"]["mnli"]["metrics"]) == {"accuracy_matched", "accuracy_mismatched"}
    assert set(results["tasks"]["cola"]["metrics"]) == {"matthews_correlation"}
    sst2 = results["tasks"]["sst2"]
    assert sst2["num_train"] == 8 and sst2["num_eval"] == 6  # 2 rows x repeat 4; dev capped by --max_eval_samples
    acc = sst2["metrics"]["accuracy"]
    assert set(acc) == {"mean", "std", "per_seed"} and acc["per_seed"] == {"42": acc["mean"]} and acc["std"] == 0
    assert 0.0 <= acc["mean"] <= 1.0
    assert isinstance(results["average"], float)
    assert results["config"]["task_name"] == "all" and results["config"]["glue_dir"] == str(glue)
    log = [json.loads(line) for line in (out / "sst2" / "log.jsonl").read_text().splitlines()]
    assert {r["event"] for r in log} == {"train", "eval"} and {r["seed"] for r in log} == {42}


@pytest.mark.parametrize("mode", ["linear_probe", "lp_ft"])
def test_probe_modes_run_end_to_end(main, tiny_bert, tmp_path, mode):
    train_file, dev_file = write_sentiment_task(tmp_path, n_train=32, n_dev=16)
    out = tmp_path / "out"
    main(["--model_name_or_path", str(tiny_bert), "--train_file", str(train_file), "--validation_file", str(dev_file),
          "--text_columns", "sentence", "--mode", mode, "--lp_epochs", "2", "--num_train_epochs", "1",
          "--per_device_train_batch_size", "8", "--seeds", "3,4", "--output_dir", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == mode and results["average"] is None  # custom tasks are not GLUE-averaged
    # No --learning_rate: the default for the model's width (hidden 32 -> 3e-4; a probe has none).
    assert results["config"]["learning_rate"] == (3e-4 if mode == "lp_ft" else None)
    acc = results["tasks"]["custom"]["metrics"]["accuracy"]
    assert set(acc["per_seed"]) == {"3", "4"}
    assert acc["mean"] == pytest.approx(sum(acc["per_seed"].values()) / 2)
    assert acc["std"] == pytest.approx(abs(acc["per_seed"]["3"] - acc["per_seed"]["4"]) / 2 ** 0.5)
    log = [json.loads(line) for line in (out / "custom" / "log.jsonl").read_text().splitlines()]
    probes = [r for r in log if r["event"] == "probe"]
    assert [r["seed"] for r in probes] == [3, 4] and all(len(r["epoch_losses"]) == 2 for r in probes)
    # Only LP-FT continues with full fine-tuning steps.
    assert any(r["event"] == "train" for r in log) == (mode == "lp_ft")


def test_user_errors_are_one_line(main, tiny_bert, tmp_path, capsys):
    model = ["--model_name_or_path", str(tiny_bert), "--output_dir", str(tmp_path / "o")]
    assert "unknown GLUE task 'sst5'" in _error_line(main, [*model, "--task_name", "sst5"], capsys)
    line = _error_line(main, [*model, "--task_name", "rte", "--glue_dir", str(tmp_path / "nope")], capsys)
    assert "--glue_dir" in line and "is not a directory" in line
    write_glue_dir(tmp_path / "glue", ["QNLI"])
    (tmp_path / "glue" / "QNLI" / "train.tsv").unlink()
    assert "QNLI/train.tsv does not exist" in _error_line(
        main, [*model, "--task_name", "qnli", "--glue_dir", str(tmp_path / "glue")], capsys)
    line = _error_line(main, [*model, "--task_name", "all", "--glue_dir", str(tmp_path / "glue")], capsys)
    assert "no GLUE task had data" in line
    train_file, dev_file = write_sentiment_task(tmp_path, n_train=4, n_dev=2)
    line = _error_line(main, [*model, "--train_file", str(train_file), "--validation_file", str(dev_file),
                              "--text_columns", "sentence", "--label_column", "stars"], capsys)
    assert "no column 'stars' (--label_column)" in line
    line = _error_line(main, [*model, "--task_name", "sst2", "--train_file", str(train_file)], capsys)
    assert "not both" in line
    # A Hub id while offline (conftest sets HF_HUB_OFFLINE=1): one line at once, naming offline mode.
    line = _error_line(main, ["--model_name_or_path", "some-org/not-cached-bert", "--task_name", "sst2",
                              "--glue_dir", str(tmp_path / "glue"), "--output_dir", str(tmp_path / "o")], capsys)
    assert "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line
    line = _error_line(main, [*model, "--task_name", "sst2", "--tokenizer_name", str(tmp_path / "no_tok")], capsys)
    assert "--tokenizer_name" in line and "does not exist" in line


def test_missing_model_dir_is_one_line_from_a_real_process(python_exe, tmp_path):
    proc = subprocess.run([python_exe, str(RECIPE), "--model_name_or_path", str(tmp_path / "no_model"),
                           "--task_name", "sst2", "--output_dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"glue_finetune.py: error: --model_name_or_path {tmp_path / 'no_model'}: the local directory "
                     f"does not exist ({tmp_path / 'no_model'})"]


@pytest.mark.slow
def test_real_sst2_pretrained_beats_random(main, shared_data, tmp_path):
    """Real SST-2 (first 2000 train rows, full dev): MiniLM clearly beats the same model from random weights."""
    scores = {}
    for init in ("pretrained", "random"):
        out = tmp_path / init
        main(["--model_name_or_path", minilm_path(), "--task_name", "sst2", "--glue_dir", str(shared_data / "glue"),
              "--max_train_samples", "2000", "--num_train_epochs", "1", "--learning_rate", "1e-4",
              "--per_device_train_batch_size", "16", "--max_seq_length", "64", "--init", init, "--output_dir", str(out)])
        scores[init] = json.loads((out / "results.json").read_text())["tasks"]["sst2"]["metrics"]["accuracy"]["mean"]
    assert scores["pretrained"] > 0.75 and scores["pretrained"] - scores["random"] > 0.1, scores


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_gather_every_dev_example(python_exe, tiny_bert, tmp_path):
    """torchrun x2 on CPU (gloo): the dev set is sharded and gathered back whole, so a linear probe
    (trained identically on every rank) scores exactly as in one process; fine-tuning runs in DDP."""
    train_file, dev_file = write_sentiment_task(tmp_path, n_train=40, n_dev=21)  # 21: uneven shards
    common = ["--model_name_or_path", str(tiny_bert), "--train_file", str(train_file), "--validation_file",
              str(dev_file), "--text_columns", "sentence", "--per_device_train_batch_size", "4",
              "--per_device_eval_batch_size", "4", "--lp_epochs", "3", "--num_train_epochs", "1"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "single": [python_exe, str(RECIPE), *common, "--mode", "linear_probe"],
        "ddp_probe": [python_exe, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RECIPE), *common,
                      "--mode", "linear_probe"],
        "ddp_ft": [python_exe, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RECIPE), *common],
    }
    results = {}
    for name, cmd in runs.items():
        out = tmp_path / name
        proc = subprocess.run([*cmd, "--output_dir", str(out)], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((out / "results.json").read_text())
    single = results["single"]["tasks"]["custom"]["metrics"]["accuracy"]["mean"]
    assert results["ddp_probe"]["tasks"]["custom"]["metrics"]["accuracy"]["mean"] == pytest.approx(single, abs=1e-9)
    log = [json.loads(line) for line in (tmp_path / "ddp_ft" / "custom" / "log.jsonl").read_text().splitlines()]
    # 40 examples / (2 processes x 4 per device) = 5 optimizer steps per epoch.
    assert max(r["step"] for r in log if r["event"] == "train") == 5


def test_no_network_is_one_line_at_once(python_exe, tiny_bert, tmp_path):
    """Not in offline mode and the Hub unreachable: a Hub model id, or GLUE from the Hub (no --glue_dir), is one
    line within seconds instead of ~30 s of retries (the endpoint here is a closed local port)."""
    import os
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    cases = {"hub model": ["--model_name_or_path", "some-org/some-bert", "--task_name", "sst2", "--glue_dir",
                           str(tmp_path)],
             "hub glue": ["--model_name_or_path", str(tiny_bert), "--task_name", "sst2"]}
    for name, args in cases.items():
        started = time.monotonic()
        proc = subprocess.run([python_exe, str(RECIPE), *args, "--output_dir", str(tmp_path / "o")], env=env,
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot be reached" in lines[0], (name, lines)
        assert time.monotonic() - started < 30, name
    assert "--glue_dir" in lines[0]
