"""Pretrain a BERT (masked LM 80/10/10 + next sentence prediction) as a stock ``BertForPreTraining``.

    accelerate launch recipes/bert_mlm.py --train_file data/*.txt --tokenizer_name tok/ \
        --model_size base --max_seq_length 128 --output_dir out

``--no_nsp`` trains MLM only on packed full-length segments (RoBERTa style), ``--sop`` swaps NSP for
ALBERT's sentence order prediction, ``--whole_word_masking`` masks all WordPiece pieces of a word
together. With no data flags it trains on the built-in corpus (a WordPiece tokenizer is trained first).
``--model_name_or_path`` continues pretraining a BERT checkpoint (a bare ``BertModel`` gets fresh heads).
The export loads with ``AutoModelForPreTraining``, ``AutoModelForMaskedLM``, ``AutoModel`` and ``fill-mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Only light modules before the arguments are parsed: --help and flag errors answer without loading torch.
from hfssl.cli import main_entry, parse_args
from hfssl.config import DataArguments, ModelArguments, TrainingArguments, require_max_steps, with_defaults


@dataclass
class BertArguments:
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens to predict."})
    whole_word_masking: bool = field(default=False, metadata={"help": "Mask all pieces of a word together."})
    no_nsp: bool = field(default=False, metadata={"help": "MLM only, on packed full-length segments."})
    sop: bool = field(default=False, metadata={"help": "Sentence order prediction instead of NSP."})
    short_seq_prob: float = field(default=0.1, metadata={"help": "Share of shorter pairs (as original BERT)."})
    max_predictions_per_seq: int | None = field(default=None, metadata={
        "help": "Cap on the masked tokens per sequence (BERT's flag; default: round(mlm_probability x length))."})

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"--mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.max_predictions_per_seq is not None and self.max_predictions_per_seq < 1:
            raise ValueError(f"--max_predictions_per_seq must be at least 1, got {self.max_predictions_per_seq}")
        if self.no_nsp and self.sop:
            raise ValueError("--sop needs sentence pairs; it cannot be combined with --no_nsp")


# Defaults: a short but real pretraining run on the built-in corpus on a laptop CPU.
BertModelArguments = with_defaults(ModelArguments, model_type="bert", model_size="mini", vocab_size=8000)
# 5% of the text is held out for validation (as run_mlm.py), in passages, so one book still trains.
BertDataArguments = with_defaults(DataArguments, validation_split_percentage=5)
BertTrainingArguments = with_defaults(TrainingArguments, max_steps=250, learning_rate=1e-3, warmup_steps=25,
                                      per_device_train_batch_size=32, logging_steps=25, eval_steps=125,
                                      checkpointing_steps=125, max_eval_batches=20, output_dir="out/bert_mlm")


@main_entry
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args, bert_args = parse_args(
        [BertModelArguments, BertDataArguments, BertTrainingArguments, BertArguments], argv)
    require_max_steps(args)
    import functools

    import transformers
    from transformers import AutoModelForPreTraining, pipeline

    from hfssl.data.collate import collate_padded
    from hfssl.data.packing import pack_mlm_segments
    from hfssl.data.sentence_pairs import nsp_pairs
    from hfssl.errors import ConfigError
    from hfssl.objectives.mlm import BertPretrainingObjective, verify_masked_lm_export
    from hfssl.training import make_accelerator, train
    from hfssl.training.recipe_utils import build_loaders, build_model, resolve_tokenizer

    accelerator = make_accelerator(args)
    tokenizer = resolve_tokenizer(model_args, data_args, args.output_dir, accelerator, tokenizer_type="wordpiece")
    seq_len = data_args.max_seq_length

    def examples(docs):
        if bert_args.no_nsp:
            return pack_mlm_segments(docs, tokenizer, seq_len)
        return nsp_pairs(docs, tokenizer, seq_len, short_seq_prob=bert_args.short_seq_prob, sop=bert_args.sop,
                         seed=args.seed)

    # The data first: a missing file is reported before the model is built.
    collate = functools.partial(collate_padded, pad_token_id=tokenizer.pad_token_id, omit_full_mask=True)
    train_loader, eval_factory = build_loaders(data_args, args, examples, collate_fn=collate,
                                               accelerator=accelerator, tokenizer=tokenizer)
    model = build_model(model_args, tokenizer, max_seq_length=data_args.max_seq_length, default_model_type="bert",
                        auto_class=AutoModelForPreTraining)
    if len(tokenizer) != model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                          f"{model.config.vocab_size}; pass the tokenizer the model was trained with")
    objective = BertPretrainingObjective.from_tokenizer(
        tokenizer, vocab_size=model.config.vocab_size, mlm_probability=bert_args.mlm_probability,
        nsp=not bert_args.no_nsp, whole_word_masking=bert_args.whole_word_masking,
        max_predictions_per_seq=bert_args.max_predictions_per_seq)
    result = train(objective=objective, model=model, train_loader=train_loader, args=args,
                   eval_loader_factory=eval_factory, processing_class=tokenizer,
                   configs_to_record=(model_args, data_args, args, bert_args), accelerator=accelerator)
    if accelerator.is_main_process:
        transformers.logging.set_verbosity_error()  # loading head-less classes reports unused heads: expected
        verify_masked_lm_export(result.export_dir, result.model)  # the trained weights, whole under FSDP too
        fill = pipeline("fill-mask", model=result.export_dir, tokenizer=result.export_dir, device=-1)
        guesses = fill(f"The {tokenizer.mask_token} of the function.", top_k=3)
        summary = {k: round(v, 4) for k, v in result.metrics.items() if "loss" in k or "accuracy" in k}
        print(f"done: step {result.global_step}, {summary}, export in {result.export_dir}")
        print(f"fill-mask: {[g['token_str'] for g in guesses]}")


if __name__ == "__main__":
    main()
