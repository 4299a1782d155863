"""Atomic, verified, rotating training checkpoints under ``output_dir/checkpoints/step_N``.

Writing: a checkpoint is written into ``.tmp-step_N``; when every rank has written its files the
process that owns the directory records ``checkpoint_manifest.json`` (size and xxh3 hash of every
file), writes ``trainer_state.json`` last, fsyncs everything, then renames the directory to ``step_N``
(atomic on POSIX filesystems). Stale temporary directories are swept on the next save.

Reading: a kill during the rename cannot leave a half-written ``step_N``, but a full disk, a copy cut
short or a flipped bit later can damage one. ``resolve_resume`` therefore checks a checkpoint against
its manifest before using it: ``--resume_from_checkpoint latest`` takes the newest checkpoint that
passes, with one warning line for each damaged one skipped; an explicit path that fails is one error
line naming the damaged file.

Layout: Accelerate's ``save_state`` files (model, optimizer, grad scaler, each rank's RNG states;
FSDP/DeepSpeed shards when configured), ``scheduler.pt``, ``rank_<r>.pt`` (each rank's data position,
corruption generator and un-logged metric sums), the manifest and ``trainer_state.json`` (step,
world size, logged metrics so far).

World size: the data position counts examples of the global stream, so a run may resume on more or
fewer processes (see ``load_checkpoint``); FSDP's sharded model and optimizer states are resharded
by ``torch.distributed.checkpoint`` when Accelerate loads them.
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
MANIFEST = "checkpoint_manifest.json"
_RANK_FILE = re.compile(r"^rank_(\d+)\.pt$")


class CheckpointError(HfsslError):
    """A checkpoint is missing, incomplete or damaged."""


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Checkpoints that were renamed into place (``step_N`` with a trainer state), oldest first.

    Being listed says the save finished; ``verify_checkpoint`` says whether the files are still intact.
    """
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


# ------------------------------------------------------------------------------------------ manifest
def _file_digest(path: str) -> str:
    import xxhash  # a dependency of datasets: always present

    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_files(path: str) -> list[str]:
    files = []
    for dirpath, _, names in os.walk(path):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), path)
            if rel not in (MANIFEST, TRAINER_STATE):
                files.append(rel)
    return sorted(files)


def write_manifest(path: str) -> dict[str, Any]:
    """Record size and hash of every file in checkpoint ``path`` (all but the manifest and trainer state)."""
    files = {rel: {"size": os.path.getsize(os.path.join(path, rel)), "xxh3": _file_digest(os.path.join(path, rel))}
             for rel in _checkpoint_files(path)}
    manifest = {"version": 1, "files": files}
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest


def verify_checkpoint(path: str, *, hashes: bool = True) -> str | None:
    """None if checkpoint ``path`` is complete and intact, else why not (naming the file).

    Checks that the trainer state parses, every file of the manifest is there with its recorded size and
    (with ``hashes``) content hash, and every rank's state file exists. Checkpoints written before
    manifests existed are only checked for their trainer state.
    """
    state_path = os.path.join(path, TRAINER_STATE)
    if not os.path.isdir(path):
        return f"{path} does not exist"
    try:
        with open(state_path, encoding="utf-8") as fh:
            state = json.load(fh)
        int(state["step"])
    except FileNotFoundError:
        return f"{state_path} is missing (the save never finished)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{state_path} is damaged ({type(exc).__name__})"
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest_path):
        return None  # written before manifests existed: the trainer state was written last, so the save finished
    try:
        with open(manifest_path, encoding="utf-8") as fh:
            files = json.load(fh)["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest_path} is damaged ({type(exc).__name__})"
    for rel, expected in files.items():
        file_path = os.path.join(path, rel)
        if not os.path.isfile(file_path):
            return f"{file_path} is missing"
        size = os.path.getsize(file_path)
        if size != expected["size"]:
            return f"{file_path} has {size:,} bytes, {expected['size']:,} were written"
        if hashes and _file_digest(file_path) != expected["xxh3"]:
            return f"{file_path} has changed since it was written (content hash differs)"
    world = int(state.get("world_size", 1))
    missing = [r for r in range(world) if f"rank_{r}.pt" not in files]
    if missing and files:
        return f"{path} has no data state for rank {missing[0]} of {world}"
    return None


# ------------------------------------------------------------------------------------------ choosing
def check_output_dir(output_dir: str, resume_from_checkpoint: str | None, overwrite_output_dir: bool) -> None:
    """Cheap checks before anything starts: never train silently over checkpoints, never resume from nothing."""
    if resume_from_checkpoint and resume_from_checkpoint != "latest":
        if not os.path.isdir(resume_from_checkpoint):
            raise CheckpointError(f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist; pass 'latest' "
                                  f"or a {checkpoint_root(output_dir)}/step_N directory")
        return
    if resume_from_checkpoint:
        return
    existing = list_checkpoints(output_dir)
    if existing and not overwrite_output_dir:
        raise CheckpointError(f"{output_dir} already holds checkpoints (latest: {os.path.basename(existing[-1][1])}); "
                              "add --resume_from_checkpoint latest to continue or --overwrite_output_dir to start afresh")


def resolve_resume(output_dir: str, resume_from_checkpoint: str | None, overwrite_output_dir: bool) -> str | None:
    """The verified checkpoint directory to resume from, or None to start afresh.

    ``latest`` takes the newest intact checkpoint, warning once per damaged one it skips, and says so when
    there is none yet (the run then starts from scratch); an explicit path must be intact.
    """
    check_output_dir(output_dir, resume_from_checkpoint, overwrite_output_dir)
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint != "latest":
        problem = verify_checkpoint(resume_from_checkpoint)
        if problem:
            raise CheckpointError(f"cannot resume from {resume_from_checkpoint}: {problem}; pass another checkpoint "
                                  "or 'latest' (the newest intact one)")
        return resume_from_checkpoint
    existing = list_checkpoints(output_dir)
    if not existing:
        logger.warning("--resume_from_checkpoint latest: no checkpoint in %s yet; starting from scratch",
                       checkpoint_root(output_dir))
        return None
    skipped = []
    for _, path in reversed(existing):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        logger.warning("skipping damaged checkpoint %s: %s", os.path.basename(path), problem)
        skipped.append(f"{os.path.basename(path)}: {problem}")
    raise CheckpointError(f"every checkpoint in {checkpoint_root(output_dir)} is damaged ({'; '.join(skipped)}); "
                          "restore one, or start afresh with --overwrite_output_dir")


# ------------------------------------------------------------------------------------------ writing
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


def _owns_directory(accelerator: Accelerator, save_on_each_node: bool) -> bool:
    """The process that creates, completes, renames and rotates checkpoint directories on its filesystem."""
    return accelerator.is_local_main_process if save_on_each_node else accelerator.is_main_process


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    step: int,
    *,
    trainer_state: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank_state: dict[str, Any],
    save_total_limit: int | None,
    save_on_each_node: bool = False,
) -> str:
    """Write ``checkpoints/step_<step>`` atomically (collective: every rank must call it).

    Every rank's small state (``rank_state``: data position, generator, metric sums) is gathered and written
    by the directory's owner, so each copy holds all of them. With ``save_on_each_node`` (DDP on nodes
    without a shared filesystem) every node writes a whole checkpoint into its own ``output_dir``: each
    node's first process owns the directory there.
    """
    from accelerate.utils import gather_object

    rank_states = gather_object([rank_state]) if accelerator.num_processes > 1 else [rank_state]
    root = checkpoint_root(output_dir)
    final = os.path.join(root, f"step_{step}")
    tmp = os.path.join(root, f".tmp-step_{step}")
    owner = _owns_directory(accelerator, save_on_each_node)
    if owner:
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            if name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if owner:
        for rank, state in enumerate(rank_states):
            torch.save(state, os.path.join(tmp, f"rank_{rank}.pt"))
        torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
        write_manifest(tmp)
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


# ------------------------------------------------------------------------------------------ reading
def saved_world_size(path: str) -> int:
    with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as fh:
        return int(json.load(fh).get("world_size", 1))


def load_checkpoint(accelerator: Accelerator, path: str, scheduler: torch.optim.lr_scheduler.LRScheduler
                    ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Restore model/optimizer/scaler/RNG in place; return ``(trainer_state, this rank's state, every saved
    rank's state)``.

    On the world size it was saved with, each rank gets back its own state. On another world size
    (``loop.TrainingRun`` decides what carries over) the model and optimizer are restored as usual
    (resharded under FSDP), ranks that did not exist get no RNG state from the checkpoint, and this
    rank's state is rank 0's.
    """
    try:
        accelerator.load_state(path)
        scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=False))
        with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as fh:
            trainer_state = json.load(fh)
        saved = int(trainer_state.get("world_size", 1))
        ranks = [torch.load(os.path.join(path, f"rank_{r}.pt"), weights_only=False, map_location="cpu")
                 for r in range(saved)]
    except (OSError, RuntimeError, ValueError, KeyError, EOFError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {detail[:300]}; resume from another checkpoint or "
                              "start afresh with --overwrite_output_dir") from None
    own = ranks[accelerator.process_index] if accelerator.process_index < saved else ranks[0]
    return trainer_state, own, ranks


__all__ = ["CheckpointError", "check_output_dir", "checkpoint_root", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "remove_checkpoint", "resolve_resume", "save_checkpoint", "saved_world_size",
           "verify_checkpoint", "write_manifest"]
