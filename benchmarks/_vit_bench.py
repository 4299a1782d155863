"""ViT pretraining throughput: hfssl's loop vs the Hugging Face ``Trainer`` path of ``run_mim.py``.

Contenders (each in its own fresh process, same image folder, same ViT shape, same seed-0 init):

* ``hf_trainer``: what ``transformers/examples/pytorch/image-pretraining/run_mim.py`` does (SimMIM):
  ``ViTForMaskedImageModeling`` trained by ``transformers.Trainer`` with the model's own masked L1 loss.
  Its data pipeline works per sample in the DataLoader: decode, a random resized crop (scale 0.67-1,
  aspect 3/4-4/3), a horizontal flip with p=0.5, conversion to a float tensor, normalisation with the
  image processor's mean/std, and a per-sample random block mask (``mask_ratio`` 0.6 of
  ``mask_patch_size`` blocks, upsampled to the patch grid) passed as ``bool_masked_pos``. torchvision
  is not installed here (and breaks beside this torch), so those transforms are written with PIL and
  numpy below; they do the same work as ``run_mim.py``'s torchvision ``Compose``.
* ``hfssl_mim``: the same backbone through ``hfssl.training.train`` with the ``mim`` objective of
  ``hfssl.objectives.vision``: the DataLoader only decodes and resizes to uint8
  (``hfssl.data.images``); the same random resized crop (scale 0.67-1) and flip, the block masks and
  the normalisation run batched on the device inside the objective.
* ``hf_trainer_compile`` / ``hfssl_mim_compile``: the same with ``torch_compile=True`` (the Trainer's
  plain flag; hfssl with ``recipes/vit_pretext.py``'s compile defaults and ``--torch_compile_mode``).
* ``hfssl_rotation`` and ``hfssl_contrastive`` (a ``ViTModel`` with the objective's own head): no
  Trainer peer exists for them, so they are reported by their cost relative to ``hfssl_mim``
  (``1 - images/s(task) / images/s(hfssl_mim)``; contrastive encodes two views of every image).

Throughput is images (and input patches: images x patches per image) per second over ``--steps``
steady-state optimizer steps after ``--warmup_steps`` (compilation happens in the warm-up), timed at the
start of each step (with a CUDA sync on GPU). Every contender uses the Trainer's optimizer and schedule
defaults, and reports ``mean_loss`` over the timed steps (hf_trainer and hfssl_mim compute the same SimMIM
loss, so their losses should agree; rotation/contrastive losses are other quantities). The image folder
is scikit-learn's handwritten digits (the built-in set of ``hfssl.data.builtin_images``) written as PNGs
at the model's image size, identical for every contender. The last stdout line is one JSON object.

    .venv/bin/python benchmarks/train_throughput.py --recipe vit --steps 6            # CPU: tiny, 32 px
    python benchmarks/train_throughput.py --recipe vit --model_size base --image_size 224 --patch_size 16
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import StepClock, bench_main, device_name, record_losses, run_contenders  # noqa: E402

CONTENDERS = ("hf_trainer", "hf_trainer_compile", "hfssl_mim", "hfssl_mim_compile", "hfssl_rotation",
              "hfssl_contrastive")
RECIPE_COMPILE_FIELDS = ("torch_compile_mode", "torch_compile_backend", "use_regional_compilation")
# The Trainer's optimizer and schedule defaults, used by every contender so the losses are comparable.
SHARED_OPTIM = {"learning_rate": 1e-4, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
                "adam_epsilon": 1e-8, "lr_scheduler_type": "linear", "warmup_steps": 0, "max_grad_norm": 1.0}
MASK_RATIO = 0.6  # SimMIM's and run_mim.py's default
# Budgets: a small ViT on CPU; ViT-B/16 at 224 px, batch 128, bf16 on CUDA.
CPU_DEFAULTS = {"model_size": "tiny", "image_size": 32, "patch_size": 4, "batch_size": 32, "steps": 6}
CUDA_DEFAULTS = {"model_size": "base", "image_size": 224, "patch_size": 16, "batch_size": 128, "steps": 20}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_size", default=None, help="vit preset (default: base on CUDA, tiny on CPU)")
    p.add_argument("--image_size", type=int, default=None, help="default: 224 on CUDA, 32 on CPU")
    p.add_argument("--patch_size", type=int, default=None, help="default: 16 on CUDA, 4 on CPU")
    p.add_argument("--batch_size", type=int, default=None, help="default: 128 on CUDA, 32 on CPU")
    p.add_argument("--mask_patch_size", type=int, default=None,
                   help="side of the square mask blocks in pixels (default: 2 patches, as the mim objective)")
    p.add_argument("--torch_compile_mode", default=None, help="torch.compile mode for hfssl_mim_compile")
    p.add_argument("--warmup_steps", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 6 on CPU)")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--dataloader_num_workers", type=int, default=0, help="Trainer: DataLoader worker processes; hfssl: decoding threads")
    p.add_argument("--image_dir", default=None, help=argparse.SUPPRESS)  # set by the parent for its workers
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    defaults = CUDA_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.image_size % args.patch_size:
        raise SystemExit(f"--image_size {args.image_size} must be a multiple of --patch_size {args.patch_size}")
    grid = args.image_size // args.patch_size
    args.mask_patch_size = args.mask_patch_size or args.patch_size * (2 if grid % 2 == 0 else 1)
    if args.image_size % args.mask_patch_size or args.mask_patch_size % args.patch_size:
        raise SystemExit(f"--mask_patch_size {args.mask_patch_size} must divide --image_size {args.image_size} "
                         f"and be a multiple of --patch_size {args.patch_size}")
    return args


def total_steps(args: argparse.Namespace) -> int:
    return args.warmup_steps + args.steps + 1


def num_patches(args: argparse.Namespace) -> int:
    return (args.image_size // args.patch_size) ** 2


# ----------------------------------------------------------------------------------------------- data


def write_image_folder(args: argparse.Namespace, root: Path) -> Path:
    """The built-in digits (``hfssl.data.builtin_images``) as RGB PNGs at the model's size, cycled to one
    file per sample the run reads, so no contender starts a second epoch. Where scikit-learn is missing
    (the lent GPU image) seeded random colour fields stand in: throughput does not depend on content."""
    import numpy as np
    from PIL import Image

    try:
        from hfssl.data.builtin_images import digit_images

        images, _ = digit_images()
    except ImportError:
        coarse = np.random.default_rng(0).integers(0, 256, (256, 8, 8, 3), dtype=np.uint8)
        images = coarse.repeat(4, axis=1).repeat(4, axis=2)
    folder = root / "images"
    folder.mkdir(parents=True)
    for index in range(total_steps(args) * args.batch_size):
        image = Image.fromarray(images[index % len(images)], "RGB")
        image.resize((args.image_size, args.image_size), Image.BILINEAR).save(folder / f"{index:06d}.png")
    return folder


# ----------------------------------------------------------------------------------- the Trainer peer


class SimMIMTransform:
    """run_mim.py's per-sample pipeline, in PIL + numpy: random resized crop -> flip -> float tensor
    -> normalise, then a random block mask over the patch grid.

    Randomness comes from torch's global generator, as torchvision's transforms do, so the Trainer's
    seed and its DataLoader worker seeding govern it.
    """

    def __init__(self, image_size: int, patch_size: int, mask_patch_size: int, mask_ratio: float,
                 mean: list[float], std: list[float]):
        import numpy as np

        self.size = image_size
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.blocks_per_side = image_size // mask_patch_size
        self.upsample = mask_patch_size // patch_size
        self.num_masked = math.ceil(self.blocks_per_side ** 2 * mask_ratio)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A box covering 67-100% of the area at an aspect ratio in [3/4, 4/3] (10 tries, then the
        largest centred box within those ratios)."""
        import torch

        area = width * height
        for _ in range(10):
            target = area * torch.empty(1).uniform_(0.67, 1.0).item()
            ratio = math.exp(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3)).item())
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left = int(torch.randint(0, width - w + 1, (1,)))
                top = int(torch.randint(0, height - h + 1, (1,)))
                return left, top, left + w, top + h
        aspect = width / height
        w, h = (width, height) if 3 / 4 <= aspect <= 4 / 3 else (
            (round(height * 4 / 3), height) if aspect > 4 / 3 else (width, round(width * 4 / 3)))
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def image(self, image: Any) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        image = image.convert("RGB")
        image = image.resize((self.size, self.size), Image.BILINEAR, box=self.crop_box(*image.size))
        if torch.rand(1).item() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - self.mean) / self.std)

    def mask(self) -> Any:
        """A (num_patches,) bool mask: ``num_masked`` random blocks, each covering upsample^2 patches."""
        import torch

        blocks = torch.zeros(self.blocks_per_side ** 2, dtype=torch.bool)
        blocks[torch.randperm(blocks.numel())[:self.num_masked]] = True
        grid = blocks.view(self.blocks_per_side, self.blocks_per_side)
        return grid.repeat_interleave(self.upsample, 0).repeat_interleave(self.upsample, 1).flatten()

    def __call__(self, examples: dict[str, list]) -> dict[str, list]:
        # datasets' with_transform hands over a batch of rows as columns (one row per DataLoader fetch).
        pixel_values = [self.image(image) for image in examples["image"]]
        return {"pixel_values": pixel_values, "mask": [self.mask() for _ in pixel_values]}


def collate_simmim(examples: list[dict]) -> dict[str, Any]:
    import torch

    return {"pixel_values": torch.stack([ex["pixel_values"] for ex in examples]),
            "bool_masked_pos": torch.stack([ex["mask"] for ex in examples])}


def vit_config(args: argparse.Namespace):
    from hfssl.models.presets import build_vision_config

    return build_vision_config(args.model_size, image_size=args.image_size, patch_size=args.patch_size)


def processor_statistics(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """The mean/std of the ``ViTImageProcessor`` both sides export (0.5/0.5)."""
    from transformers import ViTImageProcessor

    from hfssl.models.vision import image_statistics

    return image_statistics(ViTImageProcessor(size={"height": args.image_size, "width": args.image_size}))


def mean_loss(losses: list[Any], warmup: int, steps: int) -> dict[str, float]:
    """Mean training loss over the timed steps (read back once, after the run: no sync per step)."""
    timed = [float(x) for x in losses[warmup:warmup + steps]]
    return {"mean_loss": sum(timed) / len(timed), "first_loss": float(losses[0])}


def throughput(clock: StepClock, args: argparse.Namespace) -> dict[str, float]:
    """The clock counted images; patches/s = images/s x patches per image (the class token not counted)."""
    timed = clock.throughput(args.warmup_steps, args.steps)
    images = timed["tokens_per_second"]
    return {"images_per_second": images, "patches_per_second": images * num_patches(args),
            "seconds_per_step": timed["seconds_per_step"]}


def run_hf_trainer(args: argparse.Namespace, compile_: bool, out_dir: str) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import Trainer, TrainerCallback, ViTForMaskedImageModeling
    from transformers import TrainingArguments as HFTrainingArguments

    clock = StepClock()

    class Timer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            clock.tick(args.batch_size)

    cuda = torch.cuda.is_available()
    # remove_unused_columns=False: the transform makes the columns the model reads (run_mim.py's setting).
    targs = HFTrainingArguments(output_dir=out_dir, max_steps=total_steps(args), per_device_train_batch_size=
                                args.batch_size, report_to="none", save_strategy="no", logging_steps=10**6,
                                torch_compile=compile_, bf16=cuda, use_cpu=not cuda, disable_tqdm=True, seed=0,
                                remove_unused_columns=False, dataloader_num_workers=args.dataloader_num_workers,
                                **SHARED_OPTIM)
    data = datasets.load_dataset("imagefolder", data_dir=args.image_dir, split="train",
                                 cache_dir=str(Path(out_dir) / "hf_datasets_cache"))
    mean, std = processor_statistics(args)
    data = data.with_transform(SimMIMTransform(args.image_size, args.patch_size, args.mask_patch_size, MASK_RATIO,
                                               mean, std))
    torch.manual_seed(0)
    net = ViTForMaskedImageModeling(vit_config(args))
    losses: list[Any] = []

    class RecordingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            losses.append(loss.detach())  # the model's mean masked-pixel L1, kept on the device
            return loss

    RecordingTrainer(model=net, args=targs, train_dataset=data, data_collator=collate_simmim,
                     callbacks=[Timer()]).train()
    return {**throughput(clock, args), **mean_loss(losses, args.warmup_steps, args.steps)}


# -------------------------------------------------------------------------------------------- hfssl


def recipe_compile_defaults() -> dict[str, Any]:
    """The compile settings ``recipes/vit_pretext.py`` uses when the user gives none (fields that exist).

    If the recipe cannot be imported, hfssl's ``TrainingArguments`` defaults are used (the recipe sets no
    compile field of its own today) and the result says so under ``compile_defaults_from``.
    """
    import dataclasses
    import importlib.util

    from hfssl.config import TrainingArguments

    source: type = TrainingArguments
    spec = importlib.util.spec_from_file_location("vit_pretext_recipe", REPO / "recipes" / "vit_pretext.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve field types through sys.modules
    try:
        spec.loader.exec_module(module)
        source, origin = module.VitTrainingArguments, "recipes/vit_pretext.py"
    except ImportError as exc:
        origin = f"TrainingArguments (recipe import failed: {exc})"
    defaults = {f.name: f.default for f in dataclasses.fields(source)
                if f.name in RECIPE_COMPILE_FIELDS and f.default is not dataclasses.MISSING}
    return {**defaults, "compile_defaults_from": origin}


class ImageTimedLoader:
    """Ticks the clock with the images of each batch as the loop fetches it (no accumulation: one
    batch per optimizer step)."""

    def __init__(self, loader: Any, clock: StepClock):
        self.loader, self.clock = loader, clock

    def __iter__(self):
        for batch in self.loader:
            self.clock.tick(batch["pixel_values"].shape[0])
            yield batch


def run_hfssl(args: argparse.Namespace, task: str, compile_: bool, out_dir: str) -> dict[str, Any]:
    import torch

    from hfssl.config import TrainingArguments, VisionModelArguments
    from hfssl.models.vision import build_vision_model
    from hfssl.objectives.vision import PRETEXT_TASKS, build_objective
    from hfssl.training import make_accelerator, train

    compile_kwargs: dict[str, Any] = {}
    if compile_:
        compile_kwargs = {"torch_compile": True, **recipe_compile_defaults()}
        compile_origin = compile_kwargs.pop("compile_defaults_from")
        if args.torch_compile_mode:
            compile_kwargs["torch_compile_mode"] = args.torch_compile_mode
    total = total_steps(args)
    targs = TrainingArguments(output_dir=out_dir, max_steps=total, per_device_train_batch_size=args.batch_size,
                              logging_steps=total, checkpointing_steps=0, seed=0,
                              dataloader_num_workers=args.dataloader_num_workers,
                              mixed_precision="bf16" if torch.cuda.is_available() else "no",
                              **SHARED_OPTIM, **compile_kwargs)
    accelerator = make_accelerator(targs)
    torch.manual_seed(0)
    model = build_vision_model(VisionModelArguments(model_size=args.model_size, image_size=args.image_size,
                                                    patch_size=args.patch_size), PRETEXT_TASKS[task].model_class)
    mean, std = processor_statistics(args)
    options = {"mask_ratio": MASK_RATIO, "mask_patch_size": args.mask_patch_size} if task == "mim" else {}
    objective = build_objective(task, model.config, mean, std, **options)
    clock = StepClock()
    losses = record_losses(accelerator)
    loader = image_loader(args, accelerator)
    train(objective=objective, model=model, train_loader=ImageTimedLoader(loader, clock), args=targs,
          accelerator=accelerator)
    result = {**throughput(clock, args), **mean_loss(losses, args.warmup_steps, args.steps)}
    if compile_:
        result["compile"] = {**{k: v for k, v in compile_kwargs.items() if k != "torch_compile"},
                             "defaults_from": compile_origin}
    return result


def image_loader(args: argparse.Namespace, accelerator: Any) -> Any:
    """The recipe's data path: the folder read by ``hfssl.data.images`` into uint8 batches."""
    from hfssl.data.images import ImageExamples, collate_images, load_image_dataset
    from hfssl.training.recipe_utils import make_loader

    # As recipes/vit_pretext.py (build_image_loaders): N decoding threads, a batch thread keeping 2 ready.
    workers = args.dataloader_num_workers
    examples = ImageExamples(load_image_dataset(train_dir=args.image_dir), image_size=args.image_size,
                             num_workers=workers)
    return make_loader(examples, batch_size=args.batch_size, collate_fn=collate_images, accelerator=accelerator,
                       seed=0, num_workers=min(2, workers))


# --------------------------------------------------------------------------------------------- driver


def worker(args: argparse.Namespace) -> dict[str, Any]:
    name = args.worker
    compile_ = name.endswith("_compile")
    with tempfile.TemporaryDirectory() as out_dir:
        if name.startswith("hfssl_"):
            return run_hfssl(args, name.removeprefix("hfssl_").removesuffix("_compile"), compile_, out_dir)
        return run_hf_trainer(args, compile_, out_dir)


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """images/s of the hfssl contenders over the Trainer's (eager and compiled), and of each contender
    over ``hf_trainer``."""
    def speed(name: str) -> float | None:
        return results.get(name, {}).get("images_per_second")

    out: dict[str, float] = {}
    for baseline in ("hf_trainer", "hf_trainer_compile"):
        for name in results:
            if name != baseline and speed(name) and speed(baseline) and (
                    baseline == "hf_trainer" or name.startswith("hfssl")):
                out[f"{name}/{baseline}"] = round(speed(name) / speed(baseline), 3)
    return out


def task_costs(results: dict[str, Any]) -> dict[str, float]:
    """1 - images/s(task) / images/s(hfssl_mim): what each other pretext task costs per image."""
    mim = results.get("hfssl_mim", {}).get("images_per_second")
    return {name: round(1 - res["images_per_second"] / mim, 3) for name, res in results.items()
            if mim and name in ("hfssl_rotation", "hfssl_contrastive") and "images_per_second" in res}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    names = [c for c in args.contenders.split(",") if c]
    with tempfile.TemporaryDirectory() as root:
        image_dir = write_image_folder(args, Path(root))
        worker_args = ["--model_size", args.model_size, "--image_size", str(args.image_size), "--patch_size",
                       str(args.patch_size), "--batch_size", str(args.batch_size), "--mask_patch_size",
                       str(args.mask_patch_size), "--warmup_steps", str(args.warmup_steps), "--steps",
                       str(args.steps), "--dataloader_num_workers", str(args.dataloader_num_workers),
                       "--image_dir", str(image_dir)]
        if args.torch_compile_mode:
            worker_args += ["--torch_compile_mode", args.torch_compile_mode]
        results = run_contenders(__file__, names, worker_args, CONTENDERS)
    return {"benchmark": "vit", "device": device_name(), "torch_threads": torch.get_num_threads(),
            "model_size": args.model_size, "image_size": args.image_size, "patch_size": args.patch_size,
            "patches_per_image": num_patches(args), "batch_size": args.batch_size,
            "mask_ratio": MASK_RATIO, "mask_patch_size": args.mask_patch_size, "steps": args.steps,
            "warmup_steps": args.warmup_steps, "precision": "bf16" if torch.cuda.is_available() else "fp32",
            "dataloader_num_workers": args.dataloader_num_workers, "data": "built-in digits, upscaled PNGs",
            "torch_compile_mode": args.torch_compile_mode,
            "mean_loss": {name: round(res["mean_loss"], 4) for name, res in results.items() if "mean_loss" in res},
            "results": results, "ratios": ratios(results), "cost_vs_hfssl_mim": task_costs(results)}


def main(argv: list[str] | None = None) -> None:
    bench_main(argv, parse, worker, run)


if __name__ == "__main__":
    main()
