"""Record what produced a run: resolved config, package versions, git revision."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from importlib import metadata
from typing import Any

# Fields whose values must never reach disk (tokens, passwords).
SECRET_FIELDS = frozenset({"hub_token", "token", "wandb_api_key"})
_PACKAGES = ("hfssl", "torch", "transformers", "datasets", "tokenizers", "accelerate", "evaluate",
             "huggingface_hub", "safetensors")


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``config`` with secret fields replaced."""
    return {k: ("<redacted>" if k in SECRET_FIELDS and v else v) for k, v in config.items()}


def config_dict(*configs: Any) -> dict[str, Any]:
    """Merge dataclass instances into one flat, redacted dict."""
    merged: dict[str, Any] = {}
    for cfg in configs:
        merged.update(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg))
    return redact(merged)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision(path: str | None = None) -> str | None:
    """Commit of the hfssl source tree (with ``-dirty`` if modified), or None outside git."""
    path = path or os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def write_run_info(output_dir: str, *configs: Any, filename: str = "run_config.json") -> str:
    """Write the resolved config, versions and git revision to ``output_dir/filename``."""
    os.makedirs(output_dir, exist_ok=True)
    info = {"config": config_dict(*configs), "versions": package_versions(), "git_revision": git_revision()}
    return write_json_atomic(os.path.join(output_dir, filename), info, sort_keys=True, default=str)


def write_json_atomic(path: str, obj: Any, **dump_kwargs: Any) -> str:
    """``json.dump`` to ``path`` through a temporary file, so a crash never leaves half a file behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, **dump_kwargs)
    os.replace(tmp, path)
    return path
