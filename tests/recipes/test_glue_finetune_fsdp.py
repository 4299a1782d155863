"""GLUE-style fine-tuning under FSDP2 (Accelerate's real FSDP path on gloo, see tests/helpers/launch.py)."""

from __future__ import annotations

import json

import pytest

from tests.evaluation.glue_fixtures import minilm_path, write_sentiment_task, write_tiny_bert
from tests.helpers.launch import accelerate_launch

pytestmark = pytest.mark.multiprocess


def _train_losses(out) -> list[float]:
    log = [json.loads(line) for line in (out / "custom" / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in log if r["event"] == "train"]


@pytest.mark.parametrize("mode", ["finetune", pytest.param("lp_ft", marks=pytest.mark.slow)])
def test_fsdp2_fine_tuning_matches_ddp(mode, tmp_path):
    """A BertForSequenceClassification prepared by Accelerate directly: FSDP2 wraps its layers (accelerate
    1.15 would otherwise shard BertEmbeddings and then its word embeddings a second time and crash)."""
    model = write_tiny_bert(tmp_path / "bert", minilm_path())
    train_file, dev_file = write_sentiment_task(tmp_path, n_train=48, n_dev=21)
    args = ["--model_name_or_path", str(model), "--train_file", str(train_file), "--validation_file", str(dev_file),
            "--text_columns", "sentence", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
            "--num_train_epochs", "1", "--lp_epochs", "2", "--logging_steps", "1", "--mode", mode,
            "--learning_rate", "1e-3"]
    accelerate_launch("cpu_2proc", "glue_finetune.py", [*args, "--output_dir", str(tmp_path / "ddp")], launcher_args=[])
    accelerate_launch("fsdp2", "glue_finetune.py", [*args, "--output_dir", str(tmp_path / "fsdp2")], fsdp_on_cpu=True)
    ddp, fsdp = _train_losses(tmp_path / "ddp"), _train_losses(tmp_path / "fsdp2")
    assert len(ddp) == len(fsdp) == 6  # 48 examples / (2 processes x 4)
    assert fsdp == pytest.approx(ddp, rel=1e-4)
    results = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("ddp", "fsdp2")}
    metric = {name: r["tasks"]["custom"]["metrics"]["accuracy"]["mean"] for name, r in results.items()}
    assert metric["fsdp2"] == pytest.approx(metric["ddp"], abs=1 / 21 + 1e-9)  # at most one dev example apart
