"""Timing helpers shared by the training-throughput benchmarks.

Each contender runs in its own fresh process (``run_contenders``) so compilation caches, allocator
state and Accelerate singletons of one never help or hurt another. Steps are timestamped at their
start (after a CUDA sync), and only steady-state steps after a warm-up are counted, so compilation
and first-batch costs are excluded for every contender alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any


class StepClock:
    """Timestamps of the start of every optimizer step and the input tokens of every step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []

    def tick(self, tokens: int) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.tokens.append(tokens)

    def throughput(self, warmup: int, steps: int) -> dict[str, float]:
        if len(self.times) < warmup + steps + 1:
            raise RuntimeError(f"only {len(self.times)} steps were timed, {warmup + steps + 1} needed")
        elapsed = self.times[warmup + steps] - self.times[warmup]
        tokens = sum(self.tokens[warmup:warmup + steps])
        return {"tokens_per_second": tokens / elapsed, "seconds_per_step": elapsed / steps}


class TimedLoader:
    """Wraps a loader given to the hfssl loop: with no accumulation it fetches each step's batch right
    before computing it, so a tick per batch is a tick per step."""

    def __init__(self, loader: Iterable[dict], clock: StepClock):
        self.loader, self.clock = loader, clock

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            self.clock.tick(batch["input_ids"].numel())
            yield batch


def mfu_fields(model: Any, seq_len: int) -> dict[str, float]:
    """FLOPs per token and the device peak, on CUDA only (``finish_mfu`` turns them into MFU)."""
    import torch

    from hfssl.training.metrics import flops_per_token, peak_flops

    peak = peak_flops(torch.device("cuda")) if torch.cuda.is_available() else None
    if not peak:
        return {}
    n_params = sum(p.numel() for p in model.parameters())
    return {"flops_per_token": flops_per_token(model.config, seq_len, n_params), "peak_flops": peak}


def finish_mfu(result: dict[str, Any]) -> dict[str, Any]:
    if "peak_flops" in result:
        result["mfu"] = result["tokens_per_second"] * result.pop("flops_per_token") / result.pop("peak_flops")
    return result


def run_contenders(script: str, names: list[str], worker_args: list[str], known: tuple[str, ...]) -> dict[str, Any]:
    """Run ``script --worker NAME *worker_args`` per contender; each prints one JSON line last."""
    results: dict[str, Any] = {}
    for name in names:
        if name not in known:
            raise SystemExit(f"unknown contender {name!r}; choose from {', '.join(known)}")
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, script, "--worker", name, *worker_args], capture_output=True, text=True)
        if proc.returncode != 0:
            results[name] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        else:
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name]["wall_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    return results


def ratios_to(results: dict[str, Any], baseline: str) -> dict[str, float]:
    base = results.get(baseline, {}).get("tokens_per_second")
    return {f"{name}/{baseline}": round(res["tokens_per_second"] / base, 3)
            for name, res in results.items() if base and name != baseline and "tokens_per_second" in res}


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def bench_main(argv: list[str] | None, parse: Any, worker: Any, run: Any) -> None:
    """A benchmark's entry point: a worker (``--worker NAME``, started by ``run_contenders``) prints its one
    contender's JSON; otherwise the parent runs every contender and prints the combined JSON line."""
    args = parse(argv)
    print(json.dumps(worker(args) if args.worker else run(argv)))


def record_losses(accelerator: Any) -> list[Any]:
    """Make ``accelerator.backward`` keep every loss it is given (on the device: no sync); returns the list."""
    losses: list[Any] = []
    backward = accelerator.backward

    def recording_backward(loss: Any, **kwargs: Any) -> Any:
        losses.append(loss.detach())
        return backward(loss, **kwargs)

    accelerator.backward = recording_backward
    return losses
