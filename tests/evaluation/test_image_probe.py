"""Image linear probe and kNN: real separation vs shuffled labels, MIM checkpoints, --init random, the recipe.

The data: 10 classes told apart only by WHERE a small bar sits on a 32x32 image whose background colour is
random (a strong distractor). A tiny ViT with random weights sees mostly the background (chance level);
the same ViT trained for a few supervised steps separates the classes. That makes "pretrained beats random"
and "the probe reads the labels" checks that fail when the evaluation is broken.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    ViTConfig,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTImageProcessor,
    ViTModel,
)

from hfssl.evaluation.image_probe import (
    ImageProbeArguments,
    extract_image_features,
    knn_predict,
    linear_probe,
    load_backbone,
    load_image_splits,
    run,
)
from tests.conftest import REPO_ROOT

RECIPE = REPO_ROOT / "recipes" / "image_probe.py"
NUM_CLASSES, PER_CLASS, TRAIN_PER_CLASS = 10, 20, 14
TINY_VIT = dict(image_size=32, patch_size=4, encoder_stride=4, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=128)


def _make_image(label: int, rng: np.random.Generator) -> Image.Image:
    pixels = np.empty((32, 32, 3), np.uint8)
    pixels[:] = rng.integers(0, 256, 3)  # random background colour: the distractor
    pixels += rng.integers(0, 30, (32, 32, 3)).astype(np.uint8)
    row, col = divmod(label, 5)
    y, x = 4 + 14 * row, 2 + 6 * col
    pixels[y:y + 8, x:x + 4] = 255 - pixels[y, x]  # the class: where a contrasting bar sits
    return Image.fromarray(pixels)


def _processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": 32, "width": 32})


@pytest.fixture(scope="module")
def image_data(tmp_path_factory) -> dict:
    """train/ and validation/ class folders (14 + 6 PNGs per class) and the training images in memory."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    train_images, train_labels = [], []
    for label in range(NUM_CLASSES):
        for i in range(PER_CLASS):
            image = _make_image(label, rng)
            split = "train" if i < TRAIN_PER_CLASS else "validation"
            folder = root / split / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i:03d}.png")
            if split == "train":
                train_images.append(image)
                train_labels.append(label)
    return {"train_dir": root / "train", "validation_dir": root / "validation", "images": train_images,
            "labels": torch.tensor(train_labels)}


@pytest.fixture(scope="module")
def trained_mim_checkpoint(image_data, tmp_path_factory) -> Path:
    """A tiny ViT trained 30 supervised steps to separate the classes, exported as ViTForMaskedImageModeling."""
    torch.manual_seed(0)
    classifier = ViTForImageClassification(ViTConfig(**TINY_VIT, num_labels=NUM_CLASSES))
    pixel_values = _processor()(images=image_data["images"], return_tensors="pt")["pixel_values"]
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    for _ in range(30):
        classifier(pixel_values=pixel_values, labels=image_data["labels"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    mim = ViTForMaskedImageModeling(ViTConfig(**TINY_VIT))
    missing, unexpected = mim.vit.load_state_dict(classifier.vit.state_dict(), strict=False)
    assert missing == ["embeddings.mask_token"] and not unexpected
    out = tmp_path_factory.mktemp("vit-mim")
    mim.save_pretrained(out)
    _processor().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def features(image_data, trained_mim_checkpoint) -> dict:
    args = ImageProbeArguments(model_name_or_path=str(trained_mim_checkpoint),
                               train_dir=str(image_data["train_dir"]), validation_dir=str(image_data["validation_dir"]))
    splits = load_image_splits(args)
    model, processor = load_backbone(str(trained_mim_checkpoint))
    return {name: (extract_image_features(model, processor, ds, "image", "cls", batch_size=32),
                   torch.tensor(ds["label"]))
            for name, ds in (("train", splits.train), ("validation", splits.validation))}


def test_mim_checkpoint_loads_and_features_are_the_encoders_output(image_data, trained_mim_checkpoint):
    model, processor = load_backbone(str(trained_mim_checkpoint))
    assert type(model) is ViTModel and model.pooler is None
    mim = ViTForMaskedImageModeling.from_pretrained(trained_mim_checkpoint)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, mim.vit.state_dict()[name], rtol=0, atol=0)
    splits = load_image_splits(ImageProbeArguments(train_dir=str(image_data["train_dir"]),
                                                   validation_dir=str(image_data["validation_dir"])))
    assert splits.class_names == [f"class_{i:02d}" for i in range(NUM_CLASSES)]
    assert (len(splits.train), len(splits.validation)) == (140, 60)
    subset = splits.validation.select(range(0, 60, 7))
    pixel_values = processor(images=[im.convert("RGB") for im in subset["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(trained_mim_checkpoint)(pixel_values=pixel_values).last_hidden_state
    cls = extract_image_features(model, processor, subset, "image", "cls", batch_size=3)
    mean = extract_image_features(model, processor, subset, "image", "mean", batch_size=4)
    torch.testing.assert_close(cls, hidden[:, 0])
    torch.testing.assert_close(mean, hidden[:, 1:].mean(1))


def test_probe_and_knn_read_the_labels_and_shuffled_labels_give_chance(features):
    (train_x, train_y), (val_x, val_y) = features["train"], features["validation"]
    real = linear_probe(train_x, train_y, val_x, val_y, NUM_CLASSES)
    knn = (knn_predict(train_x, train_y, val_x, NUM_CLASSES, k=20) == val_y).float().mean().item()
    shuffled_y = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    shuffled = linear_probe(train_x, shuffled_y, val_x, val_y, NUM_CLASSES)
    shuffled_knn = (knn_predict(train_x, shuffled_y, val_x, NUM_CLASSES, k=20) == val_y).float().mean().item()
    print(f"probe {real.accuracy:.3f} knn {knn:.3f} | shuffled: probe {shuffled.accuracy:.3f} knn {shuffled_knn:.3f}")
    assert real.accuracy >= 0.7 and knn >= 0.7
    assert shuffled.accuracy <= 0.3 and shuffled_knn <= 0.3
    # The probe did fit the shuffled labels it was given: it is the features that carry no such signal.
    assert shuffled.train_accuracy > 0.5


def test_knn_votes_are_temperature_weighted():
    # Three neighbours: two of class 0 at cosine 0.5, one of class 1 at cosine 0.99.
    train_x = torch.tensor([[0.5, 0.866], [0.5, -0.866], [0.99, 0.141], [-1.0, 0.0]])
    train_y = torch.tensor([0, 0, 1, 2])
    query = torch.tensor([[1.0, 0.0]])
    # Sharp weights (DINO's T=0.07): exp(0.99/T) outweighs 2*exp(0.5/T). Flat weights: the majority wins.
    assert knn_predict(train_x, train_y, query, 3, k=3, temperature=0.07).tolist() == [1]
    assert knn_predict(train_x, train_y, query, 3, k=3, temperature=100.0).tolist() == [0]
    assert knn_predict(train_x, train_y, query, 3, k=1).tolist() == [1]


def test_every_table_has_the_random_init_and_raw_pixel_baselines(image_data, trained_mim_checkpoint, tmp_path):
    """One run: the trained checkpoint, random inits over two seeds (mean ± std) and the raw pixels."""
    args = ImageProbeArguments(model_name_or_path=str(trained_mim_checkpoint), train_dir=str(image_data["train_dir"]),
                               validation_dir=str(image_data["validation_dir"]), probe_steps=100, seeds="1,2",
                               mode="probe", output_dir=str(tmp_path))
    assert args.mode == "linear_probe"  # the GLUE recipe's name; "probe" stays an alias
    results = run(args)
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == results["rows"]
    model, random, pixels = results["rows"]
    assert (model["init"], random["init"], pixels["name"]) == ("pretrained", "random", "raw pixels")
    assert list(random["linear_probe"]["per_seed"]) == ["1", "2"] and len(model["linear_probe"]["per_seed"]) == 1
    # Two random inits are two different encoders: their scores differ, and the spread is reported.
    assert random["knn"]["per_seed"]["1"] != random["knn"]["per_seed"]["2"] or random["linear_probe"]["std"] > 0
    assert pixels["feature_dim"] == 3 * 32 * 32 and model["feature_dim"] == 64
    print({r["name"]: (r["linear_probe"]["mean"], r["knn"]["mean"]) for r in results["rows"]})
    assert model["linear_probe"]["mean"] - random["linear_probe"]["mean"] > 0.4
    assert model["knn"]["mean"] - random["knn"]["mean"] > 0.4
    assert random["knn"]["mean"] < 0.3
    # The bar's position is in the pixels, under a random background colour: above chance (measured 0.38),
    # below the trained encoder.
    assert 0.2 < pixels["linear_probe"]["mean"] < model["linear_probe"]["mean"] - 0.2
    assert results["linear_probe"]["accuracy"] == model["linear_probe"]["mean"]
    assert results["majority_accuracy"] == pytest.approx(0.1)


def test_init_random_is_the_evaluated_model_and_skips_its_own_baseline(image_data, trained_mim_checkpoint, tmp_path):
    results = run(ImageProbeArguments(model_name_or_path=str(trained_mim_checkpoint),
                                      train_dir=str(image_data["train_dir"]),
                                      validation_dir=str(image_data["validation_dir"]), init="random", probe_steps=50,
                                      baselines="random", output_dir=str(tmp_path)))
    assert [r["init"] for r in results["rows"]] == ["random"]
    assert results["init"] == "random" and results["knn"]["accuracy"] < 0.3


def test_mae_export_is_probed_through_its_encoder_on_whole_images(image_data, tmp_path):
    """A ViTMAEForPreTraining export: its encoder's weights in a ViTModel (no random masking), so features are
    deterministic and equal the MAE encoder's own output when it masks nothing."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    config = ViTMAEConfig(**{k: v for k, v in TINY_VIT.items() if k != "encoder_stride"}, decoder_hidden_size=32,
                          decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64)
    mae = ViTMAEForPreTraining(config)
    mae.save_pretrained(tmp_path / "mae")
    _processor().save_pretrained(tmp_path / "mae")
    model, processor = load_backbone(str(tmp_path / "mae"))
    assert type(model) is ViTModel
    for name, value in mae.vit.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    pixel_values = processor(images=image_data["images"][:4], return_tensors="pt")["pixel_values"]
    mae.vit.config.mask_ratio = 0.0
    with torch.no_grad():
        identity = torch.arange(64).expand(4, 64).float()        # keep every patch, in order
        expected = mae.vit(pixel_values=pixel_values, noise=identity).last_hidden_state
        actual = model(pixel_values=pixel_values).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def _recipe_main():
    spec = importlib.util.spec_from_file_location("image_probe_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_recipe_subprocess_end_to_end(python_exe, image_data, trained_mim_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([python_exe, str(RECIPE), "--model_name_or_path", str(trained_mim_checkpoint),
                           "--train_dir", str(image_data["train_dir"]), "--validation_dir",
                           str(image_data["validation_dir"]), "--feature", "mean", "--knn_k", "5",
                           "--max_train_samples", "100", "--mode", "linear_probe", "--baselines", "pixels",
                           "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Reading local folders is no download: datasets' bars stay quiet.
    assert "Downloading data" not in proc.stderr and "Generating train split" not in proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert (results["feature"], results["num_train"], results["num_validation"]) == ("mean", 100, 60)
    assert results["knn"]["k"] == 5 and results["feature_dim"] == 64 and results["num_classes"] == NUM_CLASSES
    assert 0 <= results["linear_probe"]["accuracy"] <= 1 and 0 <= results["knn"]["accuracy"] <= 1
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0].split("|")[1:-1][3].strip() == "Linear probe top-1"
    assert table[2].split("|")[4].strip() == f"{100 * results['linear_probe']['accuracy']:.2f}"
    assert table[3].split("|")[1].strip() == "raw pixels" and len(table) == 4


def test_hub_style_dataset_with_string_labels_and_test_split(tmp_path):
    """--dataset_name with a local dataset repo: custom column names, string labels, no validation split."""
    import datasets

    rng = np.random.default_rng(1)
    repo = tmp_path / "repo"
    repo.mkdir()
    for split, n in (("train", 6), ("test", 3)):
        labels = [["cat", "dog"][i % 2] for i in range(n)]
        ds = datasets.Dataset.from_dict({"img": [_make_image(i % 2, rng) for i in range(n)], "animal": labels},
                                        features=datasets.Features({"img": datasets.Image(),
                                                                    "animal": datasets.Value("string")}))
        ds.to_parquet(str(repo / f"{split}.parquet"))
    ckpt = tmp_path / "vit"
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(ckpt)
    _processor().save_pretrained(ckpt)
    results = run(ImageProbeArguments(model_name_or_path=str(ckpt), dataset_name=str(repo), image_column_name="img",
                                      label_column_name="animal", probe_steps=10, output_dir=str(tmp_path / "o")))
    assert results["class_names"] == ["cat", "dog"]
    assert (results["num_train"], results["num_validation"], results["knn"]["k"]) == (6, 3, 6)


def _error_line(main, args, capsys, code: int = 1) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_errors_are_one_line(image_data, trained_mim_checkpoint, tmp_path, capsys):
    main = _recipe_main()
    data = ["--train_dir", str(image_data["train_dir"]), "--validation_dir", str(image_data["validation_dir"])]
    assert "does not exist" in _error_line(main, ["--model_name_or_path", str(tmp_path / "nope"), *data], capsys)
    no_processor = tmp_path / "no-processor"
    ViTModel(ViTConfig(**TINY_VIT)).save_pretrained(no_processor)
    line = _error_line(main, ["--model_name_or_path", str(no_processor), *data], capsys)
    assert "has no image processor" in line
    model = ["--model_name_or_path", str(trained_mim_checkpoint)]
    loose = tmp_path / "loose"
    loose.mkdir()
    _make_image(0, np.random.default_rng(0)).save(loose / "a.png")
    line = _error_line(main, [*model, "--train_dir", str(loose), "--validation_dir", str(loose)], capsys)
    assert "no class sub-folders" in line
    single = tmp_path / "single"
    (single / "only").mkdir(parents=True)
    _make_image(0, np.random.default_rng(0)).save(single / "only" / "a.png")
    line = _error_line(main, [*model, "--train_dir", str(single), "--validation_dir", str(single)], capsys)
    assert "single class" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _error_line(main, [*model, "--train_dir", str(empty), "--validation_dir", str(empty)], capsys)
    assert "no class sub-folders with images" in line
    line = _error_line(main, [*model, "--train_dir", str(image_data["train_dir"])], capsys)
    assert "--validation_dir is required" in line
    line = _error_line(main, [*model, *data, "--dataset_name", "user/images"], capsys)
    assert "not both" in line
    line = _error_line(main, [*model, *data, "--feature", "pooler"], capsys, code=2)
    assert "--feature must be one of cls, mean" in line
