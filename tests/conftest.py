"""Shared fixtures: a tiny model built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM with tokenizer and chat template, built in seconds."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
