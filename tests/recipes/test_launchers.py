"""A bad input is one actionable line under every launcher users run recipes with."""

from __future__ import annotations

import sys

import pytest

from tests.helpers.launch import ACCELERATE, REPO_ROOT, error_lines, launch_env, run

GPT = str(REPO_ROOT / "recipes" / "gpt_clm.py")
BAD = ["--train_file", "/nonexistent/corpus.txt", "--max_steps", "2"]


def test_accelerate_launch_quiet_prints_only_the_recipes_line(tmp_path):
    # Every launcher value given (or a config file): no "values were not passed" warning; -q: no traceback.
    result = run([ACCELERATE, "launch", "-q", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no", GPT, *BAD, "--output_dir", str(tmp_path)], env=launch_env(), check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip() and "UserWarning" not in line
             and "warnings.warn" not in line]
    assert lines == ["gpt_clm.py: error: --train_file /nonexistent/corpus.txt does not exist"], result.stderr


@pytest.mark.multiprocess
def test_torchrun_failure_summary_names_the_cause(tmp_path):
    result = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", GPT, *BAD,
                  "--output_dir", str(tmp_path)], env=launch_env(), check=False)
    assert result.returncode == 1
    own = {line for line in error_lines(result.stderr) if line.startswith("gpt_clm.py")}  # one per rank
    assert own == {"gpt_clm.py: error: --train_file /nonexistent/corpus.txt does not exist"}
    # The launcher's own summary points at that line instead of "To enable traceback see ...".
    assert "traceback : gpt_clm.py: error: --train_file /nonexistent/corpus.txt does not exist" in result.stderr
