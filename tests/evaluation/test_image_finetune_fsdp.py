"""Image fine-tuning under FSDP2 (Accelerate's real FSDP path on gloo, see tests/helpers/launch.py)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers.launch import REPO_ROOT, accelerate_launch, run

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.mark.parametrize("mode", ["finetune", "lp_ft"])
def test_fsdp2_image_fine_tuning_matches_ddp(mode, tmp_path):
    vit = tmp_path / "vit"
    run([sys.executable, str(REPO_ROOT / "recipes" / "vit_pretext.py"), "--max_steps", "4", "--checkpointing_steps", "0",
         "--output_dir", str(vit)])
    args = ["--model_name_or_path", str(vit), "--mode", mode, "--num_train_epochs", "1", "--max_train_samples", "256",
            "--logging_steps", "1"]
    accelerate_launch("cpu_2proc", "image_probe.py", [*args, "--output_dir", str(tmp_path / "ddp")], launcher_args=[])
    accelerate_launch("fsdp2", "image_probe.py", [*args, "--output_dir", str(tmp_path / "fsdp2")], fsdp_on_cpu=True)
    results = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("ddp", "fsdp2")}
    ddp, fsdp = (r["train_losses"]["42"] for r in (results["ddp"], results["fsdp2"]))
    assert [s for s, _ in fsdp] == [s for s, _ in ddp] and len(ddp) >= 2
    assert [loss for _, loss in fsdp] == pytest.approx([loss for _, loss in ddp], rel=1e-4)
