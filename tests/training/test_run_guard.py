"""One writer per output_dir, and workers that stop when their launcher is killed (real processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfssl.training.run_guard import LOCK_FILE, OutputDirInUseError, acquire_output_dir, release_output_dir
from tests.helpers.launch import REPO_ROOT, error_lines, launch_env, run

GPT = str(REPO_ROOT / "recipes" / "gpt_clm.py")


def long_run_args(tokenizer_dir: Path, output_dir: Path, max_steps: int = 100000) -> list[str]:
    return ["--tokenizer_name", str(tokenizer_dir), "--model_size", "tiny", "--max_seq_length", "32",
            "--max_steps", str(max_steps), "--checkpointing_steps", "5", "--logging_steps", "5",
            "--validation_split_documents", "4", "--output_dir", str(output_dir)]


def wait_for(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def lock_owner(output_dir: Path) -> dict | None:
    try:
        return json.loads((output_dir / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_the_lock_is_per_directory_and_reentrant_in_one_process(tmp_path):
    acquire_output_dir(str(tmp_path))
    acquire_output_dir(str(tmp_path))  # the same process may take its own lock again
    owner = lock_owner(tmp_path)
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    probe = ("import sys; from hfssl.training.run_guard import acquire_output_dir\n"
             "try:\n    acquire_output_dir(sys.argv[1])\nexcept Exception as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in out.stdout
    release_output_dir(str(tmp_path))
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.stdout == ""  # free again


@pytest.mark.multiprocess
def test_a_second_run_on_a_live_output_dir_is_refused_with_the_owner(tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, GPT, *long_run_args(tokenizer_dir, out)], env=launch_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (lock_owner(out) or {}).get("pid") == first.pid, what="the first run's lock")
        wait_for(lambda: (out / "checkpoints").is_dir(), what="a first checkpoint")
        second = run([sys.executable, GPT, *long_run_args(tokenizer_dir, out), "--resume_from_checkpoint", "latest"],
                     check=False, timeout=120)
        assert second.returncode != 0
        lines = error_lines(second.stderr)
        assert len(lines) == 1, second.stderr
        assert f"in use by another run (pid {first.pid} on host {socket.gethostname()}" in lines[0]
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.wait()
    with pytest.raises(OutputDirInUseError, match="in use"):
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from hfssl.training.run_guard import "
                                   "acquire_output_dir; acquire_output_dir(sys.argv[1]); print('held', flush=True); "
                                   "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            acquire_output_dir(str(out))
        finally:
            holder.kill()
            holder.wait()


@pytest.mark.multiprocess
def test_workers_stop_when_their_launcher_is_killed(tokenizer_dir, tmp_path):
    """kill -9 of torchrun cannot stop its workers; each worker notices its parent is gone and exits, so a
    resume started afterwards does not race an orphan writing into the same output_dir."""
    out = tmp_path / "out"
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                                 GPT, *long_run_args(tokenizer_dir, out)], env=launch_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: (out / "checkpoints").is_dir(), what="training to start")
        worker = lock_owner(out)["pid"]
        assert worker != launcher.pid and pid_alive(worker)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        wait_for(lambda: not pid_alive(worker), timeout=30, what="the orphaned worker to stop")
        assert f"the launcher (pid {launcher.pid}) is gone" in launcher.stderr.read()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    resumed = run([sys.executable, GPT, *long_run_args(tokenizer_dir, out, max_steps=12),
                   "--resume_from_checkpoint", "latest"], timeout=300)
    assert "resumed from" in resumed.stderr
