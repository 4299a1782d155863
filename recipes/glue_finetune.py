"""Fine-tune (or linear-probe, or LP-FT) a pretrained encoder on GLUE or a custom task and report dev metrics.

    accelerate launch recipes/glue_finetune.py --model_name_or_path DIR --task_name sst2 --output_dir out
    python recipes/glue_finetune.py --model_name_or_path DIR --task_name all --glue_dir glue_data \\
        --mode lp_ft --seeds 1,2,3 --output_dir out

Writes ``output_dir/results.json`` (raw 0-1 metric values) and prints a BERT-paper style table (x100).
"""

from __future__ import annotations

from hfssl.cli import main_entry, parse_args
from hfssl.evaluation.args import (
    FinetuneArguments,
    GlueDataArguments,
    check_model_path,
    check_task_selection,
    check_tokenizer_path,
)


@main_entry
def main(args: list[str] | None = None) -> dict:
    model_args, data_args = parse_args([FinetuneArguments, GlueDataArguments], args)
    # Cheap checks first: a typo should not wait for torch and datasets to import.
    check_task_selection(data_args)
    check_model_path(model_args.model_name_or_path)
    check_tokenizer_path(model_args.tokenizer_name)
    from hfssl.evaluation.runner import run

    return run(model_args, data_args)


if __name__ == "__main__":
    main()
