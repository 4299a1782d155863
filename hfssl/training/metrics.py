"""Where logged numbers go: ``metrics.jsonl`` (always), Accelerate trackers, and throughput/MFU maths."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from accelerate import Accelerator

METRICS_FILE = "metrics.jsonl"

# Dense bf16/fp16 tensor-core peaks (FLOP/s) for MFU; override with HFSSL_PEAK_FLOPS.
_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
               "V100": 125e12, "T4": 65e12, "4090": 165e12, "3090": 71e12}


class MetricsLog:
    """Keeps every logged event (so checkpoints can carry them) and mirrors them to disk and trackers.

    On resume the history stored in the checkpoint replaces ``metrics.jsonl``, dropping events
    logged after that checkpoint by the interrupted run, so the file ends up identical to the one an
    uninterrupted run writes (wall-clock fields aside).
    """

    def __init__(self, accelerator: Accelerator, output_dir: str, history: list[dict[str, Any]] | None = None):
        self.accelerator = accelerator
        self.path = os.path.join(output_dir, METRICS_FILE)
        self.history: list[dict[str, Any]] = list(history or [])
        if accelerator.is_main_process:
            os.makedirs(output_dir, exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                for record in self.history:
                    fh.write(json.dumps(record) + "\n")
            os.replace(tmp, self.path)

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.accelerator.trackers:
            values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
            self.accelerator.log(values, step=record["step"])


def flops_per_token(config: Any, seq_len: int, num_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus the attention-score term (PaLM, appendix B)."""
    layers = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    return 6.0 * num_params + 12.0 * layers * hidden * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Per-device peak FLOP/s for MFU, or None when unknown (CPU, unlisted GPU)."""
    override = os.environ.get("HFSSL_PEAK_FLOPS")
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in _PEAK_FLOPS.items():
        if key in name:
            return value
    return None

