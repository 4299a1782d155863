"""Every recipe answers a bad flag with one actionable line, not a traceback."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

RECIPES = sorted(p.name for p in (REPO_ROOT / "recipes").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_unknown_flag_gives_one_line(recipe, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / recipe), "--output_dir", str(tmp_path), "--no_such_flag", "1"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "--no_such_flag" in lines[0] and "Traceback" not in proc.stderr


def test_recipes_exist():
    assert {"train_tokenizer.py", "gpt_clm.py", "bert_mlm.py", "glue_finetune.py"} <= set(RECIPES)
