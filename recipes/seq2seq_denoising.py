"""Denoising sequence-to-sequence pretraining: BART (text infilling, sentence permutation) or T5 (span corruption).

    accelerate launch recipes/seq2seq_denoising.py --train_file data/*.txt --model_type bart \
        --noise text_infilling,sentence_permutation --model_size base --max_seq_length 512 --output_dir out
    python recipes/seq2seq_denoising.py --model_type t5 --output_dir out/t5     # span corruption

Stock ``BartForConditionalGeneration`` / ``T5ForConditionalGeneration`` from a size preset or
``--model_name_or_path``. With no data flags it trains on the built-in corpus, and with no
``--tokenizer_name`` a tokenizer is trained first (BART: byte-level BPE with ``<mask>``; T5: Unigram with
``<extra_id_N>`` sentinels). The export loads with ``AutoModelForSeq2SeqLM`` and fills masked spans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Only light modules before the arguments are parsed: --help and flag errors answer without loading torch.
from hfssl.cli import main_entry, parse_args
from hfssl.config import DataArguments, ModelArguments, TrainingArguments, require_max_steps, with_defaults

NOISES = ("text_infilling", "sentence_permutation", "span_corruption")


@dataclass
class DenoisingArguments:
    noise: Optional[str] = field(default=None, metadata={
        "help": f"Comma-separated corruptions: {', '.join(NOISES)}. BART's two combine; default: text_infilling "
                "for --model_type bart, span_corruption for t5 (a T5 noise alone selects --model_type t5)."})
    mask_ratio: float = field(default=0.3, metadata={"help": "text_infilling: share of tokens masked (BART: 0.3)."})
    poisson_lambda: float = field(default=3.0, metadata={"help": "text_infilling: mean span length (Poisson)."})
    noise_density: float = field(default=0.15, metadata={"help": "span_corruption: share of tokens in spans (T5)."})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "span_corruption: mean span length."})
    loss_chunk_size: Optional[int] = field(default=None, metadata={
        "help": "Decoder rows whose LM-head logits exist at once (fused loss and gradient per chunk); default: "
                "about 1M logits on CPU, 32M on GPU."})

    def __post_init__(self) -> None:
        names = [n.strip() for n in (self.noise or "").split(",") if n.strip()]
        if self.noise is not None and (not names or any(n not in NOISES for n in names)):
            raise ValueError(f"--noise {self.noise!r}: choose from {', '.join(NOISES)}")
        if not 0.0 < self.mask_ratio < 1.0 or not 0.0 < self.noise_density < 1.0:
            raise ValueError("--mask_ratio and --noise_density must be in (0, 1)")
        if self.poisson_lambda <= 0 or self.mean_noise_span_length < 1:
            raise ValueError("--poisson_lambda must be positive and --mean_noise_span_length at least 1")


# Defaults: a short real pretraining run on the built-in corpus on a laptop CPU.
Seq2SeqModelArguments = with_defaults(ModelArguments, model_size="tiny", vocab_size=4096)
Seq2SeqDataArguments = with_defaults(DataArguments, validation_split_percentage=5, shuffle_buffer_size=256)
Seq2SeqTrainingArguments = with_defaults(TrainingArguments, max_steps=600, learning_rate=2e-3, warmup_steps=60,
                                         per_device_train_batch_size=16, logging_steps=25, eval_steps=200,
                                         checkpointing_steps=300, max_eval_batches=20,
                                         output_dir="out/seq2seq_denoising")


@main_entry
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args, noise_args = parse_args(
        [Seq2SeqModelArguments, Seq2SeqDataArguments, Seq2SeqTrainingArguments, DenoisingArguments], argv)
    require_max_steps(args)
    import transformers
    from transformers import AutoModelForSeq2SeqLM

    from hfssl.logging import get_logger
    from hfssl.objectives.seq2seq import (
        DenoisingObjective,
        choose_family,
        decoder_start_token_id,
        fill_masked_spans,
        verify_seq2seq_export,
    )
    from hfssl.training import make_accelerator, train
    from hfssl.training.recipe_utils import build_loaders, build_model, resolve_tokenizer

    family = choose_family(model_args.model_type, noise_args.noise)
    accelerator = make_accelerator(args)
    tokenizer = resolve_tokenizer(model_args, data_args, args.output_dir, accelerator, tokenizer_type=family)
    model = build_model(model_args, tokenizer, max_seq_length=data_args.max_seq_length, default_model_type=family,
                        auto_class=AutoModelForSeq2SeqLM,
                        config_kwargs={"decoder_start_token_id": decoder_start_token_id(family, tokenizer)})
    objective = DenoisingObjective.from_tokenizer(
        tokenizer, model, noise_args.noise, mask_ratio=noise_args.mask_ratio, poisson_lambda=noise_args.poisson_lambda,
        noise_density=noise_args.noise_density, mean_noise_span_length=noise_args.mean_noise_span_length,
        loss_chunk_size=noise_args.loss_chunk_size)
    examples, collate, description = objective.data_pipeline(tokenizer, data_args.max_seq_length)
    get_logger("seq2seq_denoising").info("%s", description)
    train_loader, eval_factory = build_loaders(data_args, args, examples, collate_fn=collate,
                                               accelerator=accelerator, tokenizer=tokenizer)
    result = train(objective=objective, model=model, train_loader=train_loader, args=args,
                   eval_loader_factory=eval_factory, processing_class=tokenizer, accelerator=accelerator,
                   configs_to_record=(model_args, data_args, args, noise_args), verify_fn=verify_seq2seq_export)
    if accelerator.is_main_process:
        transformers.logging.set_verbosity_error()  # quiet reload
        reloaded = AutoModelForSeq2SeqLM.from_pretrained(result.export_dir)
        hole = tokenizer.mask_token if objective.family == "bart" else "<extra_id_0>"
        summary = {k: round(v, 4) for k, v in result.metrics.items() if "loss" in k or "accuracy" in k}
        print(f"done: step {result.global_step}, {summary}, export in {result.export_dir}")
        print(f"fill: {fill_masked_spans(reloaded, tokenizer, f'The {hole} of the function.')[0]!r}")


if __name__ == "__main__":
    main()
