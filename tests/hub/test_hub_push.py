"""End-to-end pushes of a real tiny run to a real HTTP fake Hub, reloaded with the Auto classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.hub.hub_helpers import (
    ALICE_TOKEN,
    BOB_TOKEN,
    FakeHub,
    files_containing,
    hub_env,
    hub_get,
    hub_read,
    remote_files,
    run_push_cli,
    run_python,
)

EXPECTED = {".gitattributes", "README.md", "loss_curve.png", "config.json", "generation_config.json",
            "model.safetensors", "tokenizer.json", "tokenizer_config.json", "run_config.json", "metrics.jsonl",
            "all_results.json", "results.json", "train_results.json"}

RELOAD = r"""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from huggingface_hub import ModelCard, hf_hub_download

run_dir, repo = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(repo)
backbone = AutoModel.from_pretrained(repo)
tok = AutoTokenizer.from_pretrained(repo)
local_tok = AutoTokenizer.from_pretrained(run_dir)
ref = load_file(run_dir + "/model.safetensors")
state = model.state_dict()
text = "the model reads long streams of text"
card = ModelCard.load(hf_hub_download(repo, "README.md"))
print(json.dumps({
    "class": type(model).__name__, "backbone": type(backbone).__name__,
    "same_keys": sorted(ref) == sorted(k for k in state if k in ref),
    "exact": all(torch.equal(state[k], v) for k, v in ref.items()),
    "n_tensors": len(ref),
    "backbone_exact": [torch.equal(v, ref["transformer." + k]) for k, v in backbone.state_dict().items()
                       if "transformer." + k in ref],
    "same_ids": tok(text)["input_ids"] == local_tok(text)["input_ids"],
    "card_tags": card.data.tags,
    "card_results": [(r.dataset_config, r.metric_type, r.metric_value) for r in (card.data.eval_results or [])],
}))
"""


def _commits(hub: FakeHub, repo_id: str, token: str = ALICE_TOKEN, revision: str = "main") -> list[dict]:
    status, commits = hub_get(hub, f"/api/models/{repo_id}/commits/{revision}", token)
    assert status == 200, status
    return commits


def _one_line_error(proc) -> str:
    """The single ``error:`` line a failed push ends with (skip warnings may precede it)."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if " error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], proc.stderr
    return errors[0]


def test_push_then_reload_with_auto_classes(fake_hub: FakeHub, tiny_run: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub.url, tmp_path / "push-home", token=ALICE_TOKEN)
    proc = run_push_cli([str(tiny_run), "--hub_model_id", "alice/tiny-gpt"], env)
    assert proc.returncode == 0, proc.stderr
    commit_url = proc.stdout.strip().splitlines()[-1]
    assert commit_url.startswith(f"{fake_hub.url}/alice/tiny-gpt/commit/")

    files = remote_files(fake_hub, "alice/tiny-gpt")
    assert files == EXPECTED
    # What must never leave the machine: pickles, optimizer states, symlinks leading out of the run.
    assert not any(f.startswith(("checkpoints/", "last-checkpoint/", "tokenizer_extra")) for f in files)
    assert "pytorch_model.bin" not in files and "eval_results.json" not in files
    assert "not uploading eval_results.json" in proc.stderr and "outside the output directory" in proc.stderr
    # After the successful push, the run holds exactly the card that was published.
    for name in ("README.md", "loss_curve.png"):
        status, body = hub_read(fake_hub, f"/alice/tiny-gpt/resolve/main/{name}")
        assert status == 200 and body == (tiny_run / name).read_bytes()
    for blob in fake_hub.blobs():
        assert b"do not publish" not in blob.read_bytes()

    # The commit the CLI reported is the branch head, on top of the repo's initial commit.
    commits = _commits(fake_hub, "alice/tiny-gpt")
    assert [c["title"] for c in commits] == ["Upload model trained with hfssl", "initial commit"]
    assert commit_url.endswith(commits[0]["id"])

    # Fresh process, empty cache, anonymous (the repo is public): the Auto classes load it bit for bit.
    load_env = hub_env(fake_hub.url, tmp_path / "load-home")
    loaded = run_python(RELOAD, load_env, str(tiny_run), "alice/tiny-gpt", timeout=240)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    report = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert report["class"] == "GPT2LMHeadModel" and report["backbone"] == "GPT2Model"
    assert report["exact"] and report["same_keys"] and report["n_tensors"] > 10
    assert len(report["backbone_exact"]) > 10 and all(report["backbone_exact"])
    assert report["same_ids"]
    assert "hfssl" in report["card_tags"] and "causal-lm" in report["card_tags"]
    assert ["sst2", "accuracy", 50.0] in report["card_results"]
    assert ["cola", "accuracy", 50.0] not in report["card_results"]

    # The token is nowhere: not in the run directory, not in anything uploaded, not in any output.
    assert files_containing(tiny_run, ALICE_TOKEN) == []
    assert all(ALICE_TOKEN.encode() not in blob.read_bytes() for blob in fake_hub.blobs())
    for text in (proc.stdout, proc.stderr, loaded.stdout, loaded.stderr):
        assert ALICE_TOKEN not in text


def test_second_push_makes_second_commit(fake_hub: FakeHub, tiny_run: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub.url, tmp_path / "home", token=ALICE_TOKEN)
    first = run_push_cli([str(tiny_run), "--hub_model_id", "alice/twice"], env)
    assert first.returncode == 0, first.stderr
    with open(tiny_run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 7, "loss": 1.5, "lr": 1e-3}) + "\n")
    second = run_push_cli([str(tiny_run), "--hub_model_id", "alice/twice", "--commit_message", "More steps"], env)
    assert second.returncode == 0, second.stderr
    commits = _commits(fake_hub, "alice/twice")
    assert [c["title"] for c in commits] == ["More steps", "Upload model trained with hfssl", "initial commit"]
    assert second.stdout.strip().endswith(commits[0]["id"])
    assert first.stdout.strip().endswith(commits[1]["id"])
    # Only what changed travelled in the second commit's LFS uploads: the new plot, not the weights again.
    puts = [r for r in fake_hub.requests() if r["method"] == "PUT"]
    assert len(puts) == 3  # model.safetensors + loss_curve.png, then the redrawn loss_curve.png
    status, body = hub_read(fake_hub, "/alice/twice/resolve/main/metrics.jsonl")
    assert status == 200 and body.decode().splitlines()[-1] == json.dumps({"step": 7, "loss": 1.5, "lr": 1e-3})


def test_private_repo_refuses_anonymous_reads(fake_hub: FakeHub, tiny_run: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub.url, tmp_path / "home")
    proc = run_push_cli([str(tiny_run), "--hub_model_id", "alice/secret-model", "--hub_private_repo",
                         "--hub_token", ALICE_TOKEN], env)
    assert proc.returncode == 0, proc.stderr
    assert ALICE_TOKEN not in proc.stdout + proc.stderr

    status, info = hub_get(fake_hub, "/api/models/alice/secret-model", ALICE_TOKEN)
    assert status == 200 and info["private"] is True
    assert hub_get(fake_hub, "/api/models/alice/secret-model")[0] == 401
    assert hub_get(fake_hub, "/alice/secret-model/resolve/main/config.json")[0] == 401
    assert hub_get(fake_hub, "/alice/secret-model/resolve/main/config.json", BOB_TOKEN)[0] == 404

    # The real client, anonymous, in a fresh process with an empty cache, cannot download it.
    code = ("from huggingface_hub import hf_hub_download\n"
            "from huggingface_hub.errors import RepositoryNotFoundError\n"
            "try:\n    hf_hub_download('alice/secret-model', 'config.json')\n"
            "except RepositoryNotFoundError:\n    print('refused')\n")
    anon = run_python(code, hub_env(fake_hub.url, tmp_path / "anon-home"))
    assert anon.stdout.strip() == "refused", anon.stderr
    owner = run_python("from huggingface_hub import hf_hub_download\nprint(open(hf_hub_download("
                       "'alice/secret-model', 'config.json')).read())",
                       hub_env(fake_hub.url, tmp_path / "owner-home", token=ALICE_TOKEN))
    assert owner.returncode == 0 and json.loads(owner.stdout)["model_type"] == "gpt2"


def test_checkpoint_strategy_and_include_checkpoints(fake_hub: FakeHub, tiny_run: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub.url, tmp_path / "home", token=ALICE_TOKEN)
    step6 = tiny_run / "checkpoints" / "step_6"
    (step6 / "extra_state.json").write_text("{}")
    proc = run_push_cli([str(tiny_run), "--hub_model_id", "alice/resumable", "--hub_strategy", "checkpoint"], env)
    assert proc.returncode == 0, proc.stderr
    files = remote_files(fake_hub, "alice/resumable")
    assert {f for f in files if f.startswith("last-checkpoint/")} == {
        f"last-checkpoint/{p.name}" for p in step6.iterdir()}
    assert "last-checkpoint/optimizer.bin" in files
    assert not any(f.startswith("checkpoints/") for f in files)

    # A newer checkpoint replaces last-checkpoint/ entirely: files it lacks are deleted on the Hub.
    step9 = tiny_run / "checkpoints" / "step_9"
    shutil.copytree(step6, step9)
    (step9 / "extra_state.json").unlink()
    (step9 / "optimizer.bin").write_bytes(b"new optimizer state")
    proc = run_push_cli([str(tiny_run), "--hub_model_id", "alice/resumable", "--hub_strategy", "checkpoint"], env)
    assert proc.returncode == 0, proc.stderr
    files = remote_files(fake_hub, "alice/resumable")
    assert "last-checkpoint/extra_state.json" not in files
    status, _ = hub_get(fake_hub, "/api/models/alice/resumable/tree/main/last-checkpoint", ALICE_TOKEN)
    assert status == 200

    proc = run_push_cli([str(tiny_run), "--hub_model_id", "alice/resumable", "--include_checkpoints"], env)
    assert proc.returncode == 0, proc.stderr
    files = remote_files(fake_hub, "alice/resumable")
    for step in ("step_3", "step_6", "step_9"):
        assert f"checkpoints/{step}/optimizer.bin" in files


def test_branch_and_hand_written_card(fake_hub: FakeHub, tiny_run: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub.url, tmp_path / "home", token=ALICE_TOKEN)
    (tiny_run / "README.md").write_text("---\nlicense: mit\n---\n# My own words\n")
    proc = run_push_cli([str(tiny_run), "--hub_model_id", "alice/branched", "--hub_revision", "v1"], env)
    assert proc.returncode == 0, proc.stderr
    assert "config.json" in remote_files(fake_hub, "alice/branched", revision="v1")
    assert remote_files(fake_hub, "alice/branched", revision="main") == {".gitattributes"}
    assert (tiny_run / "README.md").read_text().endswith("# My own words\n")
    status, body = hub_read(fake_hub, "/alice/branched/resolve/v1/README.md")
    assert status == 200 and body.decode().endswith("# My own words\n")


def test_invalid_repo_id_fails_before_any_request(fake_hub: FakeHub, tiny_run: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub.url, tmp_path / "home", token=ALICE_TOKEN)
    for bad in ("no-namespace", "alice/bad--name"):  # more cases: test_hub_card.py (no process start-up)
        line = _one_line_error(run_push_cli([str(tiny_run), "--hub_model_id", bad], env))
        assert "hub_model_id" in line, line
    assert fake_hub.requests() == []


def test_bad_token_and_foreign_namespace_are_one_line_errors(fake_hub: FakeHub, tiny_run: Path,
                                                             tmp_path: Path) -> None:
    env = hub_env(fake_hub.url, tmp_path / "home")
    wrong = "hf_wrong_token_that_the_hub_does_not_know"
    line = _one_line_error(run_push_cli([str(tiny_run), "--hub_model_id", "alice/x", "--hub_token", wrong], env))
    assert "401" in line and "--hub_token" in line and wrong not in line

    line = _one_line_error(run_push_cli([str(tiny_run), "--hub_model_id", "bob/x"], env | {"HF_TOKEN": ALICE_TOKEN}))
    assert "403" in line and ALICE_TOKEN not in line

    no_token = _one_line_error(run_push_cli([str(tiny_run), "--hub_model_id", "alice/x"], env))
    assert "401" in no_token and "HF_TOKEN" in no_token
    # Nothing was committed and the run directory is as it was (apart from the regenerated card).
    assert not [r for r in fake_hub.requests() if "/commit/" in r["path"]]
    assert (tiny_run / "model.safetensors").is_file()


def test_refuses_to_publish_a_file_holding_the_token(fake_hub: FakeHub, tiny_run: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub.url, tmp_path / "home", token=ALICE_TOKEN)
    with open(tiny_run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 8, "note": f"token={ALICE_TOKEN}"}) + "\n")
    line = _one_line_error(run_push_cli([str(tiny_run), "--hub_model_id", "alice/leaky"], env))
    assert "metrics.jsonl" in line and ALICE_TOKEN not in line
    assert fake_hub.requests() == []


@pytest.mark.parametrize("strategy", ["end"])
def test_library_call_returns_commit_info(fake_hub: FakeHub, tiny_run: Path, tmp_path: Path, strategy: str) -> None:
    code = (
        "import sys\nfrom hfssl.config import HubArguments\nfrom hfssl.hub import push_output_dir\n"
        f"args = HubArguments(push_to_hub=True, hub_model_id='alice/lib', hub_strategy={strategy!r})\n"
        "info = push_output_dir(sys.argv[1], args, commit_message='from the loop', license='mit', language=['fr'])\n"
        "print(info.oid, str(info))\n"
    )
    proc = run_python(code, hub_env(fake_hub.url, tmp_path / "home", token=ALICE_TOKEN), str(tiny_run))
    assert proc.returncode == 0, proc.stderr
    oid, url = proc.stdout.split()
    assert url.endswith(f"/alice/lib/commit/{oid}")
    assert _commits(fake_hub, "alice/lib")[0]["title"] == "from the loop"
    status, body = hub_read(fake_hub, "/alice/lib/resolve/main/README.md")
    assert status == 200 and "license: mit" in body.decode() and "- fr" in body.decode()


VIT_RELOAD = r"""
import json, sys
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

run_dir, repo = sys.argv[1], sys.argv[2]
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
outputs = []
for source in (repo, run_dir):
    processor = AutoImageProcessor.from_pretrained(source)
    model = AutoModel.from_pretrained(source, add_pooling_layer=False).eval()
    with torch.no_grad():
        outputs.append(model(**processor(images=image, return_tensors="pt")).last_hidden_state)
print(json.dumps({"class": type(model).__name__, "same": torch.equal(outputs[0], outputs[1]),
                  "shape": list(outputs[0].shape)}))
"""


def test_vit_run_pushes_and_reloads_with_its_image_processor(fake_hub: FakeHub, tmp_path: Path) -> None:
    """A real vit_pretext run: the Hub copy gives the same features as the local export, processor included."""
    import subprocess
    import sys

    repo_root = Path(__file__).resolve().parents[2]
    out = tmp_path / "vit"
    trained = subprocess.run([sys.executable, str(repo_root / "recipes" / "vit_pretext.py"), "--pretext_task", "jigsaw",
                              "--max_steps", "2", "--per_device_train_batch_size", "8", "--max_eval_batches", "1",
                              "--checkpointing_steps", "0", "--output_dir", str(out)],
                             capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert trained.returncode == 0, trained.stderr[-3000:]
    env = hub_env(fake_hub.url, tmp_path / "push-home", token=ALICE_TOKEN)
    proc = run_push_cli([str(out), "--hub_model_id", "alice/vit-jigsaw"], env)
    assert proc.returncode == 0, proc.stderr
    files = remote_files(fake_hub, "alice/vit-jigsaw")
    assert {"preprocessor_config.json", "model.safetensors", "config.json", "README.md"} <= files
    assert not any(f.startswith("checkpoints/") for f in files)
    loaded = run_python(VIT_RELOAD, hub_env(fake_hub.url, tmp_path / "load-home"), str(out), "alice/vit-jigsaw",
                        timeout=240)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    report = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert report == {"class": "ViTModel", "same": True, "shape": [1, 65, 64]}
