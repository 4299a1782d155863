"""Pretrain a GPT-2 (or Llama) causal language model on packed text blocks.

    accelerate launch recipes/gpt_clm.py --train_file data/*.txt --tokenizer_name tok/ \
        --model_size small --max_seq_length 1024 --output_dir out

With no data flags it trains on the built-in corpus (a byte-level BPE tokenizer is trained first),
with defaults sized for a few minutes on a laptop CPU. The export in ``--output_dir`` loads with
``AutoModelForCausalLM`` / ``AutoModel`` and generates with ``model.generate``. Several processes:
``accelerate launch --multi_gpu`` on GPUs; on CPUs ``torchrun --nproc_per_node N recipes/gpt_clm.py``
(``accelerate launch --cpu --num_processes N`` starts a single process).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Only light modules before the arguments are parsed: --help and flag errors answer without loading torch.
from hfssl.cli import main_entry, parse_args
from hfssl.config import DataArguments, ModelArguments, TrainingArguments, require_max_steps, with_defaults

# Defaults: a real (small) pretraining run on the built-in corpus in ~3 minutes on 2 CPU cores.
# The vocabulary is padded to a multiple of 64 for training (GPT-2's 50257 -> 50304, as nanoGPT and
# llm.c do): GPU matmul kernels need aligned shapes, measured 332k -> 395k tokens/s on an H100 for
# GPT-2 124M (issue 4). A no-op when the size already divides (the default 2048), invisible in the export.
GPTModelArguments = with_defaults(ModelArguments, model_type="gpt2", model_size="mini", vocab_size=2048,
                                  pad_vocab_size_to_multiple_of=64)
# 5% of the text is held out for validation (as run_clm.py), in passages, so one book still trains.
GPTDataArguments = with_defaults(DataArguments, validation_split_percentage=5, shuffle_buffer_size=256)
GPTTrainingArguments = with_defaults(TrainingArguments, max_steps=300, learning_rate=1e-3, warmup_steps=30,
                                     logging_steps=10, eval_steps=150, checkpointing_steps=150,
                                     max_eval_batches=20, output_dir="out/gpt_clm")


@dataclass
class CLMArguments:
    loss_chunk_size: int = field(
        default=2048,
        metadata={"help": "Rows of LM-head logits computed at once (each chunk recomputed in backward, so "
                          "only one chunk of float32 logits is alive); larger than batch x seq = one chunk, "
                          "no recomputation (more memory, fewer FLOPs)."},
    )

    def __post_init__(self) -> None:
        if self.loss_chunk_size < 1:
            raise ValueError("--loss_chunk_size must be positive")


@main_entry
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args, clm_args = parse_args(
        [GPTModelArguments, GPTDataArguments, GPTTrainingArguments, CLMArguments], argv)
    require_max_steps(args)
    from transformers import AutoModelForCausalLM

    from hfssl.data.collate import collate_fixed
    from hfssl.data.packing import pack_clm
    from hfssl.objectives.clm import CausalLMObjective
    from hfssl.training import make_accelerator, train
    from hfssl.training.recipe_utils import build_loaders, build_model, generate_sample, resolve_tokenizer

    accelerator = make_accelerator(args)
    tokenizer = resolve_tokenizer(model_args, data_args, args.output_dir, accelerator, tokenizer_type="bpe")

    def blocks(docs):
        return pack_clm(docs, tokenizer, data_args.max_seq_length, document_boundaries=data_args.document_boundaries)

    # The data first: a missing file is reported before the model is built.
    train_loader, eval_factory = build_loaders(data_args, args, blocks, collate_fn=collate_fixed,
                                               accelerator=accelerator, tokenizer=tokenizer)
    model = build_model(model_args, tokenizer, max_seq_length=data_args.max_seq_length, default_model_type="gpt2",
                        auto_class=AutoModelForCausalLM)
    result = train(objective=CausalLMObjective(loss_chunk_size=clm_args.loss_chunk_size), model=model, train_loader=train_loader, args=args,
                   eval_loader_factory=eval_factory, processing_class=tokenizer,
                   configs_to_record=(model_args, data_args, args, clm_args), accelerator=accelerator)
    if accelerator.is_main_process:
        reloaded = AutoModelForCausalLM.from_pretrained(result.export_dir)
        summary = {k: round(v, 4) for k, v in result.metrics.items() if "loss" in k or "perplexity" in k}
        print(f"done: step {result.global_step}, {summary}, export in {result.export_dir}")
        print(f"sample: {generate_sample(reloaded, tokenizer)!r}")


if __name__ == "__main__":
    main()
