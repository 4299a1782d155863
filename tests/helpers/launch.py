"""Run recipes the way users launch them: ``accelerate launch`` with a shipped config, or torchrun.

``fsdp_on_cpu=True`` puts ``tests/helpers/fsdp_on_cpu`` on ``PYTHONPATH``: its ``sitecustomize`` switches
Accelerate's state to FSDP on gloo processes (Accelerate enables FSDP only on accelerators), so the real
FSDP code path of Accelerate and torch runs on CPU. The library never needs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs" / "accelerate"
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# The shipped configs ask for bf16 on 8 GPUs; on CPU processes the tests run them in fp32 on 2.
CPU_OVERRIDES = ["--num_processes", "2", "--mixed_precision", "no"]


def launch_env(fsdp_on_cpu: bool = False, deepspeed_on_cpu: bool = False, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **extra}
    env.pop("PYTHONPATH", None)
    for wanted, flag in ((fsdp_on_cpu, "HFSSL_TEST_FSDP_ON_CPU"), (deepspeed_on_cpu, "HFSSL_TEST_DEEPSPEED_ON_CPU")):
        if wanted:
            env[flag] = "1"
            env["PYTHONPATH"] = str(REPO_ROOT / "tests" / "helpers" / "fsdp_on_cpu")
    return env


def accelerate_command(config: str, recipe: str, args: list[str], launcher_args: list[str] | None = None) -> list[str]:
    """``accelerate launch --config_file configs/accelerate/<config>.yaml [launcher args] recipes/<recipe> args``."""
    launcher = CPU_OVERRIDES if launcher_args is None else launcher_args
    return [ACCELERATE, "launch", "--config_file", str(CONFIGS / f"{config}.yaml"), *launcher,
            str(REPO_ROOT / "recipes" / recipe), *args]


def run(command: list[str], *, env: dict[str, str] | None = None, timeout: int = 400, check: bool = True,
        cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, env=env or launch_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or REPO_ROOT)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return proc


def accelerate_launch(config: str, recipe: str, args: list[str], *, fsdp_on_cpu: bool = False,
                      deepspeed_on_cpu: bool = False, launcher_args: list[str] | None = None, check: bool = True,
                      timeout: int = 400) -> subprocess.CompletedProcess:
    return run(accelerate_command(config, recipe, args, launcher_args),
               env=launch_env(fsdp_on_cpu, deepspeed_on_cpu), check=check, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The lines a recipe wrote as its own errors (``<recipe>.py: error: ...``)."""
    return [line for line in stderr.splitlines() if ".py: error:" in line and not line.startswith(" ")]
