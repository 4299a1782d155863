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


LIGHT_RECIPES = ["train_tokenizer.py", "gpt_clm.py", "bert_mlm.py", "seq2seq_denoising.py"]
_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in ("torch", "datasets", "accelerate") if m in sys.modules))
"""


@pytest.mark.parametrize("recipe", LIGHT_RECIPES)
@pytest.mark.parametrize("args", [["--help"], ["--output_dir", "o", "--max_stepz", "3"]])
def test_help_and_flag_errors_answer_before_heavy_imports(recipe, args, tmp_path):
    """--help took 15-18 s on a cold machine because torch, datasets and accelerate loaded first."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(REPO_ROOT / "recipes" / recipe), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY:", proc.stdout[-500:] + proc.stderr[-2000:]
    if args == ["--help"]:
        assert "--output_dir" in proc.stdout
    else:
        assert "unrecognized arguments: --max_stepz 3" in proc.stderr
