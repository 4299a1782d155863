"""Run under torchrun (gloo, 2 processes): the cross-rank pieces of the vision SSL tasks against one-process
references computed on every rank from the same seeded data. Writes rank<N>.json with what it measured."""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    results: dict = {}

    # MoCo v3: queries against the keys of every rank == the global batch's InfoNCE (loss and gradient).
    from tests.objectives.vision.test_objectives import build

    objective, _ = build("moco_v3")
    queries = F.normalize(torch.randn(world * 4, 8, generator=g), dim=-1)
    keys = F.normalize(torch.randn(world * 4, 8, generator=g), dim=-1)
    mine = queries[rank * 4:(rank + 1) * 4].clone().requires_grad_()
    loss, right = objective._info_nce(mine, keys[rank * 4:(rank + 1) * 4], gather=True)
    loss.backward()
    reference = queries.clone().requires_grad_()
    full = F.cross_entropy(reference @ keys.T / 0.2, torch.arange(world * 4), reduction="sum")
    full.backward()
    results["moco_loss"], results["moco_full"] = loss.item(), full.item()
    results["moco_grad"] = (mine.grad - reference.grad[rank * 4:(rank + 1) * 4]).abs().max().item()

    # SwAV's Sinkhorn: sums over ranks == Sinkhorn of the whole batch (and a shared queue counted once).
    from hfssl.objectives.vision.clustering import sinkhorn

    scores = F.normalize(torch.randn(world * 6, 5, generator=g), dim=-1)
    queue = F.normalize(torch.randn(4, 5, generator=g), dim=-1)
    codes = sinkhorn(scores[rank * 6:(rank + 1) * 6], shared=queue)
    whole = sinkhorn(torch.cat([scores, queue]))
    results["sinkhorn"] = (codes - whole[rank * 6:(rank + 1) * 6]).abs().max().item()

    # DINO's centre: the EMA of the teacher's mean output over the global batch.
    dino, _ = build("dino", num_prototypes=16)
    teacher_out = torch.randn(world * 4, 16, generator=g)
    dino._update_center(teacher_out[rank * 4:(rank + 1) * 4], 2)
    results["center"] = (dino.center - 0.1 * teacher_out.mean(0, keepdim=True)).abs().max().item()

    # Exemplar's bank: every rank writes its own images, every rank ends up with the same bank.
    exemplar, _ = build("exemplar", num_negatives=0)
    v = F.normalize(torch.randn(world * 3, 128, generator=g), dim=-1)
    index = torch.arange(world * 3)
    exemplar._update_bank(index[rank * 3:(rank + 1) * 3], v[rank * 3:(rank + 1) * 3])
    banks = [torch.empty_like(exemplar.bank.value) for _ in range(world)]
    dist.all_gather(banks, exemplar.bank.value)
    results["bank_agree"] = max((b - banks[0]).abs().max().item() for b in banks)
    results["bank_rows_written"] = int((banks[0][: world * 3] != build("exemplar")[0].bank.value[: world * 3])
                                       .any(1).sum())

    # The momentum teacher on FSDP2 shards: the EMA runs on each rank's DTensor pieces.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from hfssl.objectives.vision.momentum import MomentumTeacher

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    reference_student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    reference_student.load_state_dict(student.state_dict())
    teacher = MomentumTeacher({"net": student}, base_momentum=0.9, total_steps=5)
    expected = [p.detach().clone() for p in teacher["net"].parameters()]
    mesh = init_device_mesh("cpu", (world,))
    fully_shard(student, mesh=mesh)
    fully_shard(teacher["net"], mesh=mesh)
    results["sharded"] = all(isinstance(p, DTensor) for p in teacher["net"].parameters())
    with torch.no_grad():
        for p, q in zip(student.parameters(), reference_student.parameters()):
            p.add_(0.25)
            q.add_(0.25)
    teacher.update(0.9)
    expected = [0.9 * e + 0.1 * q.detach() for e, q in zip(expected, reference_student.parameters())]
    results["fsdp_ema"] = max((p.full_tensor() - e).abs().max().item()
                              for p, e in zip(teacher["net"].parameters(), expected))

    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as fh:
        json.dump(results, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
