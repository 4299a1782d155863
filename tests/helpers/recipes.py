"""Shared by the recipe tests: import a recipe script as a module, read a run's metrics history."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType


def import_recipe(path: Path) -> ModuleType:
    """``recipes/<name>.py`` as a module, to call ``main(argv)`` in-process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(f"{path.stem}_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the recipe's field types through sys.modules
    spec.loader.exec_module(module)
    return module


def read_history(output_dir: Path) -> list[dict]:
    """The records of ``output_dir/metrics.jsonl``."""
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
