"""Linear probe and kNN of a pretrained image encoder (e.g. a ViT export) on a labelled image set.

    python recipes/image_probe.py --model_name_or_path out/vit --train_dir data/train \\
        --validation_dir data/val --output_dir out/vit-probe
    python recipes/image_probe.py --model_name_or_path out/vit --dataset_name user/images \\
        --feature mean --init random --output_dir out/random-probe

Folders hold one sub-folder per class (``train_dir/<class>/<image>``). The encoder is frozen; features are
taken with the checkpoint's own image processor. With no data flags it probes on the built-in handwritten
digits (the default data of ``recipes/vit_pretext.py``: 1,500 train / 297 validation images, 10 classes). Writes ``output_dir/results.json`` (accuracies in 0-1)
and prints a table (x100).
"""

from __future__ import annotations

import os

from hfssl.cli import main_entry, parse_args
from hfssl.evaluation.args import check_model_path
from hfssl.evaluation.image_probe import ImageProbeArguments, check_data_selection


@main_entry
def main(args: list[str] | None = None) -> dict:
    (probe_args,) = parse_args([ImageProbeArguments], args)
    if not (probe_args.train_dir or probe_args.validation_dir or probe_args.dataset_name):
        from hfssl.data.builtin_images import builtin_image_dir

        root = builtin_image_dir()
        probe_args.train_dir, probe_args.validation_dir = os.path.join(root, "train"), os.path.join(root, "validation")
    # Cheap checks first: a typo should not wait for torch and datasets to import.
    check_data_selection(probe_args)
    check_model_path(probe_args.model_name_or_path)
    from hfssl.evaluation.image_probe import run

    return run(probe_args)


if __name__ == "__main__":
    main()
