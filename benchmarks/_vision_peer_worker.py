"""One contender of benchmarks/vision_peer.py, in its own process (hfssl's in .venv, lightly's in .venv-peer).

    python benchmarks/_vision_peer_worker.py --side hfssl|lightly --method dino --train_dir D --output_dir O \
        --budget_cpu_s 60 [--seed 1] [--max_steps N]

Both sides train the same transformers ``ViTModel`` (tiny preset, 32 px, patch 4, seed-0 initialisation) on the
same image folder, batch 64, AdamW (lr 1e-3, weight decay 0.05, 10% warm-up then cosine), on one thread, until
``--budget_cpu_s`` CPU seconds of training steps are spent (data loading and augmentation included, start-up
and export not). The number of steps the schedule is laid over comes from timing the first steps. Each side
exports its encoder with ``save_pretrained`` (DINO: the teacher, as both DINO papers evaluate) and writes
``stats.json``: steps, training CPU seconds, images/s.

* hfssl: ``recipes/vit_pretext.py`` as a user runs it (views made batched inside the objective).
* lightly 1.6: its own transforms (``DINOTransform``, ``BYOLTransform``, ``MoCoV2Transform``, ``SwaVTransform``:
  per-image PIL/torchvision in the DataLoader), heads (``DINOProjectionHead``, ``BYOLProjectionHead`` /
  ``BYOLPredictionHead``, ``MoCoProjectionHead``, ``SwaVProjectionHead`` + ``SwaVPrototypes``), losses
  (``DINOLoss``, ``NegativeCosineSimilarity``, ``SwaVLoss``) and ``update_momentum``/``cosine_schedule``, wired as
  in lightly's examples. lightly ships no MoCo v3 loss: the paper's symmetric InfoNCE of queries against
  momentum keys is written here (a few lines) on lightly's heads and transforms. Head sizes, prototypes, crops,
  temperatures and momenta are set to hfssl's defaults, normalisation to the exported processor's (0.5, 0.5),
  so the two differ in implementation only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("dino", "byol", "moco_v3", "swav")
BATCH, IMAGE, PATCH, LOCAL = 64, 32, 4, 12
LR, WEIGHT_DECAY = 1e-3, 0.05
# hfssl's defaults for these methods, given to both sides.
HEAD_HIDDEN = 256             # default_head_width(64)
DINO_OUT, DINO_BOTTLENECK, DINO_MOMENTUM = 4096, 256, 0.996
BYOL_MOMENTUM, MOCO_MOMENTUM, MOCO_TEMPERATURE, PROJECTION = 0.99, 0.99, 0.2, 256
SWAV_PROJECTION, SWAV_PROTOTYPES, NUM_LOCAL = 128, 300, 6


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    global BATCH, IMAGE, PATCH, LOCAL, HEAD_HIDDEN   # the throughput mode resizes the shared setup
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("hfssl", "lightly"), required=True)
    p.add_argument("--method", choices=(*METHODS, "mae"), required=True,
                   help="mae: hfssl only (lightly's MAE wraps a torchvision/timm ViT, not this transformers one)")
    p.add_argument("--train_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--budget_cpu_s", type=float, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--calibration_steps", type=int, default=4)
    # Throughput mode (gpu_suite.sh vit_ssl): a fixed number of timed steps on a bigger model, wall-clock.
    p.add_argument("--steps", type=int, default=0, help="timed steps after --warmup_steps (0: the CPU budget mode)")
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--model_size", default="tiny")
    p.add_argument("--image_size", type=int, default=IMAGE)
    p.add_argument("--patch_size", type=int, default=PATCH)
    p.add_argument("--batch_size", type=int, default=BATCH)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--num_workers", type=int, default=0, help="lightly: DataLoader workers; hfssl: decoding threads")
    args = p.parse_args(argv)
    BATCH, IMAGE, PATCH = args.batch_size, args.image_size, args.patch_size
    LOCAL = max(2 * PATCH, round(IMAGE * 96 / 224 / PATCH) * PATCH)
    from hfssl.models.presets import VISION_PRESETS

    hidden = VISION_PRESETS[args.model_size]["hidden_size"]
    HEAD_HIDDEN = 2048 if hidden >= 384 else max(256, 4 * hidden)
    return args


def tiny_vit(model_size: str = "tiny"):
    """The shared backbone: a preset (tiny by default) at IMAGE px, seed-0 weights, no pooler."""
    import torch
    from transformers import ViTModel

    from hfssl.models.presets import build_vision_config

    torch.manual_seed(0)
    return ViTModel(build_vision_config(model_size, image_size=IMAGE, patch_size=PATCH), add_pooling_layer=False)


def write_stats(output_dir: Path, steps: int, cpu_s: float, **extra) -> None:
    stats = {"steps": steps, "train_cpu_s": round(cpu_s, 2), "images": steps * BATCH,
             "images_per_cpu_s": round(steps * BATCH / max(cpu_s, 1e-9), 2), **extra}
    (output_dir / "stats.json").write_text(json.dumps(stats))
    print(json.dumps(stats), flush=True)


# ------------------------------------------------------------------------------------------------------ hfssl
def run_hfssl(args: argparse.Namespace) -> None:
    """The recipe, in-process, with its training step timed (process CPU) and the run cut at the budget."""
    import importlib.util

    from hfssl.training import loop

    spec = importlib.util.spec_from_file_location("vit_pretext_recipe", REPO / "recipes" / "vit_pretext.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    spent = {"cpu": 0.0, "steps": 0, "times": []}
    budget = args.budget_cpu_s
    original = loop.TrainingRun._train_step
    cuda = _cuda()
    clock = time.perf_counter if args.steps else time.process_time

    def timed_step(run) -> None:
        if args.steps and run.step == args.warmup_steps:
            _sync(cuda)
            spent.update(cpu=0.0, steps=0, start=clock())
        start = clock()
        original(run)
        if args.steps:
            if run.step > args.warmup_steps:
                _sync(cuda)
                spent["cpu"], spent["steps"] = clock() - spent["start"], spent["steps"] + 1
            return
        spent["times"].append(clock() - start)
        spent["cpu"] += spent["times"][-1]
        spent["steps"] += 1
        if spent["cpu"] >= budget:      # the budget is spent: end the run here (export follows as usual)
            run.total_steps = run.step

    loop.TrainingRun._train_step = timed_step
    flags = {"dino": ["--teacher_momentum", str(DINO_MOMENTUM)]}.get(args.method, [])
    if args.bf16:
        flags += ["--mixed_precision", "bf16"]
    if args.num_workers:
        flags += ["--preprocessing_num_workers", str(args.num_workers)]
    common = ["--pretext_task", args.method, "--train_dir", args.train_dir, "--model_size", args.model_size,
              "--per_device_train_batch_size", str(BATCH), "--image_size",
              str(IMAGE), "--patch_size", str(PATCH), "--learning_rate",
              str(LR), "--weight_decay", str(WEIGHT_DECAY), "--lr_scheduler_type", "cosine", "--eval_steps", "0",
              "--checkpointing_steps", "0", "--knn_monitor_samples", "0", "--no_online_probe", "--report_to", "none",
              "--seed", str(args.seed), "--overwrite_output_dir", *flags]
    if args.steps:  # throughput mode: warm-up + timed steps, wall-clock
        recipe.main([*common, "--max_steps", str(args.warmup_steps + args.steps), "--warmup_steps", "1",
                     "--output_dir", args.output_dir])
        write_stats(Path(args.output_dir), spent["steps"], spent["cpu"], clock="wall", device="cuda" if cuda else "cpu")
        return
    # Calibration run (thrown away): CPU per step of this very configuration.
    # The first step pays one-time costs (optimizer state, first kernels): time the ones after it, as the peer does.
    recipe.main([*common, "--max_steps", str(args.calibration_steps + 1), "--warmup_steps", "1",
                 "--output_dir", str(Path(args.output_dir) / "calibration")])
    per_step = sum(spent["times"][1:]) / len(spent["times"][1:])
    steps = max(10, int(budget / per_step))
    spent.update(cpu=0.0, steps=0, times=[])
    recipe.main([*common, "--max_steps", str(steps), "--warmup_steps", str(max(1, steps // 10)),
                 "--output_dir", args.output_dir])
    write_stats(Path(args.output_dir), spent["steps"], spent["cpu"], planned_steps=steps)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------------ lightly
def import_lightly():
    """lightly imports torchvision; PyPI's torchvision 0.28.0 is a CUDA build whose C extension cannot load
    beside the CPU torch 2.13.0 wheel, and its import then fails registering fake kernels for two detection
    ops (``nms``, ``qnms``) that never loaded. lightly uses only torchvision's Python transforms, so those two
    registrations are skipped (in this process only)."""
    import torch.library

    original = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda fn: fn)
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = original
    import lightly

    return lightly


class _Cls:
    """``ViTModel`` -> its CLS feature; smaller (local) views interpolate the position embeddings."""

    def __init__(self, vit) -> None:
        self.vit = vit

    def __call__(self, x):
        return self.vit(pixel_values=x, interpolate_pos_encoding=x.shape[-1] != IMAGE).last_hidden_state[:, 0]


def run_lightly(args: argparse.Namespace) -> None:
    import copy

    import torch
    import torch.nn.functional as F
    from torch import nn

    import_lightly()
    from lightly.loss import DINOLoss, NegativeCosineSimilarity, SwaVLoss
    from lightly.models.modules import (
        BYOLPredictionHead,
        BYOLProjectionHead,
        DINOProjectionHead,
        MoCoProjectionHead,
        SwaVProjectionHead,
        SwaVPrototypes,
    )
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import BYOLTransform, DINOTransform, MoCoV2Transform, SwaVTransform
    from lightly.utils.scheduler import cosine_schedule
    from torchvision.datasets import ImageFolder
    from transformers import ViTImageProcessor

    cuda = _cuda()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    normalize = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    method = args.method
    vit = tiny_vit(args.model_size)
    backbone = _Cls(vit)
    dim = vit.config.hidden_size
    modules: dict[str, nn.Module] = {"backbone": vit}
    if method == "dino":
        transform = DINOTransform(global_crop_size=IMAGE, global_crop_scale=(0.4, 1.0), local_crop_size=LOCAL,
                                  local_crop_scale=(0.05, 0.4), n_local_views=NUM_LOCAL, normalize=normalize)
        modules["head"] = DINOProjectionHead(dim, HEAD_HIDDEN, DINO_BOTTLENECK, DINO_OUT, freeze_last_layer=0)
        criterion = DINOLoss(output_dim=DINO_OUT, warmup_teacher_temp=0.04, teacher_temp=0.07,
                             warmup_teacher_temp_epochs=1)
    elif method == "byol":
        transform = BYOLTransform(
            view_1_transform=_byol_view(IMAGE, normalize, 1), view_2_transform=_byol_view(IMAGE, normalize, 2))
        modules["head"] = BYOLProjectionHead(dim, HEAD_HIDDEN, PROJECTION)
        modules["predictor"] = BYOLPredictionHead(PROJECTION, HEAD_HIDDEN, PROJECTION)
        criterion = NegativeCosineSimilarity()
    elif method == "moco_v3":
        transform = MoCoV2Transform(input_size=IMAGE, min_scale=0.2, normalize=normalize)
        modules["head"] = MoCoProjectionHead(dim, HEAD_HIDDEN, PROJECTION, num_layers=3, batch_norm=True)
        modules["predictor"] = BYOLPredictionHead(PROJECTION, HEAD_HIDDEN, PROJECTION)
        criterion = None
    else:
        transform = SwaVTransform(crop_sizes=(IMAGE, LOCAL), crop_counts=(2, NUM_LOCAL),
                                  crop_min_scales=(0.4, 0.05), crop_max_scales=(1.0, 0.4), normalize=normalize)
        modules["head"] = SwaVProjectionHead(dim, HEAD_HIDDEN, SWAV_PROJECTION)
        modules["prototypes"] = SwaVPrototypes(SWAV_PROJECTION, n_prototypes=SWAV_PROTOTYPES,
                                               n_steps_frozen_prototypes=1)
        criterion = SwaVLoss()
    student = nn.ModuleDict(modules).to(device)
    teacher = None
    if method in ("dino", "byol", "moco_v3"):
        if method == "dino":  # as lightly's example: a second head (its weight norm cannot be deep-copied)
            teacher_head = DINOProjectionHead(dim, HEAD_HIDDEN, DINO_BOTTLENECK, DINO_OUT)
            teacher_head.load_state_dict(modules["head"].state_dict())
        else:
            teacher_head = copy.deepcopy(modules["head"])
        teacher = nn.ModuleDict({"backbone": copy.deepcopy(vit), "head": teacher_head}).to(device)
        deactivate_requires_grad(teacher)
    dataset = ImageFolder(args.train_dir, transform=transform)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True,
                                         num_workers=args.num_workers, generator=generator, pin_memory=cuda,
                                         persistent_workers=args.num_workers > 0)
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    base_momentum = {"dino": DINO_MOMENTUM, "byol": BYOL_MOMENTUM, "moco_v3": MOCO_MOMENTUM}.get(method)

    def batches():
        while True:
            yield from loader

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step(views, step: int, total: int) -> None:
        views = [v.to(device, non_blocking=True) for v in views]
        with autocast:
            _train_step(views, step, total)

    def _train_step(views, step: int, total: int) -> None:
        if teacher is not None:
            m = cosine_schedule(step, total, base_momentum, 1.0)
            update_momentum(student["backbone"], teacher["backbone"], m=m)
            update_momentum(student["head"], teacher["head"], m=m)
        if method == "dino":
            globals_ = views[:2]
            with torch.no_grad():
                teacher_out = [teacher["head"](_Cls(teacher["backbone"])(v)) for v in globals_]
            student_out = [student["head"](backbone(v)) for v in views]
            # lightly's DINOLoss warms the teacher temperature up per "epoch": one epoch here = 10% of the run.
            loss = criterion(teacher_out, student_out, epoch=min(1, step // max(1, total // 10)))
        elif method == "byol":
            x0, x1 = views
            p0 = student["predictor"](student["head"](backbone(x0)))
            p1 = student["predictor"](student["head"](backbone(x1)))
            with torch.no_grad():
                z0 = teacher["head"](_Cls(teacher["backbone"])(x0))
                z1 = teacher["head"](_Cls(teacher["backbone"])(x1))
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        elif method == "moco_v3":
            x0, x1 = views
            q0 = F.normalize(student["predictor"](student["head"](backbone(x0))), dim=-1)
            q1 = F.normalize(student["predictor"](student["head"](backbone(x1))), dim=-1)
            with torch.no_grad():
                k0 = F.normalize(teacher["head"](_Cls(teacher["backbone"])(x0)), dim=-1)
                k1 = F.normalize(teacher["head"](_Cls(teacher["backbone"])(x1)), dim=-1)
            labels = torch.arange(x0.shape[0], device=x0.device)
            loss = (F.cross_entropy(q0 @ k1.T / MOCO_TEMPERATURE, labels)
                    + F.cross_entropy(q1 @ k0.T / MOCO_TEMPERATURE, labels))
        else:
            student["prototypes"].normalize()
            outputs = [student["prototypes"](F.normalize(student["head"](backbone(v)), dim=1), step) for v in views]
            loss = criterion(outputs[:2], outputs[2:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def set_lr(step: int, total: int) -> None:
        warmup = max(1, total // 10)
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                                              max(1, total - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = LR * scale

    stream = batches()
    if args.steps:  # throughput mode: warm-up, then timed steps (wall-clock, synchronised)
        for step in range(args.warmup_steps):
            set_lr(step, args.warmup_steps + args.steps)
            train_step(next(stream)[0], step, args.warmup_steps + args.steps)
        _sync(cuda)
        start = time.perf_counter()
        for step in range(args.warmup_steps, args.warmup_steps + args.steps):
            set_lr(step, args.warmup_steps + args.steps)
            train_step(next(stream)[0], step, args.warmup_steps + args.steps)
        _sync(cuda)
        write_stats(Path(args.output_dir), args.steps, time.perf_counter() - start, clock="wall",
                    device=device.type)
        return
    # Calibration on a copy of the state: time a few steps, then start again from the same weights.
    def clone(state: dict) -> dict:  # (deepcopy fails on the weight-normalised DINO head after a forward)
        return {k: v.detach().clone() for k, v in state.items()}

    snapshot = (clone(student.state_dict()), clone(teacher.state_dict()) if teacher else None,
                copy.deepcopy(optimizer.state_dict()))
    for step in range(args.calibration_steps + 1):
        if step == 1:   # the first step pays one-time costs: time the ones after it, as on hfssl's side
            start = time.process_time()
        views, _ = next(stream)
        set_lr(step, 1000)
        train_step(views, step, 1000)
    per_step = (time.process_time() - start) / args.calibration_steps
    student.load_state_dict(snapshot[0])
    if teacher is not None:
        teacher.load_state_dict(snapshot[1])
    optimizer.load_state_dict(snapshot[2])
    total = max(10, int(args.budget_cpu_s / per_step))
    if method == "swav":  # hfssl freezes the prototypes for the first 5% of the run
        student["prototypes"].n_steps_frozen_prototypes = max(1, total // 20)
    spent, step = 0.0, 0
    while step < total and spent < args.budget_cpu_s:
        tick = time.process_time()
        views, _ = next(stream)
        set_lr(step, total)
        train_step(views, step, total)
        spent += time.process_time() - tick
        step += 1
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    exported = teacher["backbone"] if method == "dino" else vit
    exported.save_pretrained(out)
    ViTImageProcessor(size={"height": IMAGE, "width": IMAGE}).save_pretrained(out)
    write_stats(out, step, spent, planned_steps=total)


def _byol_view(size: int, normalize: dict, which: int):
    """BYOL's two view transforms at ``size`` (lightly's defaults otherwise: view 2 solarised 20%)."""
    from lightly.transforms import BYOLView1Transform, BYOLView2Transform

    view = BYOLView1Transform if which == 1 else BYOLView2Transform
    return view(input_size=size, min_scale=0.2, normalize=normalize)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.side == "lightly" and args.method == "mae":
        raise SystemExit("lightly's MAE is built on a torchvision/timm ViT, not the transformers ViTModel compared here")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (run_hfssl if args.side == "hfssl" else run_lightly)(args)


if __name__ == "__main__":
    main()
