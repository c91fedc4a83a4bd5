"""Training data: the pool mix, the curriculum, and token batches with reply-only labels."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from fedloop.client.store.api import ChatMessage, TrainingExample
from fedloop.client.train.generate import chat_text
from fedloop.shared.settings import TrainSection

IGNORE_INDEX = -100


@dataclass(frozen=True)
class WeightedExample:
    """A training example with its final loss weight: pool weight x sample weight."""

    example: TrainingExample
    weight: float


def mix(examples: Sequence[TrainingExample], settings: TrainSection) -> list[WeightedExample]:
    """Weight each example by its pool's configured weight; drop those that end at weight 0."""
    weighted = [WeightedExample(e, settings.pool_weight(e.pool) * e.weight) for e in examples]
    return [w for w in weighted if w.weight > 0]


def curriculum(
    examples: Sequence[WeightedExample], thresholds: Sequence[float], seed: int
) -> list[list[WeightedExample]]:
    """Stages of growing size: stage k holds every example whose sample confidence is >= thresholds[k].

    Confidence is the curated sample weight (before pool weighting), so training
    starts from what users clearly endorsed and adds marginal samples later.
    Each stage is shuffled with `seed`; empty stages are dropped.
    """
    rng = random.Random(seed)
    stages = []
    for threshold in thresholds:
        stage = [e for e in examples if e.example.weight >= threshold]
        rng.shuffle(stage)
        if stage:
            stages.append(stage)
    return stages


def encode(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage], reply: str, max_len: int
) -> tuple[list[int], list[int]]:
    """Token ids of the conversation as served + reply (+ end of turn) and labels that score the reply only
    (left-truncated)."""
    prompt_ids = tokenizer(chat_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + reply_ids)[-max_len:]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + reply_ids)[-max_len:]
    return ids, labels


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, labels and attention mask."""
    width = max(len(ids) for ids, _ in encoded)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in encoded]),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in encoded]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded]),
    }
