"""Drift gates: how far a candidate adapter moves the model, and whether it forgets general ability.

- KL gate: mean per-token KL(candidate || serving) of the next-token
  distributions over reference texts; above the bound (default 0.4, about twice
  the largest round of the default recipe measured by scripts/measure_kl.py) the
  update is refused.
- Forgetting gate: mean per-token negative log-likelihood of general texts the
  project ships (general_texts.txt) under the candidate, compared with the base
  model (adapter disabled); a relative increase above the bound is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.store.api import EvaluationKind
from fedloop.shared.adapter import AdapterState, adapter_state, load_adapter_state


@dataclass(frozen=True)
class GateResult:
    """A gate's measurement, its bound, and its verdict: "pass", "refuse" or "insufficient evidence"."""

    name: EvaluationKind
    value: float
    bound: float
    verdict: str

    @property
    def passed(self) -> bool:
        """Whether the gate does not refuse (insufficient evidence leaves the decision to the canary)."""
        return self.verdict != "refuse"


def general_texts() -> list[str]:
    """The general-ability texts shipped with fedloop."""
    text = resources.files("fedloop.client.evaluate").joinpath("general_texts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        return tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


@torch.no_grad()
def _log_probs(model: PeftModel, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    on_device = {name: tensor.to(model.device) for name, tensor in encoded.items()}
    return F.log_softmax(model(**on_device).logits.float(), dim=-1).cpu()


@torch.no_grad()
def mean_token_kl(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    candidate: AdapterState,
    serving: AdapterState,
    texts: Sequence[str],
) -> float:
    """Mean per-token KL(candidate || serving) over `texts`; the model's own adapter is restored after."""
    original = adapter_state(model)
    encoded = _encode(tokenizer, texts)
    mask = encoded["attention_mask"].bool()
    try:
        load_adapter_state(model, candidate)
        candidate_lp = _log_probs(model, encoded)
        load_adapter_state(model, serving)
        serving_lp = _log_probs(model, encoded)
    finally:
        load_adapter_state(model, original)
    kl = (candidate_lp.exp() * (candidate_lp - serving_lp)).sum(-1)
    return float(kl[mask].mean())


@torch.no_grad()
def mean_token_nll(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], base: bool = False
) -> float:
    """Mean per-token negative log-likelihood of `texts` (with the adapter disabled when `base`)."""
    encoded = _encode(tokenizer, texts)
    if base:
        with model.disable_adapter():
            log_probs = _log_probs(model, encoded)
    else:
        log_probs = _log_probs(model, encoded)
    targets = encoded["input_ids"][:, 1:]
    mask = encoded["attention_mask"][:, 1:].bool()
    token_lp = torch.gather(log_probs[:, :-1], 2, targets.unsqueeze(-1)).squeeze(-1)
    return float(-token_lp[mask].mean())


def kl_gate(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    candidate: AdapterState,
    serving: AdapterState,
    reference_texts: Sequence[str],
    bound: float,
) -> GateResult:
    """Refuse a candidate whose mean per-token KL to the serving version exceeds `bound`."""
    value = mean_token_kl(model, tokenizer, candidate, serving, reference_texts)
    return GateResult(EvaluationKind.KL_TO_SERVING, value, bound, "pass" if value <= bound else "refuse")


def forgetting_gate(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, candidate: AdapterState, bound: float
) -> GateResult:
    """Refuse a candidate that raises the general-text NLL by more than `bound` (relative) over the base model."""
    original = adapter_state(model)
    texts = general_texts()
    try:
        load_adapter_state(model, candidate)
        candidate_nll = mean_token_nll(model, tokenizer, texts)
        base_nll = mean_token_nll(model, tokenizer, texts, base=True)
    finally:
        load_adapter_state(model, original)
    increase = (candidate_nll - base_nll) / base_nll
    return GateResult(EvaluationKind.GENERAL_NLL_INCREASE, increase, bound, "pass" if increase <= bound else "refuse")
