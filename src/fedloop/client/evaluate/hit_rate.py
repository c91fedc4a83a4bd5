"""Offline hit rate on the tenant's held-out finals, and the hit-rate gate.

The rule (documented in docs/evaluation.md) was fixed before any result was
seen: a draft is a hit when its similarity to the user's final text
(`curation.text_similarity`: rapidfuzz ratio of the case-folded texts) is at
least `evaluation.hit_similarity` (0.8). The rate comes with its sample count
and a 95 % Wilson interval.

The gate compares the candidate with the serving version (the base model
before anything serves) on the same held-out prompts. The drafts are paired,
so it tests the prompts where exactly one of them hits (an exact sign test):
the candidate is refused when it is worse with `evaluation.confidence`. With
fewer than `evaluation.min_held_out` finals the gate says "insufficient
evidence" and the online canary decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.evaluate.drift import GateResult
from fedloop.client.samples.curation import text_similarity
from fedloop.client.samples.held_out import Reference
from fedloop.client.store.api import EvaluationKind
from fedloop.client.train.generate import generate_replies
from fedloop.shared.adapter import AdapterState, adapter_state, load_adapter_state
from fedloop.shared.intervals import wilson_interval
from fedloop.shared.protocol import HIT_RATE


@dataclass(frozen=True)
class HitRate:
    """Hits among `count` held-out prompts, the mean similarity, and the 95 % Wilson interval of the rate."""

    hits: tuple[bool, ...]
    mean_similarity: float
    drafts: tuple[str, ...] = ()  # the drafts judged, in the references' order (for the degeneration gate)

    @property
    def count(self) -> int:
        """How many held-out prompts were drafted for."""
        return len(self.hits)

    @property
    def rate(self) -> float:
        """Share of hits (0 when nothing was measured)."""
        return sum(self.hits) / self.count if self.count else 0.0

    def interval(self) -> tuple[float, float]:
        """The 95 % Wilson score interval of the rate."""
        return wilson_interval(sum(self.hits), self.count)

    def metrics(self) -> dict[str, float]:
        """The figures a tenant records and reports to HQ (aggregates only)."""
        low, high = self.interval()
        return {
            HIT_RATE: self.rate,
            "hit-rate-low": low,
            "hit-rate-high": high,
            "mean-similarity": self.mean_similarity,
            "num-examples": self.count,
        }


def score_drafts(drafts: Sequence[str], references: Sequence[Reference], threshold: float) -> HitRate:
    """Judge drafts against the users' final texts by the fixed similarity rule."""
    similarities = [text_similarity(d, r.final) for d, r in zip(drafts, references, strict=True)]
    mean = sum(similarities) / len(similarities) if similarities else 0.0
    return HitRate(tuple(s >= threshold for s in similarities), mean, tuple(drafts))


def offline_hit_rate(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    references: Sequence[Reference],
    threshold: float,
    max_new_tokens: int,
) -> HitRate:
    """Hit rate of the model's loaded adapter on the held-out references."""
    if not references:
        return HitRate((), 0.0)
    drafts = generate_replies(model, tokenizer, [r.messages for r in references], max_new_tokens)
    return score_drafts(drafts, references, threshold)


def reference_hit_rate(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    references: Sequence[Reference],
    serving: AdapterState | None,
    threshold: float,
    max_new_tokens: int,
) -> HitRate:
    """Hit rate of the serving adapter (the base model when None) on the same references; the model is restored."""
    original = adapter_state(model)
    try:
        if serving is None:
            with model.disable_adapter():
                return offline_hit_rate(model, tokenizer, references, threshold, max_new_tokens)
        load_adapter_state(model, serving)
        return offline_hit_rate(model, tokenizer, references, threshold, max_new_tokens)
    finally:
        load_adapter_state(model, original)


def worse_p_value(candidate: HitRate, reference: HitRate) -> float:
    """One-sided exact sign test on paired drafts: P(at least this many reference-only hits | no difference)."""
    reference_only = sum(r and not c for c, r in zip(candidate.hits, reference.hits, strict=True))
    discordant = reference_only + sum(c and not r for c, r in zip(candidate.hits, reference.hits, strict=True))
    return sum(math.comb(discordant, k) for k in range(reference_only, discordant + 1)) / 2**discordant


def hit_rate_gate(candidate: HitRate, reference: HitRate, min_samples: int, confidence: float) -> GateResult:
    """Refuse a candidate worse than the reference with `confidence`; too few samples: insufficient evidence."""
    gap = candidate.rate - reference.rate
    if candidate.count < min_samples:
        return GateResult(EvaluationKind.HIT_RATE_VS_SERVING, gap, 0.0, "insufficient evidence")
    refused = worse_p_value(candidate, reference) < 1 - confidence
    return GateResult(EvaluationKind.HIT_RATE_VS_SERVING, gap, 0.0, "refuse" if refused else "pass")
