"""Atomic, rotating training checkpoints under ``output_dir/checkpoints/step_N``.

A checkpoint is written into ``.tmp-step_N``, every file is fsynced, then the directory is
renamed to ``step_N`` (a rename is atomic on POSIX filesystems). A ``step_N`` directory therefore
always holds a complete checkpoint, whatever moment the process was killed, and "latest" is
simply the highest ``step_N``. Stale temporary directories are swept on the next save.

Layout: Accelerate's ``save_state`` files (model, optimizer, grad scaler, each rank's RNG
states; FSDP/DeepSpeed shards when configured), plus ``scheduler.pt``, ``rank_<r>.pt`` (each
rank's data position, corruption generator and un-logged metric sums) and
``trainer_state.json`` (step, epoch, logged metrics so far), written last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch
from accelerate import Accelerator

from hfssl.errors import HfsslError
from hfssl.logging import get_logger

logger = get_logger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as ``(step, path)``, oldest first."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        if match and os.path.isfile(os.path.join(root, name, TRAINER_STATE)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(output_dir: str, resume_from_checkpoint: str | None, overwrite_output_dir: bool) -> str | None:
    """The checkpoint directory to resume from, or None to start afresh.

    Refuses to silently train over existing checkpoints: the user must say which they want.
    """
    existing = list_checkpoints(output_dir)
    if resume_from_checkpoint:
        if resume_from_checkpoint == "latest":
            return existing[-1][1] if existing else None
        path = resume_from_checkpoint
        if not os.path.isfile(os.path.join(path, TRAINER_STATE)):
            raise HfsslError(f"--resume_from_checkpoint {path!r} is not a complete hfssl checkpoint "
                             f"(no {TRAINER_STATE}); pass 'latest' or a {checkpoint_root(output_dir)}/step_N dir")
        return path
    if existing and not overwrite_output_dir:
        raise HfsslError(f"{output_dir} already holds checkpoints (latest: {os.path.basename(existing[-1][1])}); "
                         "add --resume_from_checkpoint latest to continue or --overwrite_output_dir to start afresh")
    return None


def _fsync_tree(path: str) -> None:
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_checkpoint(path: str) -> None:
    # Rename first so a kill during rmtree never leaves a half-deleted dir that looks complete.
    trash = os.path.join(os.path.dirname(path), f".trash-{os.path.basename(path)}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    step: int,
    *,
    trainer_state: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank_state: dict[str, Any],
    save_total_limit: int | None,
) -> str:
    """Write ``checkpoints/step_<step>`` atomically (collective: every rank must call it)."""
    root = checkpoint_root(output_dir)
    final = os.path.join(root, f"step_{step}")
    tmp = os.path.join(root, f".tmp-step_{step}")
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            if name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    torch.save(rank_state, os.path.join(tmp, f"rank_{accelerator.process_index}.pt"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
        with open(os.path.join(tmp, TRAINER_STATE), "w", encoding="utf-8") as fh:
            json.dump(trainer_state, fh, indent=1)
        _fsync_tree(tmp)
        if os.path.exists(final):  # re-saving a step after a resume: replace the old copy
            remove_checkpoint(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        if save_total_limit is not None and save_total_limit > 0:
            for _, old in list_checkpoints(output_dir)[:-save_total_limit]:
                remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str, scheduler: torch.optim.lr_scheduler.LRScheduler
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model/optimizer/scaler/RNG in place; return ``(trainer_state, this rank's state)``."""
    rank_file = os.path.join(path, f"rank_{accelerator.process_index}.pt")
    if not os.path.isfile(rank_file):
        raise HfsslError(f"checkpoint {path} has no state for rank {accelerator.process_index}: resume with "
                         "the same number of processes it was saved with")
    accelerator.load_state(path)
    scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=False))
    with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as fh:
        trainer_state = json.load(fh)
    rank_state = torch.load(rank_file, weights_only=False, map_location="cpu")
    return trainer_state, rank_state
