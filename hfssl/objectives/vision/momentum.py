"""One momentum teacher for DINO, MoCo v3 and BYOL: EMA copies of student modules.

After every optimizer step ``s`` (0-based) each teacher parameter becomes ``m_s * teacher + (1 - m_s) *
student`` with the cosine schedule of BYOL/DINO, ``m_s = 1 - (1 - m_0) * (cos(pi * s / S) + 1) / 2``, rising
from ``base_momentum`` to 1 over the ``S`` optimizer steps of the run. Buffers (BatchNorm statistics) are copied.

When. The objective cannot see the optimizer, but the loop calls ``prepare_batch`` for every micro-batch of a
step before any forward, right after the previous step's update. :meth:`MomentumTeacher.step` is called there:
it counts training micro-batches, and on the first one of each step applies the previous step's EMA update.
Updating then, outside the forward, also means the update runs on the parameters as the optimizer holds them:
under FSDP2 those are DTensor shards, and ``torch._foreach_mul_/_foreach_add_`` go parameter by parameter on
the local shards (teacher and student are sharded alike); under DDP every rank does the same update.

Exact resume. The micro-batch count is a buffer, so it is in every checkpoint with the teacher's weights; the
loop's checkpoint therefore holds the pending update of its last step, which the resumed run applies first,
exactly as the uninterrupted run does. A Python mirror of the count avoids a device read per step (it is
refreshed once after ``load_state_dict``). The update after the very last step has no next micro-batch: the
export calls :meth:`flush` to apply it, so the exported teacher is the one after the final step.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
from torch import nn

from hfssl.objectives.vision.base import StepCounter

__all__ = ["MomentumTeacher", "cosine_momentum"]


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """The teacher momentum after optimizer step ``step`` of ``total_steps`` (0-based), cosine from ``base``
    to ``final`` (BYOL, DINO)."""
    if total_steps <= 1:
        return base
    progress = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class MomentumTeacher(nn.Module):
    """EMA teachers of ``students`` (name -> module), updated once per optimizer step.

    ``self[name]`` is the teacher of ``students[name]``: a deep copy taken now, with ``requires_grad`` off, a
    submodule of this one (so of the objective: DDP/FSDP and checkpoints see it). The students themselves are
    referenced, not registered: they belong to the backbone or the objective already.
    """

    #: Read by the loop's engine check (``hfssl.training.engines.check_objective``).
    fsdp1_unsupported: ClassVar[str] = ("the momentum teacher (dino, moco_v3, byol) is updated from its student's "
                                        "own parameters, shard by shard")

    def __init__(self, students: dict[str, nn.Module], *, base_momentum: float, total_steps: int,
                 accumulation_steps: int = 1, final_momentum: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= base_momentum <= final_momentum <= 1.0:
            raise ValueError(f"need 0 <= base_momentum <= final_momentum <= 1, got {base_momentum}, {final_momentum}")
        if accumulation_steps < 1 or total_steps < 1:
            raise ValueError("accumulation_steps and total_steps must be >= 1")
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.total_steps, self.accumulation_steps = total_steps, accumulation_steps
        self.teachers = nn.ModuleDict({name: copy.deepcopy(module) for name, module in students.items()})
        for param in self.teachers.parameters():
            param.requires_grad_(False)
        object.__setattr__(self, "_students", dict(students))  # not submodules: no second registration
        self.counter = StepCounter(accumulation_steps)
        self._flushed_at = -1

    def __getitem__(self, name: str) -> nn.Module:
        return self.teachers[name]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._flushed_at = -1

    @property
    def steps_done(self) -> int:
        """Optimizer steps completed before the current one."""
        return self.counter.steps_done

    def momentum(self, step: int) -> float:
        return cosine_momentum(step, self.total_steps, self.base_momentum, self.final_momentum)

    def step(self) -> None:
        """Call once per training micro-batch, before its forward (in ``prepare_batch``)."""
        seen = self.counter.seen
        if self.counter.tick() and seen != self._flushed_at:
            self.update(self.momentum(seen // self.accumulation_steps - 1))

    def flush(self) -> None:
        """Apply the update of the last completed step now (before an export), once."""
        seen = self.counter.seen
        if seen > 0 and seen % self.accumulation_steps == 0 and seen != self._flushed_at:
            self.update(self.momentum(seen // self.accumulation_steps - 1))
            self._flushed_at = seen

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter; buffers copied."""
        for name, teacher in self.teachers.items():
            student = self._students[name]
            t_params, s_params = list(teacher.parameters()), list(student.parameters())
            if len(t_params) != len(s_params) or any(t.shape != s.shape for t, s in zip(t_params, s_params)):
                raise RuntimeError(f"the {name!r} teacher and its student no longer have the same parameters "
                                   "(sharded differently?); the momentum teacher needs them alike")
            s_params = [s.detach() for s in s_params]
            torch._foreach_mul_(t_params, momentum)
            torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
            for t_buffer, s_buffer in zip(teacher.buffers(), student.buffers()):
                t_buffer.copy_(s_buffer)
