"""The image SSL evidence table: every pretext task at an equal compute budget on the cluttered digits, then
linear probe, kNN, fine-tuning and LP-FT of each export beside raw pixels and random init, over seeds.

    nice -n 10 .venv/bin/python benchmarks/vision_ssl_table.py --workdir /tmp/vtab --budget_cpu_s 150 \
        --seeds 1,2,3 [--baseline_seeds 1,2,3] [--supervised] [--finetune ''] [--tasks dino,moco_v3,...] \
        [--split writers] [--task_flags 'dino=--num_local_crops 4']

Equal budget. The machine this was written on has 2 cores shared with other jobs, so wall-clock is noise.
Every process runs on one thread (``OMP_NUM_THREADS=1``) and the budget is single-thread CPU seconds: each
task's CPU cost per optimizer step is measured first (in-process, on a batch of the run's size), its
``--max_steps`` set to ``budget / cost``, and the CPU seconds the pretraining process really used are
reported beside it. On an idle core that is the same as equal wall-clock.

Protocol. ``recipes/vit_pretext.py`` (tiny ViT, 32 px, patch 4, batch 64, lr 1e-3, 10% warm-up, cosine),
no monitors during the timed run (``--eval_steps 0``, no online probe) so the budget goes to training; then
``recipes/image_probe.py``'s functions: linear probe (L-BFGS logistic regression on standardised CLS features)
and weighted kNN (k=20), fine-tuning and LP-FT (``--ft_epochs`` epochs, random crops without flips: a
mirrored digit is another digit). Baselines from the same functions: raw pixels, random init (one per seed).
``--baseline_seeds`` gives the random-init baselines more seeds than the pretraining runs (they are cheap);
``--supervised`` adds the supervised-from-scratch reference (a random init fine-tuned, ``--ft_epochs``), the
ceiling a representation is measured against. Per run, the table also shows the spread and effective rank
(RankMe) of the export's CLS features on the validation images (collapse: spread near 0, RankMe near 1; the
random init is the reference) and prints the task's own metrics at the last log (``sparsity/zero_fraction``,
``vae/kl``...). Results are cached per run in ``--workdir``: rerunning the command resumes the table where it
stopped, and several invocations with disjoint ``--tasks`` can share one workdir (one per core).
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NEW_TASKS = ("dino", "moco_v3", "byol", "swav", "deepcluster", "exemplar", "mae")
CLASSIC_TASKS = ("rotation", "jigsaw", "relative_position", "colorization", "inpainting", "contrastive", "mim")
BATCH, IMAGE, PATCH = 64, 32, 4


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--tasks", default=",".join(NEW_TASKS + CLASSIC_TASKS))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--baseline_seeds", default=None,
                   help="seeds of the random-init baselines and the supervised reference (default: --seeds); they "
                        "cost little beside pretraining, so more of them narrow the row every task is compared to")
    p.add_argument("--budget_cpu_s", type=float, default=150.0, help="single-thread CPU seconds of pretraining")
    p.add_argument("--builtin_images", default="cluttered_digits")
    p.add_argument("--split", default="writers")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--ft_epochs", type=float, default=10.0)
    p.add_argument("--finetune", default="finetune,lp_ft", help="which of finetune,lp_ft to run ('' for none)")
    p.add_argument("--cached_only", action="store_true",
                   help="train nothing new: the table of the runs already in --workdir (a partial table says how "
                        "many seeds each row has)")
    p.add_argument("--supervised", action="store_true",
                   help="also fine-tune a random init per seed (supervised from scratch, --ft_epochs): the ceiling")
    p.add_argument("--task_flags", action="append", default=[],
                   help="extra recipe flags for one task, 'task=--flag value ...' (repeatable)")
    return p.parse_args(argv)


def task_flags(args: argparse.Namespace) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    for item in args.task_flags:
        task, _, rest = item.partition("=")
        flags[task.strip()] = rest.split()
    return flags


# ------------------------------------------------------------------------------------------------ calibration
def cpu_seconds_per_step(task: str, options: dict[str, Any], repeats: int = 6) -> float:
    """Single-thread CPU seconds of one optimizer step of ``task`` (prepare, forward, backward, AdamW)."""
    import torch
    from transformers import ViTForMaskedImageModeling, ViTMAEForPreTraining, ViTModel

    from hfssl.models.presets import build_vision_config
    from hfssl.models.vision import mae_config_from_vit
    from hfssl.objectives.vision import PRETEXT_TASKS, build_objective

    torch.set_num_threads(1)
    config = build_vision_config("tiny", image_size=IMAGE, patch_size=PATCH)
    model_class = PRETEXT_TASKS[task].model_class
    torch.manual_seed(0)
    if model_class is ViTMAEForPreTraining:
        model = model_class(mae_config_from_vit(config))
    elif model_class is ViTForMaskedImageModeling:
        model = model_class(config)
    else:
        model = ViTModel(config, add_pooling_layer=False)
    objective = build_objective(task, model.config, backbone=model, max_steps=1000, num_images=1500, **options)
    params = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(BATCH, 3, IMAGE, IMAGE, generator=generator) * 255).to(torch.uint8)

    def step(i: int) -> None:
        batch = objective.prepare_batch({"pixel_values": images, "image_index": torch.arange(BATCH) + BATCH * (i % 20),
                                         "labels": torch.zeros(BATCH, dtype=torch.long)}, generator)
        counts = objective.target_counts(batch)
        out = objective(model, batch)
        loss = sum(out.loss_sums[t] / counts[t] for t in counts)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(2):
        step(i)
    start = time.process_time()
    for i in range(repeats):
        step(i)
    return (time.process_time() - start) / repeats


def recipe_options(task: str, flags: list[str]) -> dict[str, Any]:
    """The objective options the recipe would pass for ``flags`` (to calibrate the same configuration)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vit_pretext_recipe", REPO / "recipes" / "vit_pretext.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from hfssl.cli import parse_args

    (task_args,) = parse_args([module.PretextArguments], ["--pretext_task", task, *flags])
    return task_args.objective_options()


# ------------------------------------------------------------------------------------------------ runs
def pretrain(args: argparse.Namespace, task: str, seed: int, steps: int, flags: list[str], out: Path) -> dict:
    done = out / "pretrain.json"
    if done.exists():
        return json.loads(done.read_text())
    command = [sys.executable, str(REPO / "recipes" / "vit_pretext.py"), "--pretext_task", task, "--seed", str(seed),
               "--builtin_images", args.builtin_images, "--builtin_split", args.split, "--model_size", "tiny",
               "--image_size", str(IMAGE), "--patch_size", str(PATCH), "--per_device_train_batch_size", str(BATCH),
               "--learning_rate", str(args.learning_rate), "--max_steps", str(steps),
               "--warmup_steps", str(max(1, steps // 10)), "--lr_scheduler_type", "cosine", "--logging_steps",
               str(max(1, steps // 20)), "--eval_steps", "0", "--checkpointing_steps", "0", "--knn_monitor_samples",
               "0", "--no_online_probe", "--report_to", "none", "--output_dir", str(out / "model"),
               "--overwrite_output_dir", *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{task} seed {seed} failed:\n{proc.stderr[-3000:]}")
    history = [json.loads(line) for line in (out / "model" / "metrics.jsonl").read_text().splitlines() if line]
    losses = [r["loss"] for r in history if "loss" in r]
    # The task's own metrics at the last log (e.g. sparsity/zero_fraction, vae/kl), and a coarse loss curve.
    last = next((r for r in reversed(history) if "loss" in r), {})
    task_metrics = {k: v for k, v in last.items() if "/" in k and not k.startswith(("lr", "eval"))}
    record = {"task": task, "seed": seed, "steps": steps, "wall_s": round(time.time() - started, 1),
              "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
              "train_seconds": json.loads((out / "model" / "all_results.json").read_text())["train_runtime"],
              "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
              "loss_curve": [round(v, 4) for v in losses[:: max(1, len(losses) // 5)]], "task_metrics": task_metrics}
    done.write_text(json.dumps(record))
    return record


def probe(args: argparse.Namespace, model_dir: Path, out: Path, baselines: str = "none", seeds: str | None = None,
          init: str = "pretrained") -> dict:
    done = out / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    from hfssl.evaluation.image_probe import ImageProbeArguments, run

    train_dir, validation_dir = data_dirs(args)
    return run(ImageProbeArguments(model_name_or_path=str(model_dir), train_dir=train_dir,
                                   validation_dir=validation_dir, baselines=baselines, seeds=seeds, init=init,
                                   output_dir=str(out)))


def diagnose(args: argparse.Namespace, model_dir: Path, out: Path, init: str = "pretrained", seed: int = 42) -> dict:
    """Spread and effective rank (RankMe) of the export's CLS features on the validation images: collapse shows."""
    done = out / "diagnostics.json"
    if done.exists():
        return json.loads(done.read_text())
    import torch

    from hfssl.evaluation.image_probe import (
        ImageProbeArguments,
        extract_image_features,
        load_backbone,
        load_image_processor,
        load_image_splits,
    )
    from hfssl.evaluation.knn_monitor import collapse_stats

    train_dir, validation_dir = data_dirs(args)
    splits = load_image_splits(ImageProbeArguments(model_name_or_path=str(model_dir), train_dir=train_dir,
                                                   validation_dir=validation_dir))
    model, _ = load_backbone(str(model_dir), init, seed)
    features = extract_image_features(model, load_image_processor(str(model_dir)), splits.validation,
                                      splits.image_column, "cls", 256, torch.device("cpu"), 0, desc="diagnostics")
    stats = collapse_stats(features)
    record = {"feature_spread": round(stats["feature_spread"], 4), "rankme": round(stats["rankme"], 2)}
    out.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(record))
    return record


def finetune(args: argparse.Namespace, model_dir: Path, out: Path, mode: str, seed: int, init: str = "pretrained"
             ) -> dict:
    done = out / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    from hfssl.evaluation.image_finetune import ImageFinetuneArguments, run_finetune
    from hfssl.evaluation.image_probe import ImageProbeArguments

    train_dir, validation_dir = data_dirs(args)
    probe_args = ImageProbeArguments(model_name_or_path=str(model_dir), train_dir=train_dir,
                                     validation_dir=validation_dir, mode=mode, seed=seed, init=init,
                                     output_dir=str(out))
    ft_args = ImageFinetuneArguments(num_train_epochs=args.ft_epochs, augmentation="crop", learning_rate=1e-3)
    return run_finetune(probe_args, ft_args)


def data_dirs(args: argparse.Namespace) -> tuple[str, str]:
    from hfssl.data.builtin_images import builtin_image_dir

    root = builtin_image_dir(name=args.builtin_images, split=args.split)
    return os.path.join(root, "train"), os.path.join(root, "validation")


# ------------------------------------------------------------------------------------------------ table
def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",")]
    baseline_seeds = [int(s) for s in (args.baseline_seeds or args.seeds).split(",")]
    modes = [m for m in args.finetune.split(",") if m]
    extra = task_flags(args)
    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, "
          f"budget {args.budget_cpu_s:g} single-thread CPU s per run, {args.builtin_images}/{args.split}", flush=True)
    calibration_file = work / "calibration.json"
    calibration = json.loads(calibration_file.read_text()) if calibration_file.exists() else {}
    for task in tasks:
        key = f"{task} {' '.join(extra.get(task, []))}".strip()
        if key not in calibration:
            calibration[key] = cpu_seconds_per_step(task, recipe_options(task, extra.get(task, [])))
            # Merge with what another invocation sharing the workdir may have written meanwhile.
            on_disk = json.loads(calibration_file.read_text()) if calibration_file.exists() else {}
            calibration = {**on_disk, **calibration}
            calibration_file.write_text(json.dumps(calibration, indent=1))
        print(f"{task}: {calibration[key]:.3f} CPU s/step -> {int(args.budget_cpu_s / calibration[key])} steps",
              flush=True)
    rows: dict[str, dict[str, list[float]]] = {}
    runs: list[dict] = []
    for seed in seeds:
        for task in tasks:
            key = f"{task} {' '.join(extra.get(task, []))}".strip()
            steps = max(10, int(args.budget_cpu_s / calibration[key]))
            out = work / f"{task}-s{seed}"
            if args.cached_only and not (out / "pretrain.json").exists():
                continue
            record = pretrain(args, task, seed, steps, extra.get(task, []), out)
            model_dir = out / "model"
            result = probe(args, model_dir, out / "probe")
            record.update(diagnose(args, model_dir, out / "probe"))
            row = rows.setdefault(task, {})
            row.setdefault("lp", []).append(result["linear_probe"]["accuracy"])
            row.setdefault("knn", []).append(result["knn"]["accuracy"])
            for mode in modes:
                ft = finetune(args, model_dir, out / mode, mode, seed)
                row.setdefault(mode, []).append(ft["accuracy"]["mean"])
            record.update({"linear_probe": result["linear_probe"]["accuracy"], "knn": result["knn"]["accuracy"]})
            runs.append(record)
            print(json.dumps(record), flush=True)
    # Baselines with the same functions: raw pixels and random init (one per seed), on any export's architecture.
    if not runs:
        raise SystemExit(f"no run in {work} (--cached_only trains nothing)")
    reference = work / f"{runs[0]['task']}-s{runs[0]['seed']}" / "model"  # any export: the architecture
    base = probe(args, reference, work / "baselines", baselines="pixels,random",
                 seeds=",".join(map(str, baseline_seeds)))
    by_name = {r["name"]: r for r in base["rows"]}
    rows["raw pixels"] = {"lp": [by_name["raw pixels"]["linear_probe"]["mean"]],
                          "knn": [by_name["raw pixels"]["knn"]["mean"]]}
    random_row = by_name["random init (same architecture)"]
    rows["random init"] = {"lp": list(random_row["linear_probe"]["per_seed"].values()),
                           "knn": list(random_row["knn"]["per_seed"].values())}
    random_stats = [diagnose(args, reference, work / f"baselines/random-s{seed}", "random", seed)
                    for seed in baseline_seeds]
    for mode in modes:
        for seed in baseline_seeds:
            ft = finetune(args, reference, work / f"random-{mode}-s{seed}", mode, seed, init="random")
            rows["random init"].setdefault(mode, []).append(ft["accuracy"]["mean"])
    supervised = []
    if args.supervised:  # the same runs as the random-init fine-tune column
        supervised = [finetune(args, reference, work / f"random-finetune-s{seed}", "finetune", seed,
                               init="random")["accuracy"]["mean"] for seed in baseline_seeds]
    tasks = [t for t in tasks if t in rows]  # --cached_only: the tasks with at least one run
    header = ["features", "linear probe", "kNN (k=20)", *modes, "runs", "steps", "CPU s", "spread", "RankMe",
              "flagged"]
    from hfssl.evaluation.knn_monitor import collapse_verdict

    start = {"feature_spread": statistics.fmean(r["feature_spread"] for r in random_stats),
             "rankme": statistics.fmean(r["rankme"] for r in random_stats)}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = ["raw pixels", "random init", *sorted(tasks, key=lambda t: -statistics.fmean(rows[t]["lp"]))]
    for name in order:
        row = rows[name]
        mine = [r for r in runs if r["task"] == name]
        steps = str(mine[0]["steps"]) if mine else "-"
        cpu = f"{statistics.fmean(r['cpu_s'] for r in mine):.0f}" if mine else "-"
        stats = mine or (random_stats if name == "random init" else [])
        spread = f"{statistics.fmean(r['feature_spread'] for r in stats):.3f}" if stats else "-"
        rank = f"{statistics.fmean(r['rankme'] for r in stats):.1f}" if stats else "-"
        # How many runs the training loop's collapse monitor would report, random init as the start.
        flagged = f"{sum(collapse_verdict(r, start) is not None for r in mine)}/{len(mine)}" if mine else "-"
        lines.append("| " + " | ".join([name, cell(row["lp"]), cell(row["knn"]), *(cell(row.get(m, [])) for m in modes),
                                        str(len(row["lp"])), steps, cpu, spread, rank, flagged]) + " |")
    print("\n".join(lines))
    if supervised:
        print(f"supervised from scratch (random init fine-tuned, {args.ft_epochs:g} epochs): {cell(supervised)}")
    for r in runs:
        if r.get("task_metrics"):  # absent from runs cached before it was recorded
            print(f"{r['task']} seed {r['seed']}: " + ", ".join(f"{k} {v:.4g}" for k, v in r["task_metrics"].items()))
    summary = {"budget_cpu_s": args.budget_cpu_s, "split": f"{args.builtin_images}/{args.split}", "seeds": seeds,
               "load_at_start": [round(x, 2) for x in load],
               "rows": {name: {k: statistics.fmean(v) for k, v in row.items()} for name, row in rows.items()},
               "supervised": statistics.fmean(supervised) if supervised else None}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
