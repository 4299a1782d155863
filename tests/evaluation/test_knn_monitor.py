"""The kNN monitor of image pretraining, on a real tiny ViT and real image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForMaskedImageModeling, ViTModel

from hfssl.data.images import ImageDataArguments
from hfssl.evaluation.knn_monitor import KnnMonitor, image_knn_monitor

COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]


def _vit(mim: bool = False):
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, encoder_stride=4, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64)
    return ViTForMaskedImageModeling(config) if mim else ViTModel(config, add_pooling_layer=False)


def _batches(labels: list[int], noise_seed: int) -> list[dict]:
    """Solid colour images (one colour per class) with a little noise: any encoder keeps them apart."""
    rng = np.random.default_rng(noise_seed)
    pixels = np.stack([np.clip(np.array(COLOURS[c]) + rng.integers(-20, 20, (16, 16, 3)), 0, 255) for c in labels])
    return [{"pixel_values": torch.from_numpy(pixels.astype(np.uint8)).permute(0, 3, 1, 2),
             "labels": torch.tensor(labels)}]


def _prepare(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255 - 0.5) / 0.5


@pytest.mark.parametrize("mim", [False, True])
def test_separable_classes_score_high_and_shuffled_labels_score_at_chance(mim: bool):
    model = _vit(mim).eval()
    bank_labels = [i % 3 for i in range(60)]
    queries = _batches([i % 3 for i in range(30)], noise_seed=1)
    good = KnnMonitor(lambda: _batches(bank_labels, 0), lambda: queries, _prepare, k=5)
    shuffled = [{**b, "labels": b["labels"][torch.randperm(60, generator=torch.Generator().manual_seed(0))]}
                for b in _batches(bank_labels, 0)]                 # same images, labels no longer match them
    bad = KnnMonitor(lambda: shuffled, lambda: queries, _prepare, k=5)
    with torch.no_grad():
        assert good(model)["knn_accuracy"] == 1.0
        assert bad(model)["knn_accuracy"] < 0.7


def test_monitor_from_image_folders_needs_labels(tmp_path: Path):
    def folder(root: Path, classes: bool) -> None:
        for i in range(12):
            target = root / (f"c{i % 3}" if classes else "") / f"{i}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), COLOURS[i % 3]).save(target)

    folder(tmp_path / "train", classes=True)
    folder(tmp_path / "val", classes=True)
    folder(tmp_path / "flat", classes=False)
    args = ImageDataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    monitor = image_knn_monitor(args, image_size=16, seed=0, samples=8, prepare=_prepare)
    assert monitor is not None
    with torch.no_grad():
        assert monitor(_vit().eval())["knn_accuracy"] == 1.0
    bank = [b for b in monitor.bank()]
    assert sum(len(b["labels"]) for b in bank) == 8                      # capped at `samples`
    assert len(set(torch.cat([b["labels"] for b in bank]).tolist())) > 1  # seeded order: several classes
    flat = ImageDataArguments(train_dir=str(tmp_path / "flat"), validation_split_images=4)
    assert image_knn_monitor(flat, image_size=16, seed=0, samples=8, prepare=_prepare) is None


def test_collapsed_features_are_reported_in_the_log(caplog):
    """An encoder whose CLS output ignores the image (collapse) makes the monitor say so; a healthy one does not."""
    model = _vit().eval()
    queries = _batches([i % 3 for i in range(30)], noise_seed=1)
    monitor = KnnMonitor(None, lambda: queries, _prepare)          # no labels needed for the collapse check
    with torch.no_grad():
        healthy = monitor(model)
    assert set(healthy) == {"feature_spread", "rankme"} and healthy["rankme"] > 1.5
    assert "collapse" not in caplog.text

    def constant(backbone, pixels):                                # every image -> the same vector
        return torch.ones(pixels.shape[0], 32) + 1e-6 * torch.arange(32.0)
    collapsed = KnnMonitor(None, lambda: queries, _prepare, encode=constant)
    with caplog.at_level("WARNING", logger="hfssl"):
        stats = collapsed(model)
    assert stats["feature_spread"] < 0.01 and stats["rankme"] < 1.5
    assert "representation collapse" in caplog.text


def test_unlabelled_images_get_the_collapse_monitor_only(tmp_path: Path):
    for i in range(8):
        Image.new("RGB", (20, 20), COLOURS[i % 3]).save(tmp_path / f"{i}.png")
    flat = ImageDataArguments(train_dir=str(tmp_path), validation_split_images=4)
    monitor = image_knn_monitor(flat, image_size=16, seed=0, samples=8, prepare=_prepare, labels_required=False)
    assert monitor is not None and monitor.bank is None
    with torch.no_grad():
        assert set(monitor(_vit().eval())) == {"feature_spread", "rankme"}


def test_features_that_lose_diversity_since_the_start_are_reported_before_they_collapse(caplog):
    """A tiny ViT starts out nearly collapsed, so the monitor also compares with the features before training:
    an encoder that pulls images together (here: the image-dependent part of its features shrunk to 0.4) is reported
    while still above the absolute thresholds; one that keeps its spread is not."""
    from hfssl.evaluation.knn_monitor import COLLAPSE_RANK, COLLAPSE_SPREAD, _cls

    model = _vit()
    queries = _batches([i % 3 for i in range(30)], noise_seed=1)
    monitor = KnnMonitor(None, lambda: queries, _prepare)
    start = monitor.measure_start(model)
    assert model.training and monitor.start == start                # measured in eval mode, mode restored
    caplog.clear()
    with torch.no_grad(), caplog.at_level("WARNING", logger="hfssl"):
        assert monitor(model.eval()) == pytest.approx(start)
    assert "representation collaps" not in caplog.text

    def pulled_together(backbone, pixels):
        features = _cls(backbone, pixels)
        mean = features.mean(0, keepdim=True)
        return mean + 0.4 * (features - mean)

    shrinking = KnnMonitor(None, lambda: queries, _prepare, encode=pulled_together)
    shrinking.start = start
    with torch.no_grad(), caplog.at_level("WARNING", logger="hfssl"):
        stats = shrinking(model)
    assert stats["feature_spread"] > COLLAPSE_SPREAD and stats["rankme"] > COLLAPSE_RANK  # absolute rule silent
    assert "representation collapsing" in caplog.text and "less diverse than at the start" in caplog.text
    caplog.clear()
    no_start = KnnMonitor(None, lambda: queries, _prepare, encode=pulled_together)
    with torch.no_grad(), caplog.at_level("WARNING", logger="hfssl"):
        no_start(model)
    assert "representation collaps" not in caplog.text  # without a start, only the absolute rule
