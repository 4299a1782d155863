"""BERT pretraining objective: masked LM (80/10/10, optionally whole-word) + NSP or SOP.

The backbone is a stock ``BertForPreTraining``; this objective only decides which tokens
to corrupt and how the loss is computed. For speed it uses *sparse prediction*: the
encoder runs on the whole batch, but the MLM head (transform + vocab-sized decoder, the
most expensive matmul for small models) runs only on the ~15% of positions that carry a
label. The same head modules (``model.cls.predictions``, ``model.cls.seq_relationship``)
are used, so the trained weights export unchanged and ``AutoModelForPreTraining`` /
``AutoModelForMaskedLM`` load them.

The predicted positions travel as ``masked_lm_positions`` (batch, slots), BERT's original feature
name: ``prepare_batch`` knows the masking's per-row bound, so the head is a static-shape gather with
no device-to-host sync, which CUDA graphs and ``torch.compile`` need (boolean indexing would sync
every step and give the compiler a new shape every step).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertForPreTraining, PreTrainedModel

from hfssl.errors import ConfigError
from hfssl.models.export import verify_reload
from hfssl.objectives.base import Objective, ObjectiveOutput
from hfssl.objectives.masking import (
    IGNORE_INDEX,
    mask_tokens,
    max_targets_per_row,
    prediction_positions,
    random_token_candidates,
    select_positions,
    word_start_table,
)

__all__ = [
    "IGNORE_INDEX",
    "BertPretrainingObjective",
    "mask_tokens",
    "max_targets_per_row",
    "prediction_positions",
    "random_token_candidates",
    "select_positions",
    "sparse_mlm_loss",
    "unwrap_model",
    "verify_masked_lm_export",
    "word_start_table",
]

POSITIONS_KEY = "masked_lm_positions"


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or (
            hasattr(model, "module") and isinstance(model.module, PreTrainedModel)
        ):
            model = model.module
        else:
            return model


def sparse_mlm_loss(predictions: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM loss sum and number of correct predictions, with the head run only at ``positions``.

    ``hidden`` is (batch, seq, hidden), ``labels`` (batch, seq) with -100 where nothing is predicted,
    ``positions`` (batch, slots) from :func:`prediction_positions`; slots whose label is -100 add
    nothing (ignored by the loss and the accuracy). Shapes are static and nothing syncs.
    """
    index = positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    logits = predictions(hidden.gather(1, index)).float()       # (batch, slots, vocab)
    targets = labels.gather(1, positions)                       # -100 in unused slots
    loss_sum = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
    correct = ((logits.argmax(-1) == targets) & (targets != IGNORE_INDEX)).sum()
    return loss_sum, correct


class BertPretrainingObjective(Objective):
    """MLM + (optional) sentence-pair classification on ``BertForPreTraining``.

    Batches come from the collator with ``input_ids``, ``attention_mask`` and, for pairs,
    ``token_type_ids`` and ``next_sentence_label`` (0 = B follows A / in order, 1 = random /
    swapped). Without ``next_sentence_label`` (``nsp=False``: packed RoBERTa-style segments)
    only the MLM term is trained.

    ``max_predictions_per_seq`` caps the targets per row (as BERT's flag of that name); by default
    the cap is only the masking's own ``round(p * width)``, read from the batch width.
    """

    model_class = BertForPreTraining
    primary_term = "mlm"

    def __init__(
        self,
        *,
        mask_token_id: int,
        special_token_ids: Iterable[int],
        vocab_size: int,
        mlm_probability: float = 0.15,
        nsp: bool = True,
        word_starts: torch.Tensor | None = None,
        max_predictions_per_seq: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"--mlm_probability must be in (0, 1), got {mlm_probability}")
        if max_predictions_per_seq is not None and max_predictions_per_seq < 1:
            raise ConfigError(f"--max_predictions_per_seq must be at least 1, got {max_predictions_per_seq}")
        self.max_predictions_per_seq = max_predictions_per_seq
        self.mask_token_id = int(mask_token_id)
        self.mlm_probability = mlm_probability
        self.nsp = nsp
        self.vocab_size = vocab_size
        special = sorted({int(i) for i in special_token_ids if i is not None})
        # Buffers follow ``.to(device)``; not persistent because they derive from the tokenizer.
        self.register_buffer("special_ids", torch.tensor(special, dtype=torch.long), persistent=False)
        self.register_buffer("random_token_ids", random_token_candidates(vocab_size, special), persistent=False)
        self.register_buffer("word_start_lookup", word_starts, persistent=False)
        self._mlm_loss = sparse_mlm_loss

    def compile_regions(self, **compile_kwargs) -> None:
        """Compile the sparse MLM head (gather, transform, vocab decoder, cross-entropy) as one graph.

        For regional compilation, where only the encoder layers are compiled and the head would run
        eager: its shapes are static (batch, slots), so it compiles with ``fullgraph=True``, and the
        float32 upcast of the vocab logits fuses into the loss instead of being written out.
        """
        self._mlm_loss = torch.compile(sparse_mlm_loss, fullgraph=True, **compile_kwargs)

    @classmethod
    def from_tokenizer(cls, tokenizer, *, vocab_size: int | None = None, mlm_probability: float = 0.15,
                       nsp: bool = True, whole_word_masking: bool = False,
                       max_predictions_per_seq: int | None = None) -> BertPretrainingObjective:
        """Build from a (fast) BERT tokenizer; ``vocab_size`` defaults to ``len(tokenizer)``.

        Raises ``ConfigError`` for a tokenizer without a mask token, or without ``##`` pieces when
        ``whole_word_masking`` is asked for.
        """
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"the tokenizer ({type(tokenizer).__name__}) has no mask token; MLM needs one "
                              "such as [MASK]: use a BERT/WordPiece tokenizer")
        vocab_size = vocab_size or len(tokenizer)
        try:
            starts = word_start_table(tokenizer) if whole_word_masking else None
        except ValueError as exc:
            raise ConfigError(f"--whole_word_masking: {exc}") from None
        if starts is not None and starts.numel() < vocab_size:
            starts = torch.cat([starts, starts.new_ones(vocab_size - starts.numel())])
        return cls(mask_token_id=tokenizer.mask_token_id, special_token_ids=tokenizer.all_special_ids,
                   vocab_size=vocab_size, mlm_probability=mlm_probability, nsp=nsp, word_starts=starts,
                   max_predictions_per_seq=max_predictions_per_seq)

    def _buffers_to(self, device: torch.device) -> None:
        # The loop may not move the objective; moving small buffers lazily is cheap and idempotent.
        if self.random_token_ids.device != device:
            self.to(device)

    def special_tokens_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """True at special tokens and padding: positions that are never masked."""
        input_ids = batch["input_ids"]
        special = torch.isin(input_ids, self.special_ids)
        if "attention_mask" in batch:
            special |= batch["attention_mask"] == 0
        return special

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        input_ids = batch["input_ids"]
        self._buffers_to(input_ids.device)
        word_starts = None
        if self.word_start_lookup is not None:
            word_starts = self.word_start_lookup[input_ids]
        masked, labels = mask_tokens(
            input_ids,
            mask_token_id=self.mask_token_id,
            random_token_ids=self.random_token_ids,
            special_tokens_mask=self.special_tokens_mask(batch),
            mlm_probability=self.mlm_probability,
            word_starts=word_starts,
            generator=generator,
            max_predictions_per_seq=self.max_predictions_per_seq,
        )
        prepared = dict(batch)
        prepared["input_ids"] = masked
        prepared["labels"] = labels
        # The masking's bound holds by construction, so these slots hold every target of every row.
        slots = max_targets_per_row(input_ids.shape[1], self.mlm_probability, self.max_predictions_per_seq)
        prepared[POSITIONS_KEY] = prediction_positions(labels, slots)
        return prepared

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        counts = {"mlm": (labels != IGNORE_INDEX).sum()}
        if self._uses_nsp(batch):
            # A device fill, not torch.tensor(int, device=...): that copies from the host and syncs.
            counts["nsp"] = labels.new_full((), labels.shape[0])
        return counts

    def _uses_nsp(self, batch: dict[str, torch.Tensor]) -> bool:
        if self.nsp and "next_sentence_label" not in batch:
            raise ConfigError("NSP/SOP needs sentence-pair batches with next_sentence_label; use --no_nsp "
                             "for packed single segments")
        return self.nsp

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        bert_model = unwrap_model(model)
        outputs = bert_model.bert(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
        )
        labels = batch["labels"]
        positions = batch.get(POSITIONS_KEY)
        if positions is None:
            # Labels made elsewhere (not by prepare_batch): their per-row count is unknown, so size the
            # slots from the data. Exact, at the price of one host sync; the training path never gets here.
            slots = max(1, int((labels != IGNORE_INDEX).sum(1).max().item()))
            positions = prediction_positions(labels, min(slots, labels.shape[1]))
        # Sparse prediction: the vocab projection only where there is something to predict.
        mlm_loss, mlm_correct = self._mlm_loss(bert_model.cls.predictions, outputs.last_hidden_state, labels,
                                               positions)
        loss_sums = {"mlm": mlm_loss}
        metric_sums = {"mlm/accuracy": mlm_correct}
        # The pooler ran once inside bert(); the NSP head is one (hidden x 2) matmul on its output.
        nsp_logits = bert_model.cls.seq_relationship(outputs.pooler_output).float()
        if self._uses_nsp(batch):
            nsp_labels = batch["next_sentence_label"].view(-1)
            loss_sums["nsp"] = F.cross_entropy(nsp_logits, nsp_labels, reduction="sum")
            metric_sums["nsp/accuracy"] = (nsp_logits.argmax(-1) == nsp_labels).sum()
        else:
            # MLM only: the pooler and NSP head still join the graph with weight 0, so DDP (which by
            # default requires every parameter to get a gradient) does not stall on unused weights.
            loss_sums["mlm"] = loss_sums["mlm"] + 0.0 * nsp_logits.sum()
        return ObjectiveOutput(loss_sums=loss_sums, metric_sums=metric_sums)


def verify_masked_lm_export(output_dir: str, model: BertForPreTraining, atol: float = 1e-5) -> float:
    """Reload ``output_dir`` with ``AutoModelForMaskedLM`` and check its vocabulary logits equal ``model``'s
    MLM head output (the export's ``cls.predictions`` weights are what BertForMaskedLM uses).

    Returns the max absolute difference; raises ``HfsslError`` above ``atol``.
    """
    from transformers import AutoModelForMaskedLM

    return verify_reload(output_dir, model, auto_class=AutoModelForMaskedLM, atol=atol,
                         reference_output=lambda inputs: model(**inputs).prediction_logits)
