"""Run under torchrun: proves Accelerate sees every process and gloo collectives work."""

import json
import sys

import torch
from accelerate import Accelerator


def main() -> None:
    accelerator = Accelerator(cpu=True)
    rank = torch.tensor([float(accelerator.process_index)])
    total = accelerator.reduce(rank.clone(), reduction="sum")
    gathered = accelerator.gather(rank.clone())
    # DDP gradient averaging: each rank sees a different input, the grads must end up equal.
    model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
    x = torch.full((1, 2), float(accelerator.process_index + 1))
    model(x).sum().backward()
    grad = model.module.weight.grad if hasattr(model, "module") else model.weight.grad
    out = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "sum": total.item(),
        "gathered": gathered.tolist(),
        "grad": grad.tolist(),
    }
    with open(f"{sys.argv[1]}/rank{accelerator.process_index}.json", "w") as fh:
        json.dump(out, fh)
    # Without an explicit teardown gloo's worker threads can still be alive at interpreter exit, and a
    # rank then dies with "terminate called without an active exception" (seen once in CI).
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
