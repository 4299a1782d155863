"""One writer per output directory, and no worker left writing after its launcher is gone.

* ``OutputDirLock``: the process that writes checkpoints into ``output_dir`` (global rank 0, or each node's
  first process with ``--save_on_each_node``) holds an exclusive ``flock`` on ``output_dir/.hfssl-run.lock``
  for the whole run. A second run started on the same directory - a resume started while the first run
  still trains, or the orphaned workers of a killed launcher - is refused with the owner's pid and host.
  The kernel drops the lock when the owner exits, however it exits, so a crash never leaves a stale lock.
* ``watch_launcher``: ``torchrun`` and ``accelerate launch`` start the training processes as children; when
  the launcher is killed with SIGKILL it cannot stop them, and they would go on training and writing into
  ``output_dir``. Each launched process watches its parent and exits when the parent is gone. A checkpoint
  cut short is never mistaken for a complete one (see ``hfssl.training.checkpoint``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

from hfssl.errors import HfsslError
from hfssl.logging import get_logger

logger = get_logger(__name__)

LOCK_FILE = ".hfssl-run.lock"
# Locks this process holds, by real path: a second run in the same Python process (a test, a notebook
# calling train() twice) re-uses its own lock instead of refusing itself.
_held: dict[str, Any] = {}


class OutputDirInUseError(HfsslError):
    """Another live process is writing into this output directory."""


def acquire_output_dir(output_dir: str) -> None:
    """Take the one-writer lock of ``output_dir`` (created if needed) for the rest of this process's life."""
    import fcntl

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.realpath(os.path.join(output_dir, LOCK_FILE))
    if path in _held:
        return
    fh = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        owner = _describe_owner(fh.read())
        fh.close()
        raise OutputDirInUseError(
            f"{output_dir} is in use by another run ({owner}); wait for it to finish or stop it, or choose another "
            "--output_dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "command": " ".join(sys.argv)[:500]}))
    fh.flush()
    _held[path] = fh


def release_output_dir(output_dir: str) -> None:
    """Drop the lock early (the end of a run; process exit drops it anyway)."""
    import fcntl

    fh = _held.pop(os.path.realpath(os.path.join(output_dir, LOCK_FILE)), None)
    if fh is not None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def _describe_owner(content: str) -> str:
    try:
        owner = json.loads(content)
        return f"pid {owner['pid']} on host {owner['host']}, started {owner['started']}"
    except (ValueError, KeyError, TypeError):
        return "its owner did not record itself"


def check_output_dir_sharing(accelerator: Any, output_dir: str, save_on_each_node: bool) -> None:
    """Several nodes: ``output_dir`` must be one shared folder, unless ``--save_on_each_node`` (then it must not be).

    The main process leaves a marker file; every process says whether it sees it. Collective (every rank
    calls it); a no-op for a single process.
    """
    if accelerator.num_processes == 1:
        return
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    marker = [f".hfssl-shared-{uuid.uuid4().hex}" if accelerator.is_main_process else None]
    marker = broadcast_object_list(marker)
    path = os.path.join(output_dir, marker[0])
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        open(path, "w").close()
    accelerator.wait_for_everyone()
    seen = gather_object([(os.path.exists(path), socket.gethostname(), accelerator.process_index)])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.remove(path)
    blind = [(host, rank) for visible, host, rank in seen if not visible]
    if blind and not save_on_each_node:
        host, rank = blind[0]
        raise HfsslError(f"--output_dir {output_dir} is not shared: process {rank} on host {host} cannot see the main "
                         "process's files there; put it on a filesystem every node mounts, or (DDP) pass "
                         "--save_on_each_node to keep a whole copy on every node")
    if save_on_each_node and not blind and len({host for _, host, _ in seen}) > 1:
        raise HfsslError(f"--save_on_each_node: --output_dir {output_dir} is shared by every node, so each node's "
                         "copy would overwrite the others; drop the flag")


def launched_by_launcher() -> bool:
    """True when torchrun/torch elastic or ``accelerate launch`` started this process."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("ACCELERATE_MIXED_PRECISION")
                or os.environ.get("ACCELERATE_USE_CPU"))


_watching = False


def watch_launcher(poll_seconds: float = 1.0) -> bool:
    """Exit this process when the launcher that started it dies (its parent changes). Returns True if watching.

    Only for launched processes: a plain ``python recipe.py`` run under nohup must survive its shell.
    """
    global _watching
    if _watching or not launched_by_launcher():
        return _watching
    parent = os.getppid()
    if parent <= 1:
        return False

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                sys.stderr.write(f"{os.path.basename(sys.argv[0]) or 'hfssl'}: error: the launcher (pid {parent}) is "
                                 "gone; stopping this worker (resume with --resume_from_checkpoint latest)\n")
                sys.stderr.flush()
                os._exit(1)

    threading.Thread(target=watch, name="hfssl-launcher-watch", daemon=True).start()
    _watching = True
    return True


__all__ = ["LOCK_FILE", "OutputDirInUseError", "acquire_output_dir", "check_output_dir_sharing", "launched_by_launcher", "release_output_dir",
           "watch_launcher"]
