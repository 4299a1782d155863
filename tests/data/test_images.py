"""Image pipeline: folders and errors, processor-exact decoding, cursor resume without decoding, built-in digits."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, ViTImageProcessor

from hfssl.data import StatefulLoader
from hfssl.data import builtin_images as builtin
from hfssl.data.images import (
    DecodedImageCache,
    ImageDataArguments,
    ImageExamples,
    collate_images,
    has_validation_images,
    load_image_dataset,
    load_image_dataset_from_args,
)
from hfssl.errors import DataError
from tests.data.test_loader import _resume_matches

S = 16


def _save(path, array: np.ndarray, mode: str, fmt: str = "PNG") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(array, mode).save(path, format=fmt)


def _mixed_folder(root) -> dict[str, int]:
    """Images of several sizes/modes/formats in two classes; returns path -> label."""
    rng = np.random.default_rng(0)
    files = {
        "cat/rgb.png": (rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB", "PNG"),
        "cat/gray.png": (rng.integers(0, 256, (9, 9), dtype=np.uint8), "L", "PNG"),
        # Real transparency (alpha spans 0..255): RGB conversion must composite it, not drop it.
        "cat/alpha.png": (rng.integers(0, 256, (17, 11, 4), dtype=np.uint8), "RGBA", "PNG"),
        "dog/photo.jpg": (rng.integers(0, 256, (40, 25, 3), dtype=np.uint8), "RGB", "JPEG"),
        "dog/gray.jpeg": (rng.integers(0, 256, (33, 12), dtype=np.uint8), "L", "JPEG"),
    }
    labels = {}
    for rel, (array, mode, fmt) in files.items():
        _save(root / rel, array, mode, fmt)
        labels[str(root / rel)] = 0 if rel.startswith("cat") else 1
    (root / "README.txt").write_text("not an image: ignored")
    return labels


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "train"
    return root, _mixed_folder(root)


def test_a_folder_of_mixed_images_streams_as_uint8_rgb_with_labels(mixed):
    root, labels = mixed
    dataset = load_image_dataset(train_dir=str(root))
    assert dataset.features["image"] == datasets.Image(decode=False)
    rows = list(dataset)
    assert sorted(r["image"]["path"] for r in rows) == sorted(labels)
    examples = list(ImageExamples(dataset, S))
    assert len(examples) == 5
    for row, ex in zip(rows, examples):
        assert ex["pixel_values"].shape == (3, S, S) and ex["pixel_values"].dtype == torch.uint8
        assert ex["labels"] == labels[row["image"]["path"]]
    batch = collate_images(examples)
    assert batch["pixel_values"].shape == (5, 3, S, S) and batch["pixel_values"].dtype == torch.uint8
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [ex["labels"] for ex in examples]
    # Gray images become three equal channels.
    gray = next(ex for r, ex in zip(rows, examples) if r["image"]["path"].endswith("cat/gray.png"))
    assert torch.equal(gray["pixel_values"][0], gray["pixel_values"][2])


def test_pixels_equal_what_the_saved_image_processor_gives(mixed, tmp_path):
    root, labels = mixed
    # What an exported model ships; do_convert_rgb lets it take gray and RGBA files like training does.
    ViTImageProcessor(size={"height": S, "width": S}, do_convert_rgb=True).save_pretrained(tmp_path / "proc")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "proc")
    plain = ViTImageProcessor(size={"height": S, "width": S})  # the default, for RGB files
    rows = list(load_image_dataset(train_dir=str(root)))
    examples = list(ImageExamples(rows, S))
    mean, std = torch.tensor(processor.image_mean)[:, None, None], torch.tensor(processor.image_std)[:, None, None]
    for row, ex in zip(rows, examples):
        ours = (ex["pixel_values"].float() / 255 - mean) / std
        path = row["image"]["path"]
        want = processor(PIL.Image.open(path), return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(ours, want, atol=1e-6, rtol=0, msg=path)
        if PIL.Image.open(path).mode == "RGB":
            want = plain(PIL.Image.open(path), return_tensors="pt")["pixel_values"][0]
            torch.testing.assert_close(ours, want, atol=1e-6, rtol=0, msg=path)
    # The transparent file really tested compositing: dropping alpha gives other pixels.
    alpha = next(i for i, r in enumerate(rows) if r["image"]["path"].endswith("alpha.png"))
    dropped = PIL.Image.open(rows[alpha]["image"]["path"]).convert("RGB").resize((S, S), PIL.Image.BILINEAR)
    assert not torch.equal(torch.from_numpy(np.array(dropped)).permute(2, 0, 1), examples[alpha]["pixel_values"])


@pytest.fixture
def opened(monkeypatch) -> list[int]:
    """Counts PIL.Image.open calls (a one-element list)."""
    count = [0]
    real = PIL.Image.open

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting)
    return count


def _grid_folder(root, n: int = 36, classes: int = 3) -> None:
    rng = np.random.default_rng(1)
    for i in range(n):
        _save(root / f"c{i % classes}" / f"{i:03d}.png", rng.integers(0, 256, (8 + i % 5, 10, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> ImageExamples:
    root = tmp_path_factory.mktemp("grid")
    _grid_folder(root)
    return ImageExamples(load_image_dataset(train_dir=str(root)), 8)


def _same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a["labels"] == b["labels"] and torch.equal(a["pixel_values"], b["pixel_values"])


def test_cursors_restart_right_after_each_example_without_decoding_what_came_before(grid, opened):
    pairs = list(grid.iter_with_cursors())
    assert opened[0] == len(pairs) == 36
    _same([ex for ex, _ in pairs], list(grid))
    for i in (0, 1, 17, 34, 35):
        cursor = json.loads(json.dumps(pairs[i][1]))
        opened[0] = 0
        rest = [ex for ex, _ in grid.iter_with_cursors(cursor)]
        _same(rest, [ex for ex, _ in pairs[i + 1 :]])
        assert opened[0] == len(rest)  # the skipped images were never opened


@pytest.mark.parametrize("num_workers", [0, 2])
def test_decoded_cache_serves_later_epochs_from_memory_identically_within_its_size(grid, opened, num_workers):
    want = list(grid)
    one_image = want[0]["pixel_values"].nbytes
    cached = ImageExamples(grid.dataset, 8, num_workers=num_workers, cache=DecodedImageCache(10**9))
    opened[0] = 0
    first, second = list(cached), list(cached)
    assert opened[0] == 36  # the second epoch opened no file
    _same(first, want)
    _same(second, want)
    assert len(cached.cache) == 36 and cached.cache.used_bytes == 36 * one_image
    # Full at 10 images: those stay, the other 26 are decoded every epoch; a resumed stream still matches.
    small = ImageExamples(grid.dataset, 8, num_workers=num_workers, cache=DecodedImageCache(10 * one_image))
    opened[0] = 0
    list(small)
    _same(list(small), want)
    assert len(small.cache) == 10 and opened[0] == 36 + 26
    cursor = list(grid.iter_with_cursors())[12][1]
    _same([ex for ex, _ in small.iter_with_cursors(cursor)], want[13:])
    # Another size is another entry; rows that carry bytes have no name to cache under.
    assert DecodedImageCache.key({"path": "a.png", "bytes": None}, 8) != DecodedImageCache.key("a.png", 16)
    assert DecodedImageCache.key({"path": "a.png", "bytes": b"\x89PNG"}, 8) is None
    off = ImageExamples(grid.dataset, 8, cache=DecodedImageCache(0))
    _same(list(off), want)
    assert len(off.cache) == 0


def test_decode_threads_keep_the_order_the_cursors_and_the_errors(grid, tmp_path):
    threaded = ImageExamples(grid.dataset, 8, num_workers=2)
    want = list(grid.iter_with_cursors())
    got = list(threaded.iter_with_cursors())
    assert [c for _, c in got] == [c for _, c in want]
    _same([ex for ex, _ in got], [ex for ex, _ in want])
    _same([ex for ex, _ in threaded.iter_with_cursors(want[20][1])], [ex for ex, _ in want[21:]])
    _grid_folder(tmp_path / "bad", n=9)
    (tmp_path / "bad" / "c1" / "004.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="cannot decode image .*004.png"):
        list(ImageExamples(load_image_dataset(train_dir=str(tmp_path / "bad")), 8, num_workers=2))


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("rank", [0, 1])
def test_stateful_loader_resumes_mid_epoch_exactly_with_shuffle_and_two_ranks(grid, rank, k):
    def make():
        return StatefulLoader(
            grid, batch_size=2, collate_fn=collate_images, rank=rank, world_size=2, shuffle_buffer_size=8, seed=4
        )

    _resume_matches(make, k)  # k batches of 4 global images: mid-chunk at k=1, 3, 5


def test_deep_resume_decodes_about_one_shuffle_chunk(grid, opened):
    loader = StatefulLoader(grid, batch_size=2, collate_fn=collate_images, world_size=2, shuffle_buffer_size=8)
    it = iter(loader)
    for _ in range(7):  # 28 of 36 images
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["resume_point"]["cursor"] == {"kind": "images", "consumed": 24}
    resumed = StatefulLoader(grid, batch_size=2, collate_fn=collate_images, world_size=2, shuffle_buffer_size=8)
    resumed.load_state_dict(state)
    opened[0] = 0
    next(iter(resumed))
    assert opened[0] <= 8  # the current chunk only, not the 24 images before it


def test_a_folder_without_class_subfolders_has_no_labels(tmp_path):
    _save(tmp_path / "a.png", np.zeros((5, 5, 3), np.uint8), "RGB")
    _save(tmp_path / "b.png", np.full((5, 5, 3), 255, np.uint8), "RGB")
    examples = list(ImageExamples(load_image_dataset(train_dir=str(tmp_path)), 4))
    assert [set(ex) for ex in examples] == [{"pixel_values", "image_index"}] * 2
    assert set(collate_images(examples)) == {"pixel_values", "image_index"}
    assert [ex["image_index"] for ex in examples] == [0, 1]  # the position in the stream


def test_held_out_validation_images_and_max_train_samples(tmp_path):
    _grid_folder(tmp_path / "train", n=12)
    paths = [r["image"]["path"] for r in load_image_dataset(train_dir=str(tmp_path / "train"))]
    args = ImageDataArguments(train_dir=str(tmp_path / "train"), validation_split_images=4, max_train_samples=5)
    assert [r["image"]["path"] for r in load_image_dataset_from_args(args, "validation")] == paths[:4]
    assert [r["image"]["path"] for r in load_image_dataset_from_args(args, "train")] == paths[4:9]
    with pytest.raises(DataError, match="no validation images: pass --validation_dir or --validation_split_images"):
        load_image_dataset_from_args(ImageDataArguments(train_dir=str(tmp_path / "train")), "validation")


def test_user_errors_give_one_actionable_line(tmp_path, mixed):
    root, _ = mixed
    with pytest.raises(DataError, match=r"--train_dir .*missing does not exist"):
        load_image_dataset(train_dir=str(tmp_path / "missing"))
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no image files"):
        load_image_dataset(train_dir=str(tmp_path / "texts"))
    with pytest.raises(DataError, match=r"no image column 'img' \(columns: image, label\); pass --image_column_name"):
        load_image_dataset(train_dir=str(root), image_column_name="img")
    with pytest.raises(DataError, match="offline mode is on .* pass --train_dir"):
        load_image_dataset(dataset_name="someone/some-images")
    for name, content in (("garbage.png", b"this is not a png"), ("cut.jpg", None)):
        bad = tmp_path / "bad" / "x" / name
        bad.parent.mkdir(parents=True, exist_ok=True)
        if content is None:  # a truncated JPEG: the header parses, the data ends early
            _save(bad, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB", "JPEG")
            content = bad.read_bytes()[:300]
        bad.write_bytes(content)
        with pytest.raises(DataError, match=f"cannot decode image .*{name}"):
            list(ImageExamples(load_image_dataset(train_dir=str(bad.parent.parent)), 8))
        bad.unlink()
    stream = ImageExamples(load_image_dataset(train_dir=str(root)), 8)
    with pytest.raises(DataError, match="image set changed since the checkpoint"):
        list(stream.iter_with_cursors({"kind": "images", "consumed": 9}))
    with pytest.raises(DataError, match="not an image stream position"):
        list(stream.iter_with_cursors({"packer": "clm", "document": 3}))
    named = datasets.Dataset.from_dict({"image": [str(p) for p in sorted(root.rglob("*.png"))], "label": ["a"] * 3})
    with pytest.raises(DataError, match="not a class index"):
        list(ImageExamples(named.to_iterable_dataset(), 8))
    for kwargs, message in (
        ({"dataset_name": "x", "train_dir": "y"}, "either --dataset_name or --train_dir"),
        ({"validation_dir": "v", "validation_split_images": 3}, "either --validation_dir or --validation_split"),
        ({"shuffle_buffer_size": -1}, "--shuffle_buffer_size must be >= 0"),
        ({"max_train_samples": 0}, "--max_train_samples must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            ImageDataArguments(**kwargs)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    return builtin.builtin_image_dir(tmp_path_factory.mktemp("cache"))


def test_builtin_digits_folder_holds_the_1797_sklearn_digits(digits_dir, monkeypatch):
    from sklearn.datasets import load_digits

    files = {
        split: sorted(os.path.join(d, f) for d, _, names in os.walk(os.path.join(digits_dir, split)) for f in names)
        for split in ("train", "validation")
    }
    assert (len(files["train"]), len(files["validation"])) == (1500, 297)
    assert sorted(os.listdir(os.path.join(digits_dir, "train"))) == [str(d) for d in range(10)]
    digits = load_digits()
    for i in (0, 777, 1500, 1796):
        split = "train" if i < 1500 else "validation"
        path = os.path.join(digits_dir, split, str(digits.target[i]), f"{i}.png")
        image = np.array(PIL.Image.open(path))
        assert image.shape == (32, 32, 3) and (image[..., 0] == image[..., 2]).all()
        assert np.array_equal(image[::4, ::4, 0], np.rint(digits.images[i] * 255 / 16).astype(np.uint8))
    # Streamed with labels 0..9 = the digit (class folders sort as "0".."9").
    rows = list(load_image_dataset(validation_dir=os.path.join(digits_dir, "validation"), split="validation"))
    assert sorted(r["label"] for r in rows) == sorted(digits.target[1500:].tolist())
    assert all(r["image"]["path"].split(os.sep)[-2] == str(r["label"]) for r in rows)
    # Reused as is: a second call writes nothing.
    mtime = os.path.getmtime(files["train"][0])
    monkeypatch.setattr(builtin, "_write", lambda root: pytest.fail("rewrote the built-in images"))
    assert builtin.builtin_image_dir(os.path.dirname(digits_dir)) == digits_dir
    assert os.path.getmtime(files["train"][0]) == mtime


def test_an_interrupted_build_leaves_no_folder_behind(tmp_path, monkeypatch):
    def half_then_fail(root):
        _save(root / "train" / "0" / "0.png", np.zeros((32, 32, 3), np.uint8), "RGB")
        raise KeyboardInterrupt

    monkeypatch.setattr(builtin, "_write", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        builtin.builtin_image_dir(tmp_path)
    assert os.listdir(tmp_path) == []


def test_default_args_use_the_builtin_digits(digits_dir, monkeypatch):
    monkeypatch.setattr(builtin, "builtin_image_dir", lambda cache_dir=None, name=None, split=None: digits_dir)
    train = ImageExamples(load_image_dataset_from_args(ImageDataArguments(), "train"), 32)
    first = next(iter(train))
    assert first["pixel_values"].shape == (3, 32, 32) and first["labels"] == 0
    assert sum(1 for _ in load_image_dataset_from_args(ImageDataArguments(), "validation")) == 297


def test_seeded_file_order_mixes_classes_and_keeps_labels(tmp_path):
    _grid_folder(tmp_path / "train", n=30, classes=3)
    root = str(tmp_path / "train")

    def order(seed):
        return [(r["image"]["path"], r["label"]) for r in load_image_dataset(train_dir=root, file_order_seed=seed)]

    plain, one, again, other = order(None), order(1), order(1), order(2)
    assert [p for p, _ in plain] == sorted(p for p, _ in plain)        # class after class
    assert one == again and one != other and sorted(one) == sorted(plain)
    names = sorted({os.path.basename(os.path.dirname(p)) for p, _ in plain})
    assert all(label == names.index(os.path.basename(os.path.dirname(p))) for p, label in one)
    # The first ten files of the shuffled order come from more than one class (the plain order: one).
    assert len({label for _, label in one[:10]}) > 1 and len({label for _, label in plain[:10]}) == 1
    # Held-out images are a random sample of that order, disjoint from the training stream.
    args = ImageDataArguments(train_dir=root, validation_split_images=6)
    held = [r["image"]["path"] for r in load_image_dataset_from_args(args, "validation", file_order_seed=1)]
    rest = [r["image"]["path"] for r in load_image_dataset_from_args(args, "train", file_order_seed=1)]
    assert held == [p for p, _ in one[:6]] and rest == [p for p, _ in one[6:]]


def test_has_validation_images_matches_what_the_validation_split_gives(tmp_path):
    _grid_folder(tmp_path / "train", n=6)
    own = ImageDataArguments(train_dir=str(tmp_path / "train"))
    assert not has_validation_images(own)
    with pytest.raises(DataError, match="no validation images"):
        load_image_dataset_from_args(own, "validation")
    for args in (ImageDataArguments(train_dir=str(tmp_path / "train"), validation_split_images=2),
                 ImageDataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "train")),
                 ImageDataArguments()):  # the built-in digits
        assert has_validation_images(args)
        assert next(iter(load_image_dataset_from_args(args, "validation")), None) is not None
    assert not has_validation_images(ImageDataArguments(dataset_name="someone/offline-images"))  # offline here


def test_digit_forms_cut_the_collection_sheets_from_the_label_sequence():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    forms = builtin.digit_forms(labels)
    sizes = np.bincount(forms)
    assert len(sizes) == 14 and sizes.min() >= 124 and sizes.max() <= 130 and sizes.sum() == 1797
    assert (np.diff(forms) >= 0).all()                              # contiguous, in file order
    for form in range(14):  # every form opens with its 0-9 rows (two forms lost a digit or two of them)
        header = "".join(map(str, labels[forms == form][:32]))
        assert header.count("0123456789") >= 2, (form, header)
    with pytest.raises(DataError, match="14 collection forms"):
        builtin.digit_forms(labels[::-1])


@pytest.fixture(scope="module")
def cluttered_root(tmp_path_factory) -> str:
    return os.path.dirname(builtin.builtin_image_dir(tmp_path_factory.mktemp("cache"), name="cluttered_digits"))


def test_cluttered_digits_are_deterministic_and_split_by_whole_forms(cluttered_root):
    from sklearn.datasets import load_digits

    n, renderings = 1797, builtin.RENDERINGS
    images, labels, scans = builtin.cluttered_digit_images()
    again, _, _ = builtin.cluttered_digit_images()
    assert images.shape == (n * renderings, 32, 32, 3) and np.array_equal(images, again)
    assert not np.array_equal(images, builtin.cluttered_digit_images(seed=1)[0])
    assert np.array_equal(labels, np.tile(load_digits().target, renderings))
    assert np.array_equal(scans, np.tile(np.arange(n), renderings))
    plain, _ = builtin.digit_images()
    # The digit moved and shrank or grew: far from the plain scan at its fixed place, and from its other renderings.
    assert np.abs(images[:n, ..., 0].astype(int) - plain[..., 0]).mean() > 30
    assert np.abs(images[:n, ..., 0].astype(int) - images[n:2 * n, ..., 0]).mean() > 30
    forms = builtin.digit_forms(labels[:n])
    for split, held_out in (("writers", 378), ("random", 359)):
        mask = builtin.split_indices(split, labels[:n])
        assert mask.sum() == held_out
        files = {part: [tuple(map(int, f[:-4].split("_"))) for _, _, names in
                        os.walk(os.path.join(cluttered_root, split, part)) for f in names]
                 for part in ("train", "validation")}
        # Every rendering of a scan on the side of its scan: the held-out scans' renderings only in validation.
        assert sorted(files["validation"]) == [(i, r) for i in np.flatnonzero(mask) for r in range(renderings)]
        assert sorted(files["train"]) == [(i, r) for i in np.flatnonzero(~mask) for r in range(renderings)]
        seen = {forms[i] for i, _ in files["train"]}
        if split == "writers":  # no form (hand) on both sides
            assert seen.isdisjoint({forms[i] for i, _ in files["validation"]})
        else:                  # every form on both sides
            assert seen == {forms[i] for i, _ in files["validation"]} == set(range(14))
    i = int(np.flatnonzero(builtin.split_indices("writers", labels[:n]))[0])
    for split in ("writers", "random"):
        stored = np.array(PIL.Image.open(os.path.join(cluttered_root, split, "validation" if split == "writers" else
                                                      ("validation" if builtin.split_indices("random", labels[:n])[i]
                                                       else "train"), str(labels[i]), f"{i}_2.png")))
        assert np.array_equal(stored, images[2 * n + i])


def test_data_args_choose_the_builtin_set_and_split(cluttered_root, monkeypatch):
    calls = []

    def fake_dir(cache_dir=None, name=None, split=None):
        calls.append((name, split))
        return os.path.join(cluttered_root, split or "writers")

    monkeypatch.setattr(builtin, "builtin_image_dir", fake_dir)
    args = ImageDataArguments(builtin_images="cluttered_digits", builtin_split="random")
    assert sum(1 for _ in load_image_dataset_from_args(args, "validation")) == 359 * builtin.RENDERINGS
    assert calls[-1] == ("cluttered_digits", "random")
    for kwargs, message in ((dict(builtin_images="mnist"), "unknown built-in image set 'mnist'"),
                            (dict(builtin_images="cluttered_digits", builtin_split="first_1500"), "has no split"),
                            (dict(builtin_images="digits", train_dir="x"), "drop them with --train_dir")):
        with pytest.raises(ValueError, match=message):
            ImageDataArguments(**kwargs)


def test_count_training_images_follows_held_out_and_max_train_samples(tmp_path):
    from hfssl.data.images import count_training_images

    _grid_folder(tmp_path / "train", n=12)
    root = str(tmp_path / "train")
    assert count_training_images(ImageDataArguments(train_dir=root)) == 12
    assert count_training_images(ImageDataArguments(train_dir=root, validation_split_images=5)) == 7
    assert count_training_images(ImageDataArguments(train_dir=root, max_train_samples=4)) == 4
