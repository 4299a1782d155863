"""Vision objectives on a CUDA device: no host synchronisation in the step, bf16 + torch.compile agree
with eager. Skipped without a GPU (the ``gpu`` marker)."""

from __future__ import annotations

import pytest
import torch

from tests.objectives.vision.test_objectives import TASKS, build, loss_of, structured_images

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("task", TASKS)
def test_step_never_waits_for_the_device(task: str):
    """prepare_batch, target_counts, forward and backward run with CUDA sync debugging set to error."""
    device = torch.device("cuda")
    objective, model = build(task)
    objective, model = objective.to(device).train(), model.to(device).train()
    images = {"pixel_values": structured_images().to(device)}
    generator = torch.Generator(device=device).manual_seed(0)
    loss_of(objective, model, objective.prepare_batch(images, generator)).backward()  # warm-up: lazy moves
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = loss_of(objective, model, objective.prepare_batch(images, generator))
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("task", ["rotation", "contrastive", "mim"])
def test_bf16_compiled_objective_matches_eager(task: str):
    device = torch.device("cuda")
    torch._dynamo.reset()
    objective, model = build(task)
    objective, model = objective.to(device), model.to(device)
    batch = objective.prepare_batch({"pixel_values": structured_images().to(device)},
                                    torch.Generator(device=device).manual_seed(0))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = objective(model, batch)
        compiled = torch.compile(objective)(model, batch)
    for term, value in eager.loss_sums.items():
        torch.testing.assert_close(compiled.loss_sums[term], value, rtol=3e-2, atol=1e-2)
    torch._dynamo.reset()
