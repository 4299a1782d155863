"""Shared pieces for the training-loop tests: a real tokenizer and real packed text, tiny GPT-2s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hfssl.config import TrainingArguments
from hfssl.data.collate import collate_fixed
from hfssl.data.corpus import builtin_corpus_files, load_documents
from hfssl.data.loader import StatefulLoader
from hfssl.data.packing import pack_clm
from hfssl.data.tokenizer_training import train_tokenizer
from hfssl.models.presets import build_config

SEQ = 32
NO_DROPOUT = "resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE trained on the first documents of the built-in corpus (real prose)."""
    docs = load_documents(train_file=builtin_corpus_files()).take(300)
    tok = train_tokenizer((d["text"] for d in docs), tokenizer_type="bpe", vocab_size=400, model_max_length=SEQ)
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator; Accelerate keeps singletons between them."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def blocks(tokenizer) -> Callable[..., StatefulLoader]:
    """``blocks(batch_size, documents=...)`` -> a StatefulLoader of packed real-text blocks."""

    def make(batch_size: int, documents: int = 200, skip: int = 0, seq: int = SEQ) -> StatefulLoader:
        docs = load_documents(train_file=builtin_corpus_files()).skip(skip).take(documents)
        return StatefulLoader(pack_clm(docs, tokenizer, seq), batch_size=batch_size, collate_fn=collate_fixed)

    return make


@pytest.fixture
def tiny_gpt2(tokenizer) -> Callable[..., torch.nn.Module]:
    def make(overrides: str | None = NO_DROPOUT, seed: int = 0):
        config = build_config("gpt2", "tiny", vocab_size=len(tokenizer), max_position_embeddings=SEQ,
                              config_overrides=overrides, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)

    return make


@pytest.fixture
def train_args(tmp_path: Path) -> Callable[..., TrainingArguments]:
    def make(**overrides) -> TrainingArguments:
        values = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                      learning_rate=3e-3, warmup_steps=0, lr_scheduler_type="constant", logging_steps=1,
                      checkpointing_steps=0, report_to="none", seed=0)
        values.update(overrides)
        return TrainingArguments(**values)

    return make
