"""Fixtures for the Hub tests: a real HTTP fake Hub process and a tiny, really trained run directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub.hub_helpers import FakeHub, build_tiny_run, start_fake_hub


@pytest.fixture
def fake_hub(tmp_path: Path) -> Iterator[FakeHub]:
    hub = start_fake_hub(tmp_path / "fake-hub")
    try:
        yield hub
    finally:
        hub.process.terminate()
        try:
            hub.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            hub.process.kill()


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (a few seconds of real training); tests copy it."""
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    build_tiny_run(out)
    return out


@pytest.fixture
def tiny_run(tiny_run_template: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run (symlinks preserved) that a test may modify."""
    import shutil

    dest_parent = tmp_path / "runs"
    shutil.copytree(tiny_run_template.parent, dest_parent, symlinks=True)
    run = dest_parent / "run"
    # Re-point the escaping symlinks at this copy's own "outside" folder.
    for name, target in (("eval_results.json", dest_parent / "outside" / "private_notes.json"),
                         ("tokenizer_extra", dest_parent / "outside")):
        (run / name).unlink()
        os.symlink(target, run / name)
    return run


