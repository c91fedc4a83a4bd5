"""Local LoRA SFT: teach the adapter the replies users ended up with.

A readable recipe in the torchtune spirit: chat-formatted prompt, loss on the
reply tokens only, AdamW on the LoRA weights, a fixed number of steps drawn
from seeded shuffles of the examples.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.store_api import TrainingExample
from fedloop.shared.settings import TrainSection

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """`prompt` as a user turn in the model's chat template, ready for the assistant's reply."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def _encode(tokenizer: PreTrainedTokenizerBase, example: TrainingExample, max_len: int) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(chat_prompt(tokenizer, example.prompt), add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + reply_ids)[-max_len:]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + reply_ids)[-max_len:]
    return ids, labels


def _batch(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    input_ids = [ids + [pad_id] * (width - len(ids)) for ids, _ in encoded]
    labels = [lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in encoded]
    mask = [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded]
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask)}


def train_sft(model: PeftModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[TrainingExample],
              settings: TrainSection, seed: int) -> float:
    """Run `settings.steps` optimiser steps of SFT on `examples`; returns the mean loss."""
    if not examples:
        raise ValueError("no training examples: record drafts and outcomes before training")
    torch.manual_seed(seed)
    order = random.Random(seed)
    encoded = [_encode(tokenizer, e, settings.max_seq_len) for e in examples]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    model.train()
    queue: list[int] = []
    losses = []
    for step in range(settings.steps):
        if len(queue) < settings.batch_size:
            refill = list(range(len(encoded)))
            order.shuffle(refill)
            queue.extend(refill * max(1, settings.batch_size // len(refill) + 1))
        picked, queue = queue[: settings.batch_size], queue[settings.batch_size :]
        loss = model(**_batch([encoded[i] for i in picked], tokenizer.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        log.info("train step %d/%d loss %.4f", step + 1, settings.steps, losses[-1])
    model.eval()
    return sum(losses) / len(losses)


@torch.no_grad()
def generate_replies(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy drafts for `prompts`, generated in batches."""
    model.eval()
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [chat_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        replies.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return replies
