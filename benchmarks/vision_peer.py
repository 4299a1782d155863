"""hfssl's DINO, BYOL, MoCo v3 and SwAV against the ``lightly`` library's, same ViT, same images, same budget.

    bash benchmarks/setup_vision_peer.sh            # once: lightly 1.6 in .venv-peer (never in .venv)
    nice -n 10 .venv/bin/python benchmarks/vision_peer.py --budget_cpu_s 120 [--methods dino,byol,moco_v3,swav]

For each method, each side trains the same transformers ``ViTModel`` (tiny, 32 px, patch 4, identical seed-0
weights) on the same image folder (the cluttered digits' ``writers`` training split by default) for the same
budget of single-thread CPU seconds in its own process (``benchmarks/_vision_peer_worker.py``: hfssl's recipe in
``.venv``, lightly's transforms/heads/losses in ``.venv-peer``), with the same optimizer, schedule and method
hyper-parameters. Then both exports go through the same evaluation here: ``recipes/image_probe.py``'s linear
probe and weighted kNN (k=20) on the validation images (the held-out writers).

Throughput is training images per CPU second of the training steps (data loading and augmentation included):
the machine this runs on has 2 cores shared with other jobs, so CPU time, not wall time, is what two runs can
share fairly; on an idle core they are the same. Targets (issue 13): images/s >= 1.5x lightly's, and kNN top-1 at
the equal budget >= lightly's, per method. The last line of stdout is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORKER = REPO / "benchmarks" / "_vision_peer_worker.py"
PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
METHODS = ("dino", "byol", "moco_v3", "swav")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budget_cpu_s", type=float, default=120.0, help="single-thread CPU seconds of training per run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--builtin_images", default="cluttered_digits")
    p.add_argument("--split", default="writers")
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    return p.parse_args(argv)


def run_side(side: str, method: str, train_dir: str, out: Path, args: argparse.Namespace) -> dict:
    done = out / "stats.json"
    if done.exists():
        return json.loads(done.read_text())
    python = sys.executable if side == "hfssl" else str(PEER_PYTHON)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([python, str(WORKER), "--side", side, "--method", method, "--train_dir", train_dir,
                           "--output_dir", str(out), "--budget_cpu_s", str(args.budget_cpu_s), "--seed",
                           str(args.seed)], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{side} {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(done.read_text())


def evaluate(model_dir: Path, train_dir: str, validation_dir: str) -> dict:
    from hfssl.evaluation.image_probe import ImageProbeArguments, run

    result = run(ImageProbeArguments(model_name_or_path=str(model_dir), train_dir=train_dir,
                                     validation_dir=validation_dir, baselines="none",
                                     output_dir=str(model_dir / "probe")))
    return {"linear_probe": result["linear_probe"]["accuracy"], "knn": result["knn"]["accuracy"]}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not PEER_PYTHON.exists():
        raise SystemExit("no .venv-peer: run `bash benchmarks/setup_vision_peer.sh` first (lightly stays out of .venv)")
    from hfssl.data.builtin_images import builtin_image_dir

    root = builtin_image_dir(name=args.builtin_images, split=args.split)
    train_dir, validation_dir = os.path.join(root, "train"), os.path.join(root, "validation")
    work = Path(args.workdir) if args.workdir else Path(os.environ.get("TMPDIR", "/tmp")) / f"vision_peer_{os.getpid()}"
    methods = [m for m in args.methods.split(",") if m]
    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load[0]:.1f}, budget "
          f"{args.budget_cpu_s:g} single-thread CPU s per run, {args.builtin_images}/{args.split}", flush=True)
    rows, ratios = [], {}
    for method in methods:
        result = {}
        for side in ("hfssl", "lightly"):
            out = work / f"{side}-{method}"
            stats = run_side(side, method, train_dir, out, args)
            result[side] = {**stats, **evaluate(out, train_dir, validation_dir)}
            rows.append((method, side, result[side]))
            print(json.dumps({"method": method, "side": side, **result[side]}), flush=True)
        h, lt = result["hfssl"], result["lightly"]
        ratios[method] = {"images_per_s_ratio": round(h["images_per_cpu_s"] / lt["images_per_cpu_s"], 2),
                          "knn_hfssl": round(h["knn"], 4), "knn_lightly": round(lt["knn"], 4),
                          "knn_difference": round(h["knn"] - lt["knn"], 4),
                          "linear_probe_hfssl": round(h["linear_probe"], 4),
                          "linear_probe_lightly": round(lt["linear_probe"], 4)}
    print("| method | side | steps | train CPU s | images/CPU s | linear probe | kNN (k=20) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for method, side, r in rows:
        print(f"| {method} | {side} | {r['steps']} | {r['train_cpu_s']:.1f} | {r['images_per_cpu_s']:.0f} | "
              f"{100 * r['linear_probe']:.1f} | {100 * r['knn']:.1f} |")
    summary = {"budget_cpu_s": args.budget_cpu_s, "data": f"{args.builtin_images}/{args.split}",
               "load_at_start": round(load[0], 2), "methods": ratios,
               "targets_met": {m: {"speed": r["images_per_s_ratio"] >= 1.5, "knn": r["knn_difference"] >= 0}
                               for m, r in ratios.items()}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
