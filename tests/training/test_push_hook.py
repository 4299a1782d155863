"""The loop's push hook: a real recipe run pushing to the project's fake Hub server (real HTTP)."""

from __future__ import annotations

import subprocess
import sys

from tests.hub.hub_helpers import ALICE_TOKEN, hub_env, hub_get, remote_files, start_fake_hub


def test_every_save_pushes_at_each_checkpoint_and_at_the_end(repo_root, tokenizer_dir, tmp_path):
    hub = start_fake_hub(tmp_path / "hub")
    try:
        env = {**hub_env(hub.url, tmp_path / "home", token=ALICE_TOKEN), "TQDM_DISABLE": "1"}
        cmd = [sys.executable, str(repo_root / "recipes" / "gpt_clm.py"), "--tokenizer_name", str(tokenizer_dir),
               "--model_size", "tiny", "--max_seq_length", "32", "--per_device_train_batch_size", "4",
               "--max_steps", "4", "--checkpointing_steps", "2", "--logging_steps", "2", "--push_to_hub",
               "--hub_model_id", "alice/gpt-tiny", "--hub_strategy", "every_save", "--output_dir",
               str(tmp_path / "out")]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        status, commits = hub_get(hub, "/api/models/alice/gpt-tiny/commits/main", ALICE_TOKEN)
        assert status == 200
        titles = [c["title"] for c in commits]
        assert titles[0] == "End of training"
        assert "Training in progress, step 2" in titles and "Training in progress, step 4" in titles
        files = remote_files(hub, "alice/gpt-tiny")
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
        assert not any(f.startswith("checkpoints/") for f in files)
    finally:
        hub.process.terminate()
        hub.process.wait(timeout=10)
