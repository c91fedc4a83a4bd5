"""The local training recipe: SFT, DPO, or SFT then DPO, as the config says.

Read it top to bottom (torchtune style): mix the pools, order by curriculum,
train with reward-weighted SFT, then optionally DPO on (user's final > rejected
draft) pairs against the model as it was before DPO. With `proximal_mu` > 0
every step also pays FedProx's proximal term (mu/2)·‖w − w_global‖² on the
adapter, which keeps a tenant with unusual data close to the global version.
Every knob is in `[train]` of the TOML (see TrainSection); the seed fixes data
order and init.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from fedloop.client.store_api import TrainingExample
from fedloop.client.train.data import WeightedExample, collate, curriculum, encode, mix
from fedloop.client.train.losses import dpo_loss, sequence_logprobs, weighted_sft_loss
from fedloop.shared.settings import TrainSection

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    """What a recipe run did."""

    method: str
    examples: int = 0
    pairs: int = 0
    sft_losses: list[float] = field(default_factory=list)
    dpo_losses: list[float] = field(default_factory=list)

    @property
    def sft_steps(self) -> int:
        """Optimiser steps of the SFT phase."""
        return len(self.sft_losses)

    @property
    def dpo_steps(self) -> int:
        """Optimiser steps of the DPO phase."""
        return len(self.dpo_losses)

    @property
    def sft_loss(self) -> float:
        """Mean SFT loss over its steps (NaN if none ran)."""
        return sum(self.sft_losses) / len(self.sft_losses) if self.sft_losses else float("nan")

    @property
    def dpo_loss(self) -> float:
        """Mean DPO loss over its steps (NaN if none ran)."""
        return sum(self.dpo_losses) / len(self.dpo_losses) if self.dpo_losses else float("nan")


def _batches(items: Sequence[WeightedExample], size: int) -> list[list[WeightedExample]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def proximal_term(parameters: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor],
                  mu: float) -> torch.Tensor:
    """FedProx's (mu / 2)·Σ‖w − w_anchor‖² over the trainable adapter tensors."""
    return (mu / 2) * sum(((p - a) ** 2).sum() for p, a in zip(parameters, anchor))


def _optimise(model: PeftModel, batches: list[list[WeightedExample]], settings: TrainSection, label: str,
              batch_loss: Callable[[list[WeightedExample]], torch.Tensor], anchor: Sequence[torch.Tensor],
              learning_rate: float) -> list[float]:
    """AdamW with linear warmup over `batches` (grad accumulation, max_steps cap); returns each step's loss.

    The reported loss is the task loss; the proximal term towards `anchor` is added to what is optimised.
    """
    steps = math.ceil(len(batches) / settings.grad_accum)
    if settings.max_steps:
        steps = min(steps, settings.max_steps)
    if steps == 0:
        return []
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / settings.warmup_steps) if settings.warmup_steps else 1.0)
    model.train()
    losses = []
    progress = tqdm(range(steps), desc=label, unit="step", disable=None)
    batch_iter: Iterator[list[WeightedExample]] = iter(batches)
    for _ in progress:
        total = 0.0
        for _ in range(settings.grad_accum):
            batch = next(batch_iter, None)
            if batch is None:
                break
            loss = batch_loss(batch) / settings.grad_accum
            loss.backward()
            total += loss.item()
        if settings.proximal_mu > 0:
            proximal_term(trainable, anchor, settings.proximal_mu).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(total)
        progress.set_postfix(loss=f"{total:.4f}")
        log.info("%s step %d/%d loss %.4f", label, len(losses), steps, total)
    model.eval()
    return losses


def _sft(model: PeftModel, tokenizer: PreTrainedTokenizerBase, weighted: list[WeightedExample],
         settings: TrainSection, seed: int, anchor: Sequence[torch.Tensor]) -> list[float]:
    stages = curriculum(weighted, settings.curriculum, seed)
    batches = [b for _ in range(settings.epochs) for stage in stages for b in _batches(stage, settings.batch_size)]

    def loss(batch: list[WeightedExample]) -> torch.Tensor:
        encoded = collate([encode(tokenizer, w.example.prompt, w.example.target, settings.max_seq_len)
                           for w in batch], tokenizer.pad_token_id)
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        return weighted_sft_loss(logits, encoded["labels"], torch.tensor([w.weight for w in batch]))

    return _optimise(model, batches, settings, "sft", loss, anchor, settings.learning_rate)


def _pair_logprobs(model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: list[WeightedExample],
                   settings: TrainSection) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and the rejected reply of each pair (gradients flow if enabled)."""
    encoded = collate([encode(tokenizer, w.example.prompt, reply, settings.max_seq_len)
                       for w in pairs for reply in (w.example.target, w.example.rejected or "")],
                      tokenizer.pad_token_id)
    logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    logprobs, _ = sequence_logprobs(logits, encoded["labels"])
    return logprobs[0::2], logprobs[1::2]


def _dpo(model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: list[WeightedExample],
         settings: TrainSection, seed: int, anchor: Sequence[torch.Tensor]) -> list[float]:
    model.eval()
    with torch.no_grad():  # the reference policy is the model as it is before DPO
        reference = {id(w): tuple(t.item() for t in _pair_logprobs(model, tokenizer, [w], settings)) for w in pairs}
    ordered = curriculum(pairs, (0.0,), seed)[0] if pairs else []
    batches = [b for _ in range(settings.epochs) for b in _batches(ordered, settings.batch_size)]

    def loss(batch: list[WeightedExample]) -> torch.Tensor:
        chosen, rejected = _pair_logprobs(model, tokenizer, batch, settings)
        reference_chosen = torch.tensor([reference[id(w)][0] for w in batch])
        reference_rejected = torch.tensor([reference[id(w)][1] for w in batch])
        return dpo_loss(chosen, rejected, reference_chosen, reference_rejected, settings.dpo_beta)

    return _optimise(model, batches, settings, "dpo", loss, anchor,
                     settings.dpo_learning_rate or settings.learning_rate)


def run_recipe(model: PeftModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[TrainingExample],
               settings: TrainSection, seed: int) -> TrainReport:
    """Train the adapter of `model` on `examples` with the configured method; deterministic under `seed`."""
    torch.manual_seed(seed)
    weighted = mix(examples, settings)
    pairs = [w for w in weighted if w.example.rejected]
    report = TrainReport(settings.method, examples=len(weighted), pairs=len(pairs))
    if not weighted:
        raise ValueError("no training examples with a positive weight: record feedback before training")
    anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]  # the global version
    if settings.method in ("sft", "sft_then_dpo"):
        report.sft_losses = _sft(model, tokenizer, weighted, settings, seed, anchor)
    if settings.method in ("dpo", "sft_then_dpo") and pairs:
        report.dpo_losses = _dpo(model, tokenizer, pairs, settings, seed, anchor)
    return report
