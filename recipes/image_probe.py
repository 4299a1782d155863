"""Evaluate a pretrained image encoder (e.g. a ViT export) on a labelled image set: linear probe, fine-tune or LP-FT.

    python recipes/image_probe.py --model_name_or_path out/vit --train_dir data/train \\
        --validation_dir data/val --output_dir out/vit-probe
    python recipes/image_probe.py --model_name_or_path out/vit --builtin_images cluttered_digits --seeds 1,2,3
    python recipes/image_probe.py --model_name_or_path out/vit --dataset_name user/images --feature mean
    python recipes/image_probe.py --model_name_or_path out/vit --mode finetune --num_train_epochs 5 \\
        --learning_rate 1e-3 --seeds 1,2,3 --output_dir out/vit-ft
    python recipes/image_probe.py --model_name_or_path out/vit --mode lp_ft --output_dir out/vit-lpft

Folders hold one sub-folder per class (``train_dir/<class>/<image>``). ``--mode linear_probe`` (default; ``probe``
is the old name) freezes the encoder: linear probe and kNN on features taken with the checkpoint's own image
processor, beside the raw-pixels and random-init baselines (``--seeds``: one random init per seed, mean ± std;
``--baselines none`` skips them). ``--mode finetune`` trains the whole encoder with a new classification head
(random resized crop + flip on the training images); ``--mode lp_ft`` starts that from the linear probe's head.
With no data flags it uses a built-in set: the handwritten digits (the default data of
``recipes/vit_pretext.py``: 1,500 train / 297 validation images, 10 classes) or ``--builtin_images
cluttered_digits`` (``--builtin_split writers|random``). Writes ``output_dir/results.json`` (accuracies in 0-1)
and prints a table (x100).
"""

from __future__ import annotations

import os

from hfssl.cli import main_entry, parse_args
from hfssl.evaluation.args import check_model_path
from hfssl.evaluation.image_finetune import ImageFinetuneArguments
from hfssl.evaluation.image_probe import ImageProbeArguments, check_data_selection


@main_entry
def main(args: list[str] | None = None) -> dict:
    probe_args, ft_args = parse_args([ImageProbeArguments, ImageFinetuneArguments], args)
    if not (probe_args.train_dir or probe_args.validation_dir or probe_args.dataset_name):
        from hfssl.data.builtin_images import builtin_image_dir

        root = builtin_image_dir(name=probe_args.builtin_images, split=probe_args.builtin_split)
        probe_args.train_dir, probe_args.validation_dir = os.path.join(root, "train"), os.path.join(root, "validation")
    # Cheap checks first: a typo should not wait for torch and datasets to import.
    check_data_selection(probe_args)
    check_model_path(probe_args.model_name_or_path)
    if probe_args.mode == "linear_probe":
        from hfssl.evaluation.image_probe import run

        return run(probe_args)
    from hfssl.evaluation.image_finetune import run_finetune

    return run_finetune(probe_args, ft_args)


if __name__ == "__main__":
    main()
