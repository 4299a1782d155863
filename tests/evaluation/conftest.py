"""Fixtures for the GLUE evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluation.glue_fixtures import minilm_path, write_tiny_bert


@pytest.fixture(scope="session")
def minilm() -> str:
    """all-MiniLM-L6-v2: a real pretrained BertModel directory with its tokenizer (offline, pip package)."""
    return minilm_path()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm: str) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm)
