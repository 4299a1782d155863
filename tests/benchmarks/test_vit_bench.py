"""The ViT throughput benchmark: its Trainer-peer transforms, its summaries, and a real 2-step run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import _vit_bench  # noqa: E402


def make_transform(**overrides):
    kwargs = {"image_size": 32, "patch_size": 4, "mask_patch_size": 8, "mask_ratio": 0.6,
              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], **overrides}
    return _vit_bench.SimMIMTransform(**kwargs)


def test_peer_crop_box_stays_inside_and_keeps_most_of_the_area():
    transform = make_transform()
    torch.manual_seed(0)
    for width, height in [(32, 32), (40, 24), (100, 10)]:
        for _ in range(50):
            left, top, right, bottom = transform.crop_box(width, height)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            if (width, height) == (32, 32):  # always feasible: scale 0.67-1 (up to rounding)
                assert (right - left) * (bottom - top) >= 0.6 * width * height


def test_peer_image_is_normalised_chw_float_and_flips():
    transform = make_transform()
    image = Image.new("RGB", (32, 32))
    image.paste((255, 255, 255), (0, 0, 16, 32))  # left half white
    torch.manual_seed(0)
    outs = [transform.image(image) for _ in range(40)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
    assert all(o.min() >= -1.0 and o.max() <= 1.0 for o in outs)  # (x/255 - 0.5) / 0.5
    # White lands on the left or, flipped, the right: both must occur in 40 draws.
    left_white = {bool(o[0, :, 0].mean() > 0) for o in outs}
    assert left_white == {True, False}


def test_peer_mask_masks_whole_blocks_of_the_patch_grid():
    transform = make_transform()  # 4x4 blocks of 2x2 patches on an 8x8 patch grid
    torch.manual_seed(0)
    mask = transform.mask()
    assert mask.shape == (64,) and mask.dtype == torch.bool
    assert int(mask.sum()) == math.ceil(16 * 0.6) * 4
    grid = mask.view(4, 2, 4, 2)
    assert torch.equal(grid.amax(dim=(1, 3)), grid.amin(dim=(1, 3)))  # each 2x2 block all-or-nothing


def test_peer_batch_matches_what_vit_mim_takes():
    from transformers import ViTForMaskedImageModeling

    from hfssl.models.presets import build_vision_config

    transform = make_transform()
    rows = transform({"image": [Image.new("L", (20, 30), 128), Image.new("RGB", (32, 32))]})
    batch = _vit_bench.collate_simmim([{"pixel_values": p, "mask": m}
                                       for p, m in zip(rows["pixel_values"], rows["mask"])])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["bool_masked_pos"].shape == (2, 64)
    model = ViTForMaskedImageModeling(build_vision_config("tiny", image_size=32, patch_size=4))
    assert torch.isfinite(model(**batch).loss)


def test_ratios_and_task_costs():
    results = {"hf_trainer": {"images_per_second": 100.0}, "hf_trainer_compile": {"images_per_second": 200.0},
               "hfssl_mim": {"images_per_second": 150.0}, "hfssl_rotation": {"images_per_second": 120.0},
               "hfssl_contrastive": {"images_per_second": 75.0}, "hfssl_mim_compile": {"error": "boom"}}
    ratios = _vit_bench.ratios(results)
    assert ratios["hfssl_mim/hf_trainer"] == 1.5 and ratios["hfssl_mim/hf_trainer_compile"] == 0.75
    assert ratios["hf_trainer_compile/hf_trainer"] == 2.0
    assert not any(key.startswith("hfssl_mim_compile") for key in ratios)
    assert _vit_bench.task_costs(results) == {"hfssl_rotation": 0.2, "hfssl_contrastive": 0.5}


def test_smoke_run_prints_figures_for_the_trainer_and_hfssl(tmp_path):
    """Two contenders, two timed steps each, through the public entry point; parse the last JSON line."""
    cmd = [sys.executable, str(BENCH_DIR / "train_throughput.py"), "--recipe", "vit", "--model_size", "tiny",
           "--steps", "2", "--warmup_steps", "1", "--batch_size", "8", "--contenders", "hf_trainer,hfssl_mim"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "vit" and report["patches_per_image"] == 64
    for name in ("hf_trainer", "hfssl_mim"):
        res = report["results"][name]
        assert "error" not in res, res
        assert res["images_per_second"] > 0
        assert res["patches_per_second"] == pytest.approx(res["images_per_second"] * 64)
        assert math.isfinite(res["mean_loss"]) and 0 < res["mean_loss"] < 5  # L1 on [-1, 1] pixels
    assert report["ratios"]["hfssl_mim/hf_trainer"] > 0
