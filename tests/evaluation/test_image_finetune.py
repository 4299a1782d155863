"""Image fine-tuning and LP-FT (--mode finetune|lp_ft): pretrained beats random, the backbone really trains,
LP-FT starts from exactly the probe, MIM checkpoints fine-tune, the recipe end to end, one-line errors.

Data and checkpoint come from test_image_probe.py: 10 classes told apart by where a bar sits (so no flips
or crops in the accuracy tests: they would move the bar, i.e. change the label), and a tiny ViT trained
to separate them, exported as ViTForMaskedImageModeling.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTForMaskedImageModeling, ViTModel

from hfssl.evaluation.image_finetune import CropFlip, ImageFinetuneArguments, build_classifier, run_finetune
from hfssl.evaluation.image_probe import (
    ImageProbeArguments,
    extract_image_features,
    linear_probe,
    linear_probe_head,
    load_backbone,
    load_image_splits,
)
from tests.evaluation import test_image_probe as probe_tests
from tests.evaluation.test_image_probe import NUM_CLASSES, RECIPE, TINY_VIT, _error_line, _recipe_main

# The probe tests' module-scoped fixtures (data folders, trained MIM checkpoint), requested by name below.
image_data = probe_tests.image_data
trained_mim_checkpoint = probe_tests.trained_mim_checkpoint

NO_AUG = dict(augmentation="none", per_device_train_batch_size=28, learning_rate=1e-3, warmup_ratio=0.0)


def _args(image_data, checkpoint, tmp_path, **kwargs) -> ImageProbeArguments:
    return ImageProbeArguments(model_name_or_path=str(checkpoint), train_dir=str(image_data["train_dir"]),
                               validation_dir=str(image_data["validation_dir"]), output_dir=str(tmp_path), **kwargs)


def _encoder(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.vit.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_mim_checkpoint_beats_random_and_trains_the_backbone(image_data, trained_mim_checkpoint, tmp_path):
    mim = ViTForMaskedImageModeling.from_pretrained(trained_mim_checkpoint)
    checkpoint_vit = {k: v for k, v in mim.vit.state_dict().items() if k != "embeddings.mask_token"}
    seen = {}

    def on_train_begin(model):
        seen["model"], seen["start"] = model, _encoder(model)

    accuracy = {}
    for init in ("pretrained", "random"):
        args = _args(image_data, trained_mim_checkpoint, tmp_path / init, mode="finetune", init=init)
        results = run_finetune(args, ImageFinetuneArguments(num_train_epochs=3, **NO_AUG), on_train_begin)
        accuracy[init] = results["accuracy"]["mean"]
        if init == "pretrained":
            assert type(seen["model"]) is ViTForImageClassification
            # The MIM export's vit.* weights are the starting encoder, and training moved every block.
            assert _same(seen["start"], checkpoint_vit)
            end = _encoder(seen["model"])
            changed = {k.split(".")[0] for k in end if not torch.equal(end[k], seen["start"][k])}
            assert changed == {k.split(".")[0] for k in end}  # embeddings, every layer, final norm
            saved = json.loads((tmp_path / init / "results.json").read_text())
            assert saved["mode"] == "finetune" and list(saved["accuracy"]["per_seed"]) == ["42"]
    print(accuracy)
    # 15 steps from a new random head (measured: 0.62 vs 0.10); LP-FT below keeps the probe's >= 0.7.
    assert accuracy["pretrained"] >= 0.45 and accuracy["random"] <= 0.25


def test_lp_ft_starts_from_exactly_the_probe(image_data, trained_mim_checkpoint, tmp_path):
    splits = load_image_splits(_args(image_data, trained_mim_checkpoint, tmp_path))
    # The probe by the --mode probe path (ViTModel features), folded into a head on raw features.
    backbone, processor = load_backbone(str(trained_mim_checkpoint))
    feats = [extract_image_features(backbone, processor, ds, "image") for ds in (splits.train, splits.validation)]
    labels = [torch.tensor(ds["label"]) for ds in (splits.train, splits.validation)]
    probe, head = linear_probe_head(feats[0], labels[0], feats[1], labels[1], NUM_CLASSES)
    probe_preds = (feats[1] @ head.weight.T + head.bias).argmax(1)
    assert (probe_preds == labels[1]).float().mean().item() == pytest.approx(probe.accuracy)
    val_pixels = processor(images=[im.convert("RGB") for im in splits.validation["image"]],
                           return_tensors="pt")["pixel_values"]
    seen = {}

    def on_train_begin(model):
        model.eval()
        with torch.no_grad():
            seen["preds"] = model(pixel_values=val_pixels).logits.argmax(1)
        seen["model"], seen["start"] = model, _encoder(model)

    results = run_finetune(_args(image_data, trained_mim_checkpoint, tmp_path, mode="lp_ft"),
                           ImageFinetuneArguments(num_train_epochs=1, **NO_AUG), on_train_begin)
    # Fine-tuning's first step predicts what the probe predicts, image for image.
    assert torch.equal(seen["preds"], probe_preds)
    assert results["linear_probe"]["mean"] == pytest.approx(probe.accuracy)
    # The probe stage left the encoder untouched; fine-tuning then changed it.
    assert _same(seen["start"], {k: v for k, v in backbone.state_dict().items()})
    assert not _same(_encoder(seen["model"]), seen["start"])
    assert results["accuracy"]["mean"] >= 0.7


def test_probe_head_folds_the_standardisation_exactly():
    g = torch.Generator().manual_seed(0)
    train_x = torch.randn(60, 8, generator=g) * torch.linspace(0.01, 5, 8) + 3
    train_y = (train_x[:, 0] > 3).long() + (train_x[:, 7] > 3).long()
    val_x = torch.randn(30, 8, generator=g) * torch.linspace(0.01, 5, 8) + 3
    val_y = (val_x[:, 0] > 3).long() + (val_x[:, 7] > 3).long()
    probe, head = linear_probe_head(train_x, train_y, val_x, val_y, 3, steps=50)
    assert probe == linear_probe(train_x, train_y, val_x, val_y, 3, steps=50)
    # On raw features (scales 0.01..5, offset 3) the folded head scores exactly what the probe scored.
    assert ((val_x @ head.weight.T + head.bias).argmax(1) == val_y).float().mean().item() == probe.accuracy
    assert ((train_x @ head.weight.T + head.bias).argmax(1) == train_y).float().mean().item() == probe.train_accuracy


def test_build_classifier_loads_a_plain_vit_export(tmp_path):
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False)
    vit.save_pretrained(tmp_path)
    model = build_classifier(str(tmp_path), ["a", "b", "c"])
    assert _same(_encoder(model), vit.state_dict())
    assert model.classifier.out_features == 3 and model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_crop_flip_is_seeded_and_keeps_shapes():
    x = torch.randn(4, 3, 16, 16)

    def augmented(seed):
        return CropFlip(torch.Generator().manual_seed(seed), min_scale=0.3)({"pixel_values": x, "labels": 1})

    a, b, c = augmented(0), augmented(0), augmented(1)
    assert a["pixel_values"].shape == x.shape and a["labels"] == 1
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and not torch.equal(a["pixel_values"], c["pixel_values"])
    assert not torch.equal(a["pixel_values"], x)


def test_recipe_finetune_subprocess_with_seeds(python_exe, image_data, trained_mim_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([python_exe, str(RECIPE), "--model_name_or_path", str(trained_mim_checkpoint),
                           "--train_dir", str(image_data["train_dir"]), "--validation_dir",
                           str(image_data["validation_dir"]), "--mode", "finetune", "--seeds", "1,2",
                           "--num_train_epochs", "1", "--max_train_samples", "40", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (results["mode"], results["num_train"], results["num_validation"]) == ("finetune", 40, 60)
    assert list(results["accuracy"]["per_seed"]) == ["1", "2"] and results["config"]["augmentation"] == "crop_flip"
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert cells[2] == "finetune"
    assert cells[3] == f"{100 * results['accuracy']['mean']:.2f} ± {100 * results['accuracy']['std']:.2f}"


def test_mode_flags_fail_in_one_line(image_data, trained_mim_checkpoint, capsys):
    main = _recipe_main()
    base = ["--model_name_or_path", str(trained_mim_checkpoint), "--train_dir", str(image_data["train_dir"]),
            "--validation_dir", str(image_data["validation_dir"])]
    cases = [(["--mode", "finetuning"], "--mode must be one of linear_probe, finetune, lp_ft"),
             (["--mode", "finetune", "--feature", "mean"], "use --feature cls"),
             (["--baselines", "pixels,noise"], "--baselines takes pixels, random or none"),
             (["--mode", "lp_ft", "--seeds", "1,1"], "--seeds has duplicates"),
             (["--mode", "finetune", "--augmentation", "rotate"], "--augmentation must be one of"),
             (["--mode", "finetune", "--min_crop_scale", "0"], "--min_crop_scale must be in (0, 1]"),
             (["--mode", "finetune", "--num_train_epochs", "0"], "--num_train_epochs must be > 0")]
    for extra, message in cases:
        assert message in _error_line(main, [*base, *extra], capsys, code=2), extra


def test_an_mae_export_fine_tunes_as_a_vit_classifier_with_its_encoder(tmp_path):
    """transformers has no classification class for vit_mae: the MAE encoder's weights go into a ViT classifier."""
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    config = ViTMAEConfig(**{k: v for k, v in TINY_VIT.items() if k != "encoder_stride"}, decoder_hidden_size=32,
                          decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64)
    mae = ViTMAEForPreTraining(config)
    mae.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    model = build_classifier(str(tmp_path), ["a", "b", "c"])
    assert type(model) is ViTForImageClassification and model.config.num_labels == 3
    for name, value in mae.vit.state_dict().items():
        assert torch.equal(model.vit.state_dict()[name], value), name
    random = build_classifier(str(tmp_path), ["a", "b", "c"], init="random")
    assert not torch.equal(random.vit.embeddings.patch_embeddings.projection.weight,
                           mae.vit.embeddings.patch_embeddings.projection.weight)
