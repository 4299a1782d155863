"""The rest of the engine matrix (slow): FSDP1 per family, BERT's pair variants and every ViT task under
FSDP2, DeepSpeed ZeRO-3, a real kill -9 under FSDP2, and two "nodes" on this machine, with and without a
shared output_dir (each node in its own mount namespace)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.launch import (
    ACCELERATE,
    CONFIGS,
    REPO_ROOT,
    accelerate_command,
    accelerate_launch,
    error_lines,
    launch_env,
    run,
)
from tests.training.test_scale_out import assert_same_weights, gpt_args, losses

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

BERT = ["--model_size", "tiny", "--max_steps", "3", "--eval_steps", "2", "--max_eval_batches", "2",
        "--checkpointing_steps", "2", "--per_device_train_batch_size", "8"]


@pytest.mark.parametrize("variant", [[], ["--sop"], ["--no_nsp"]], ids=["nsp", "sop", "mlm_only"])
@pytest.mark.parametrize("config", ["fsdp2", "fsdp1"])
def test_bert_variants_under_fsdp(config, variant, tmp_path):
    if config == "fsdp2" and not variant:
        pytest.skip("in the default suite (test_scale_out)")
    result = accelerate_launch(config, "bert_mlm.py", [*BERT, *variant, "--output_dir", str(tmp_path / "out")],
                               fsdp_on_cpu=True)
    assert "reloads with AutoModelForPreTraining" in result.stderr and "fill-mask:" in result.stdout


def test_gpt_under_fsdp1_matches_one_process(tokenizer_dir, tmp_path):
    single, fsdp = tmp_path / "one", tmp_path / "fsdp1"
    run([sys.executable, str(REPO_ROOT / "recipes" / "gpt_clm.py"), *gpt_args(tokenizer_dir, single, 4)])
    accelerate_launch("fsdp1", "gpt_clm.py", gpt_args(tokenizer_dir, fsdp, 2), fsdp_on_cpu=True)
    for step, loss in losses(single).items():
        assert losses(fsdp)[step] == pytest.approx(loss, rel=1e-5)
    assert_same_weights(single, fsdp)


TEXTBOOK_TASKS = ["rotation", "jigsaw", "relative_position", "colorization", "inpainting", "contrastive", "mim"]
# Momentum teachers are updated outside the forward, on FSDP2's DTensor shards; FSDP1's flat parameters cannot
# serve them. Under sharding DINO exports its student (only the trained backbone is gathered).
SSL_TASKS = [["moco_v3"], ["byol"], ["swav"], ["deepcluster"], ["exemplar"], ["mae"], ["dino", "--export_student"]]
# The autoencoders' pixel decoders belong to the objective (trained, not exported), under either FSDP.
AUTOENCODERS = [["autoencoder"], ["denoising_autoencoder"], ["sparse_autoencoder"], ["vae"]]


@pytest.mark.parametrize("config, task", [(c, [t]) for c in ("fsdp2", "fsdp1") for t in TEXTBOOK_TASKS]
                         + [("fsdp2", t) for t in SSL_TASKS] + [("fsdp2", t) for t in AUTOENCODERS]
                         + [("fsdp1", ["vae"])], ids=lambda v: v if isinstance(v, str) else v[0])
def test_every_vit_task_under_fsdp(config, task, tmp_path):
    accelerate_launch(config, "vit_pretext.py",
                      ["--pretext_task", *task, "--max_steps", "2", "--eval_steps", "2", "--max_eval_batches", "1",
                       "--knn_monitor_samples", "32", "--checkpointing_steps", "2", "--per_device_train_batch_size", "8",
                       "--output_dir", str(tmp_path / "out")], fsdp_on_cpu=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("task", [["dino", "--export_student"], ["moco_v3"], ["byol"]], ids=lambda t: t[0])
def test_momentum_teachers_under_fsdp1_are_one_line_refusals(task, tmp_path):
    proc = accelerate_launch("fsdp1", "vit_pretext.py", ["--pretext_task", *task, "--max_steps", "2",
                                                         "--output_dir", str(tmp_path / "out")],
                             fsdp_on_cpu=True, check=False)
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert lines and all("momentum teacher" in line and "fsdp_version: 2" in line for line in lines), proc.stderr[-3000:]
    assert "]: Traceback" not in proc.stderr       # no worker traceback (the launcher's own summary follows)


def test_deepspeed_zero3_matches_one_process_from_the_same_weights(tokenizer_dir, tmp_path):
    """ZeRO-3 partitions parameters at construction (its own initialisation), so both runs start from one export."""
    pytest.importorskip("deepspeed")
    start, single, zero3 = tmp_path / "start", tmp_path / "one", tmp_path / "zero3"
    run([sys.executable, str(REPO_ROOT / "recipes" / "gpt_clm.py"),
             *gpt_args(tokenizer_dir, start, 4)[:-2], "--max_steps", "1", "--output_dir", str(start)])
    common = ["--model_name_or_path", str(start)]
    run([sys.executable, str(REPO_ROOT / "recipes" / "gpt_clm.py"), *gpt_args(tokenizer_dir, single, 4), *common])
    result = accelerate_launch("deepspeed_zero3", "gpt_clm.py", [*gpt_args(tokenizer_dir, zero3, 2), *common],
                               deepspeed_on_cpu=True)
    assert "DeepSpeed ZeRO-3" in result.stderr and "reloads with AutoModelForCausalLM" in result.stderr
    # ZeRO-3 builds the model as flat 1-D shards: weight decay must still find the matrices (it once decayed
    # nothing: losses agreed to 3e-5, weights differed by a third of their update).
    for step, loss in losses(single).items():
        assert losses(zero3)[step] == pytest.approx(loss, rel=1e-5)
    assert_same_weights(single, zero3)


def test_fsdp2_kill_9_and_resume_is_bitwise(tokenizer_dir, tmp_path):
    reference, killed = tmp_path / "ref", tmp_path / "killed"
    args = ["--max_steps", "12", "--checkpointing_steps", "3", "--save_total_limit", "2"]
    accelerate_launch("fsdp2", "gpt_clm.py", [*gpt_args(tokenizer_dir, reference, 2), *args], fsdp_on_cpu=True)
    command = accelerate_command("fsdp2", "gpt_clm.py", [*gpt_args(tokenizer_dir, killed, 2), *args])
    proc = subprocess.Popen(command, env=launch_env(fsdp_on_cpu=True), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "step_6").is_dir():
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, mid-run
    proc.wait()
    assert not (killed / "model.safetensors").exists()
    accelerate_launch("fsdp2", "gpt_clm.py", [*gpt_args(tokenizer_dir, killed, 2), *args,
                                              "--resume_from_checkpoint", "latest"], fsdp_on_cpu=True)
    assert_same_weights(reference, killed, exact=True)
    assert losses(killed) == losses(reference)


def _unshare_available() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return shutil.which("unshare") is not None and probe.returncode == 0


def _launch_nodes(tokenizer_dir: Path, output_dir: Path, *, private_dirs: list[Path] | None, extra: list[str],
                  port: int) -> list[subprocess.CompletedProcess]:
    """Two nodes of one process each on 127.0.0.1, with configs/accelerate/multinode_template.yaml. With
    ``private_dirs``, node i sees private_dirs[i] at ``output_dir`` (its own mount namespace): no shared storage."""
    procs = []
    for rank in range(2):
        launch = [ACCELERATE, "launch", "--config_file", str(CONFIGS / "multinode_template.yaml"),
                  "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
                  "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--mixed_precision", "no",
                  str(REPO_ROOT / "recipes" / "gpt_clm.py"), *gpt_args(tokenizer_dir, output_dir, 4), *extra]
        if private_dirs is not None:
            private_dirs[rank].mkdir(parents=True, exist_ok=True)
            output_dir.mkdir(parents=True, exist_ok=True)
            script = f'mount --bind "{private_dirs[rank]}" "{output_dir}" && exec "$@"'
            launch = ["unshare", "-m", "sh", "-c", script, "node", *launch]
        procs.append(subprocess.Popen(launch, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=REPO_ROOT))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_two_nodes_sharing_the_output_dir(tokenizer_dir, tmp_path):
    out = tmp_path / "shared"
    results = _launch_nodes(tokenizer_dir, out, private_dirs=None, extra=[], port=29631)
    assert all(r.returncode == 0 for r in results), [r.stderr[-3000:] for r in results]
    assert "2 processes, DDP" in results[0].stderr
    state = json.load(open(out / "checkpoints" / "step_4" / "trainer_state.json"))
    assert state["world_size"] == 2


@pytest.mark.skipif(not _unshare_available(), reason="needs mount namespaces (unshare -m)")
def test_two_nodes_without_shared_storage(tokenizer_dir, tmp_path):
    out, disks = tmp_path / "run", [tmp_path / "node0", tmp_path / "node1"]
    refused = _launch_nodes(tokenizer_dir, out, private_dirs=disks, extra=[], port=29633)
    assert all(r.returncode != 0 for r in refused)
    assert any("is not shared" in line and "--save_on_each_node" in line
               for r in refused for line in error_lines(r.stderr)), refused[0].stderr[-3000:]
    for disk in disks:
        shutil.rmtree(disk)
    results = _launch_nodes(tokenizer_dir, out, private_dirs=disks, extra=["--save_on_each_node"], port=29635)
    assert all(r.returncode == 0 for r in results), [r.stderr[-3000:] for r in results]
    for disk in disks:  # every node holds a whole, verified checkpoint of its own
        from hfssl.training.checkpoint import verify_checkpoint

        assert verify_checkpoint(str(disk / "checkpoints" / "step_4")) is None
        assert (disk / "checkpoints" / "step_4" / "model.safetensors").is_file()
    for disk in disks:
        shutil.rmtree(disk / "checkpoints" / "step_4")
    resumed = _launch_nodes(tokenizer_dir, out, private_dirs=disks,
                            extra=["--save_on_each_node", "--resume_from_checkpoint", "latest"], port=29637)
    assert all(r.returncode == 0 for r in resumed), [r.stderr[-3000:] for r in resumed]
    assert "resumed from" in resumed[0].stderr


def test_fsdp2_run_pushes_to_the_hub_and_the_push_reloads(tokenizer_dir, tmp_path):
    """every_save under FSDP2: each push exports the gathered weights (a collective) and the main process uploads."""
    from tests.hub.hub_helpers import ALICE_TOKEN, hub_env, hub_get, remote_files, start_fake_hub

    hub = start_fake_hub(tmp_path / "hub")
    try:
        shim = {k: v for k, v in launch_env(fsdp_on_cpu=True).items()
                if k in ("PYTHONPATH", "HFSSL_TEST_FSDP_ON_CPU", "OMP_NUM_THREADS", "TQDM_DISABLE")}
        env = {**hub_env(hub.url, tmp_path / "home", token=ALICE_TOKEN), **shim}
        command = accelerate_command("fsdp2", "gpt_clm.py", [*gpt_args(tokenizer_dir, tmp_path / "out", 2),
                                                             "--push_to_hub", "--hub_model_id", "alice/gpt-fsdp",
                                                             "--hub_strategy", "every_save"])
        run(command, env=env)
        status, commits = hub_get(hub, "/api/models/alice/gpt-fsdp/commits/main", ALICE_TOKEN)
        assert status == 200 and [c["title"] for c in commits][0] == "End of training"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= remote_files(hub, "alice/gpt-fsdp")
    finally:
        hub.process.terminate()
        hub.process.wait(timeout=10)


@pytest.mark.parametrize("recipe, flags", [("seq2seq_denoising.py", ["--model_size", "tiny"]),
                                           ("seq2seq_denoising.py", ["--model_type", "t5", "--model_size", "tiny"]),
                                           ("word2vec.py", [])], ids=["bart", "t5", "word2vec"])
def test_seq2seq_and_word2vec_under_fsdp2(recipe, flags, tmp_path):
    proc = accelerate_launch("fsdp2", recipe, [*flags, "--max_steps", "2", "--checkpointing_steps", "2",
                                               "--output_dir", str(tmp_path / "out")], fsdp_on_cpu=True)
    assert "done: step 2" in proc.stdout
    assert (tmp_path / "out" / "checkpoints" / "step_2").is_dir()
