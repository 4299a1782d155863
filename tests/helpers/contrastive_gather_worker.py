"""Run under torchrun (gloo): NT-Xent with gathered negatives on this rank's slice of fixed features."""

import json
import sys

import torch
import torch.distributed as dist

from hfssl.objectives.vision.objectives import nt_xent


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows, dim, temperature = 6, 5, 0.2  # 2B = 6 views per rank
    features = torch.randn(world * rows, dim, generator=torch.Generator().manual_seed(0))
    mine = features[rank * rows:(rank + 1) * rows].clone().requires_grad_()
    loss, correct = nt_xent(mine, temperature, gather=True)
    loss.backward()
    local, _ = nt_xent(mine.detach(), temperature, gather=False)
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as fh:
        json.dump({"loss": loss.item(), "correct": int(correct), "grad": mine.grad.tolist(),
                   "local_loss": local.item()}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
