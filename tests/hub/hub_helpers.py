"""Helpers for the Hub tests: the fake Hub process, client environments, a tiny really-trained run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
ALICE_TOKEN = "hf_alice_0123456789abcdefSECRET"
BOB_TOKEN = "hf_bob_9876543210fedcbaSECRET"
_WORDS = ("the model reads long streams of plain text and learns to predict the next token while the "
          "optimizer lowers the loss step after step on a small machine with two cores").split()


@dataclass
class FakeHub:
    url: str
    root: Path
    process: subprocess.Popen

    def requests(self) -> list[dict]:
        log = self.root / "requests.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def blobs(self) -> list[Path]:
        return sorted((self.root / "blobs").glob("*"))


def start_fake_hub(root: Path) -> FakeHub:
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / "fake_hub_server.py"), "--root", str(root),
           "--token", f"alice={ALICE_TOKEN}", "--token", f"bob={BOB_TOKEN}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(root / "server.stderr", "wb"))
    deadline = time.monotonic() + 20
    while not (root / "port").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"fake hub did not start: {(root / 'server.stderr').read_text()}")
        time.sleep(0.05)
    return FakeHub(url=f"http://127.0.0.1:{(root / 'port').read_text().strip()}", root=root, process=proc)


def hub_env(hub_url: str, hf_home: Path, token: str | None = None) -> dict[str, str]:
    """Environment for a fresh client process talking to the fake Hub with an empty cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({
        "HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
    })
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_python(code: str, env: dict[str, str], *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def run_push_cli(args: list[str], env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hfssl.push", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def build_tiny_run(out: Path) -> None:
    """A real (tiny) GPT-2 run directory laid out like the training loop's output_dir."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from hfssl.config import DataArguments, ModelArguments, TrainingArguments
    from hfssl.run_info import write_run_info

    out.mkdir(parents=True)
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 20))) for _ in range(200)]
    corpus_file = out.parent / "corpus.txt"
    corpus_file.write_text("\n".join(corpus) + "\n")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")

    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(config)
    ids = [i for text in corpus for i in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    blocks = torch.tensor(ids[: (len(ids) // 32) * 32]).view(-1, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    metrics = []
    ckpt_root = out / "checkpoints"
    for step in range(1, 7):
        batch = blocks[(step - 1) * 4: step * 4]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        metrics.append({"step": step, "loss": round(loss.item(), 6), "lr": 3e-3})
        if step % 3 == 0:
            with torch.no_grad():
                eval_loss = model(input_ids=blocks[-4:], labels=blocks[-4:]).loss.item()
            metrics.append({"step": step, "eval_loss": eval_loss, "eval_perplexity": float(torch.exp(torch.tensor(eval_loss)))})
            # What accelerate's save_state leaves: weights plus pickled optimizer and RNG states.
            ckpt = ckpt_root / f"step_{step}"
            model.save_pretrained(ckpt)
            torch.save(optimizer.state_dict(), ckpt / "optimizer.bin")
            torch.save({"python": 0}, ckpt / "random_states_0.pkl")
            (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))  # written last, as the loop does
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (out / "all_results.json").write_text(json.dumps({
        "train_loss": metrics[-2]["loss"], "eval_loss": metrics[-1]["eval_loss"],
        "eval_perplexity": metrics[-1]["eval_perplexity"], "train_steps": 6}))
    (out / "results.json").write_text(json.dumps({
        "model_name_or_path": str(out), "mode": "finetune", "init": "pretrained", "config": {},
        "tasks": {"sst2": {"metrics": {"accuracy": {"mean": 0.5, "std": 0.01, "per_seed": {"0": 0.49, "1": 0.51}}},
                           "num_train": 100, "num_eval": 50},
                  "mrpc": {"metrics": {"f1": {"mean": 0.6, "std": 0.0, "per_seed": {"0": 0.6}},
                                       "accuracy": {"mean": 0.55, "std": 0.0, "per_seed": {"0": 0.55}}},
                           "num_train": 100, "num_eval": 50}},
        "average": 0.55}))
    # The loop writes the token-bearing args through run_info, which redacts the token.
    write_run_info(out, ModelArguments(model_type="gpt2"), DataArguments(train_file=[str(corpus_file)]),
                   TrainingArguments(output_dir=str(out), max_steps=6, push_to_hub=True, hub_model_id="alice/tiny",
                                     hub_token=ALICE_TOKEN),
                   {"objective": "clm"})
    # Traps: a pickle next to the safetensors, a symlink leading out of the run, one staying inside.
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    outside = out.parent / "outside"
    outside.mkdir()
    (outside / "private_notes.json").write_text('{"secret": "do not publish"}')
    os.symlink(outside / "private_notes.json", out / "eval_results.json")
    os.symlink(outside, out / "tokenizer_extra")
    os.symlink("all_results.json", out / "train_results.json")


def hub_read(hub: FakeHub, path: str, token: str | None = None) -> tuple[int, bytes]:
    """GET ``path`` on the fake Hub with the standard library (redirects followed); returns (status, body)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(hub.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def hub_get(hub: FakeHub, path: str, token: str | None = None) -> tuple[int, object]:
    """Like ``hub_read`` for JSON API routes: (status, parsed JSON or None)."""
    status, body = hub_read(hub, path, token)
    return status, (json.loads(body) if status == 200 and body else None)


def remote_files(hub: FakeHub, repo_id: str, token: str | None = ALICE_TOKEN, revision: str = "main") -> set[str]:
    status, items = hub_get(hub, f"/api/models/{repo_id}/tree/{revision}?recursive=true", token)
    assert status == 200, status
    return {item["path"] for item in items if item["type"] == "file"}


def files_containing(root: Path, needle: str) -> list[str]:
    """Files under ``root`` (symlinks not followed) whose bytes contain ``needle``."""
    hits = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            if needle.encode() in path.read_bytes():
                hits.append(str(path))
    return hits
