"""Personalisation at the tenant: the global version adapted to the tenant's own feedback.

Two ways, chosen per tenant (`[personalise] method` of its TOML):
- "local_steps": a few SFT steps from the global version on the tenant's
  training samples (`personalise.steps`), after each round's global version
  arrives. Nothing of them leaves the tenant.
- "local_b": FedSA-LoRA (Guo et al., ICLR 2025): the A matrices are shared,
  the B matrices stay at the tenant. Each round the tenant trains from the
  global A and its own B; what it sends HQ is its trained A with the global B
  unchanged, so its B never leaves. HQ must average the factors
  (`aggregation.method = "fedavg"`): the exact merge re-factorises B·A and
  would change the basis the local B was trained in.
The tenant's gates then compare the global and the personalised candidate on
its held-out real feedback and offer the personalised one only when it drafts
better with confidence (src/fedloop/client/evaluate/candidates.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.store.api import TrainingExample
from fedloop.client.train.recipe import TrainReport, run_recipe
from fedloop.shared.adapter import LORA_B, AdapterState
from fedloop.shared.settings import TrainSection

PERSONAL_SUFFIX = "+personal"  # a personalised candidate's id: the global version's id and this


def personal_version(version_id: str) -> str:
    """The id of the tenant's personalised candidate built from global version `version_id`."""
    return f"{version_id}{PERSONAL_SUFFIX}"


def local_part(state: AdapterState) -> AdapterState:
    """The part of an adapter that stays at the tenant under "local_b": its B matrices."""
    return {key: tensor for key, tensor in state.items() if LORA_B in key}


def shared_part(trained: AdapterState, global_state: AdapterState) -> AdapterState:
    """What a "local_b" tenant sends HQ: its trained A matrices, with the global version's B unchanged."""
    return {key: global_state[key] if LORA_B in key else tensor for key, tensor in trained.items()}


def with_local_part(global_state: AdapterState, local: AdapterState) -> AdapterState:
    """The global version with the tenant's own B matrices (those it has) in place of the global ones."""
    return {key: local.get(key, tensor) if LORA_B in key else tensor for key, tensor in global_state.items()}


def local_steps(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainingExample],
    settings: TrainSection,
    steps: int,
    seed: int,
) -> TrainReport:
    """`steps` SFT steps from the adapter loaded in `model` on the tenant's examples (the model keeps the result)."""
    return run_recipe(
        model,
        tokenizer,
        examples,
        settings.model_copy(update={"method": "sft", "max_steps": steps, "epochs": max(settings.epochs, steps)}),
        seed,
    )
