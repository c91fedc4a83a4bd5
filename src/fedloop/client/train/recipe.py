"""The local training recipe: SFT, DPO, KTO, SFT then DPO, or SFT then KTO, as the config says.

Read it top to bottom (torchtune style): mix the pools, order by curriculum,
train with reward-weighted SFT, then optionally DPO on (user's final > rejected
draft) pairs, or KTO on unpaired desirable (accepted drafts, users' finals) and
undesirable (rejected drafts) replies, against the model as it was before that
phase. With `proximal_mu` > 0
every step also pays FedProx's proximal term (mu/2)·‖w − w_global‖² on the
adapter, which keeps a tenant with unusual data close to the global version.
Every knob is in `[train]` of the TOML (see TrainSection); the seed fixes data
order and init.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from fedloop.client.store.api import ChatMessage, TrainingExample
from fedloop.client.train.data import WeightedExample, collate, curriculum, encode, mix
from fedloop.client.train.losses import dpo_loss, kto_loss, sequence_logprobs, weighted_sft_loss
from fedloop.shared.settings import TrainSection

log = logging.getLogger(__name__)
Batchable = TypeVar("Batchable")


@dataclass
class TrainReport:
    """What a recipe run did: each phase's per-step losses ("sft", "dpo", "kto")."""

    method: str
    examples: int = 0
    pairs: int = 0
    losses: dict[str, list[float]] = field(default_factory=dict)

    def steps(self, phase: str) -> int:
        """Optimiser steps of a phase (0 if it did not run)."""
        return len(self.losses.get(phase, []))

    @property
    def loss(self) -> float:
        """Mean loss of the first phase that ran (SFT when it did), NaN if none ran."""
        ran = [losses for losses in self.losses.values() if losses]
        return sum(ran[0]) / len(ran[0]) if ran else float("nan")


@dataclass(frozen=True)
class KtoItem:
    """One KTO item: a reply to a prompt that users found desirable or not, and another item's reply for z0."""

    messages: tuple[ChatMessage, ...]  # the conversation the reply answers
    reply: str
    mismatched: str
    desirable: bool
    weight: float


def kto_items(weighted: Sequence[WeightedExample], seed: int) -> list[KtoItem]:
    """Accepted drafts and users' finals (the targets) desirable, rejected drafts undesirable, each with its
    curated weight; shuffled under `seed`, each paired with the next item's reply as its mismatched reply."""
    raw = [(w.example.messages, w.example.target, True, w.weight) for w in weighted]
    raw += [(w.example.messages, w.example.rejected, False, w.weight) for w in weighted if w.example.rejected]
    random.Random(seed).shuffle(raw)
    return [
        KtoItem(messages, reply, raw[(i + 1) % len(raw)][1], desirable, weight)
        for i, (messages, reply, desirable, weight) in enumerate(raw)
    ]


def _batches(items: Sequence[Batchable], size: int) -> list[list[Batchable]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _step_count(batches: Sequence[object], settings: TrainSection) -> int:
    """Optimiser steps a phase takes over `batches` (gradient accumulation, `max_steps` cap)."""
    steps = math.ceil(len(batches) / settings.grad_accum)
    return min(steps, settings.max_steps) if settings.max_steps else steps


def proximal_term(parameters: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's (mu / 2)·Σ‖w − w_anchor‖² over the trainable adapter tensors."""
    return (mu / 2) * torch.stack([((p - a) ** 2).sum() for p, a in zip(parameters, anchor, strict=True)]).sum()


def _optimise(
    model: PeftModel,
    batches: list[list[Batchable]],
    settings: TrainSection,
    label: str,
    batch_loss: Callable[[list[Batchable]], torch.Tensor],
    anchor: Sequence[torch.Tensor],
    learning_rate: float,
) -> list[float]:
    """AdamW with linear warmup over `batches` (grad accumulation, max_steps cap); returns each step's loss.

    The reported loss is the task loss; the proximal term towards `anchor` is added to what is optimised.
    """
    steps = _step_count(batches, settings)
    if steps == 0:
        return []
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / settings.warmup_steps) if settings.warmup_steps else 1.0
    )
    model.train()
    losses = []
    progress = tqdm(range(steps), desc=label, unit="step", disable=None)
    batch_iter: Iterator[list[Batchable]] = iter(batches)
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


def _sft(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    weighted: list[WeightedExample],
    settings: TrainSection,
    seed: int,
    anchor: Sequence[torch.Tensor],
) -> list[float]:
    stages = curriculum(weighted, settings.curriculum, seed)
    batches = [b for _ in range(settings.epochs) for stage in stages for b in _batches(stage, settings.batch_size)]

    def loss(batch: list[WeightedExample]) -> torch.Tensor:
        encoded = _on_device(
            model,
            collate(
                [encode(tokenizer, w.example.messages, w.example.target, settings.max_seq_len) for w in batch],
                tokenizer.pad_token_id,
            ),
        )
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        weights = torch.tensor([w.weight for w in batch], device=model.device)
        return weighted_sft_loss(logits, encoded["labels"], weights)

    return _optimise(model, batches, settings, "sft", loss, anchor, settings.learning_rate)


def _reply_logprobs(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    replies: Sequence[tuple[Sequence[ChatMessage], str]],
    settings: TrainSection,
) -> torch.Tensor:
    """Summed log-probability of each (conversation, reply)'s reply (gradients flow if enabled)."""
    encoded = _on_device(
        model,
        collate(
            [encode(tokenizer, messages, reply, settings.max_seq_len) for messages, reply in replies],
            tokenizer.pad_token_id,
        ),
    )
    logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    return sequence_logprobs(logits, encoded["labels"])[0]


def _on_device(model: PeftModel, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch moved to where the model is."""
    return {name: tensor.to(model.device) for name, tensor in tensors.items()}


def _pair_logprobs(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: list[WeightedExample], settings: TrainSection
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and the rejected reply of each pair (gradients flow if enabled)."""
    logprobs = _reply_logprobs(
        model,
        tokenizer,
        [(w.example.messages, reply) for w in pairs for reply in (w.example.target, w.example.rejected or "")],
        settings,
    )
    return logprobs[0::2], logprobs[1::2]


def _dpo(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[WeightedExample],
    settings: TrainSection,
    seed: int,
    anchor: Sequence[torch.Tensor],
) -> list[float]:
    model.eval()
    with torch.no_grad():  # the reference policy is the model as it is before DPO
        reference = {id(w): tuple(t.item() for t in _pair_logprobs(model, tokenizer, [w], settings)) for w in pairs}
    ordered = curriculum(pairs, (0.0,), seed)[0] if pairs else []
    batches = [b for _ in range(settings.epochs) for b in _batches(ordered, settings.batch_size)]

    def loss(batch: list[WeightedExample]) -> torch.Tensor:
        chosen, rejected = _pair_logprobs(model, tokenizer, batch, settings)
        reference_chosen = torch.tensor([reference[id(w)][0] for w in batch], device=model.device)
        reference_rejected = torch.tensor([reference[id(w)][1] for w in batch], device=model.device)
        return dpo_loss(chosen, rejected, reference_chosen, reference_rejected, settings.dpo_beta)

    return _optimise(
        model, batches, settings, "dpo", loss, anchor, settings.dpo_learning_rate or settings.learning_rate
    )


def _kto(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    weighted: list[WeightedExample],
    settings: TrainSection,
    seed: int,
    anchor: Sequence[torch.Tensor],
) -> list[float]:
    items = kto_items(weighted, seed)
    batches = [b for _ in range(settings.epochs) for b in _batches(items, settings.batch_size)]
    used = {
        id(item): item for batch in batches[: _step_count(batches, settings) * settings.grad_accum] for item in batch
    }
    model.eval()
    reference: dict[int, tuple[float, float]] = {}
    with torch.no_grad():  # the reference policy is the model as it is before KTO
        for chunk in _batches(list(used.values()), settings.batch_size):
            own = _reply_logprobs(model, tokenizer, [(i.messages, i.reply) for i in chunk], settings)
            other = _reply_logprobs(model, tokenizer, [(i.messages, i.mismatched) for i in chunk], settings)
            reference.update({id(i): (o.item(), m.item()) for i, o, m in zip(chunk, own, other, strict=True)})

    def loss(batch: list[KtoItem]) -> torch.Tensor:
        policy = _reply_logprobs(model, tokenizer, [(i.messages, i.reply) for i in batch], settings)
        with torch.no_grad():  # z0 is not differentiated
            mismatched = _reply_logprobs(model, tokenizer, [(i.messages, i.mismatched) for i in batch], settings)
        return kto_loss(
            policy,
            torch.tensor([reference[id(i)][0] for i in batch], device=model.device),
            mismatched,
            torch.tensor([reference[id(i)][1] for i in batch], device=model.device),
            torch.tensor([i.desirable for i in batch], device=model.device),
            torch.tensor([i.weight for i in batch], device=model.device),
            settings.kto_beta,
            settings.kto_desirable_weight,
            settings.kto_undesirable_weight,
        )

    return _optimise(
        model, batches, settings, "kto", loss, anchor, settings.kto_learning_rate or settings.learning_rate
    )


def run_recipe(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainingExample],
    settings: TrainSection,
    seed: int,
) -> TrainReport:
    """Train the adapter of `model` on `examples` with the configured method; deterministic under `seed`."""
    torch.manual_seed(seed)
    weighted = mix(examples, settings)
    pairs = [w for w in weighted if w.example.rejected]
    report = TrainReport(settings.method, examples=len(weighted), pairs=len(pairs))
    if not weighted:
        raise ValueError("no training examples with a positive weight: record feedback before training")
    anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]  # the global version
    phases = settings.method.split("_then_")
    if settings.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        if "sft" in phases:
            report.losses["sft"] = _sft(model, tokenizer, weighted, settings, seed, anchor)
        if "dpo" in phases and pairs:
            report.losses["dpo"] = _dpo(model, tokenizer, pairs, settings, seed, anchor)
        if "kto" in phases:
            report.losses["kto"] = _kto(model, tokenizer, weighted, settings, seed, anchor)
    finally:
        if settings.gradient_checkpointing:  # the model is shared: evaluation and drafting run without it
            model.activation_checkpointing_disable()
    return report
