"""Hermetic test environment: offline, temporary HF caches, GPU tests skipped without CUDA."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Set before transformers/datasets/huggingface_hub are imported anywhere: they read these at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["WANDB_MODE"] = "disabled"
_session_home = Path(os.environ.get("PYTEST_HF_HOME", "")) if os.environ.get("PYTEST_HF_HOME") else None
if _session_home is None:
    import tempfile

    _session_home = Path(tempfile.mkdtemp(prefix="hfssl-test-hf-home-"))
os.environ["HF_HOME"] = str(_session_home)
os.environ["HF_DATASETS_CACHE"] = str(_session_home / "datasets")
os.environ["HF_HUB_CACHE"] = str(_session_home / "hub")
os.environ.pop("HF_TOKEN", None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def python_exe() -> str:
    """The interpreter running the tests, for subprocess runs of recipes."""
    return sys.executable


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` when present (never in a fresh clone); skips otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
