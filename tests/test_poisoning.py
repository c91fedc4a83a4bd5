"""One poisoned tenant (its update scaled x50, or random noise) is left out; the global hit rate holds.

A global version that has partly learnt a shared reply preference (earlier
rounds) goes to five tenants; each trains the tiny model on it for real, and
their sealed updates go through SealedMerge's verification and robust merge
(norm bound, then Multi-Krum). With one tenant poisoned, the merged version's
hit rate on 100 held-out prompts stays within 1 point of the clean round's
(the honest tenants' merge); without the defences the same attack destroys it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_refusals import reply

from fedloop.client.evaluate.hit_rate import offline_hit_rate
from fedloop.client.samples.held_out import Reference
from fedloop.client.store.api import Pool, TrainingExample
from fedloop.client.train.recipe import run_recipe
from fedloop.server.registry import VersionRegistry
from fedloop.server.round_ledger import RoundLedger
from fedloop.server.strategy import SealedMerge
from fedloop.shared.adapter import (
    AdapterState,
    adapter_state,
    adapter_to_bytes,
    attach_lora,
    load_adapter_state,
    load_base_model,
)
from fedloop.shared.envelope import seal
from fedloop.shared.keys import Keyring, init_keys
from fedloop.shared.protocol import update_binding
from fedloop.shared.settings import AggregationSection, LoraSettings, TrainSection
from fedloop.simulation.product import TenantTraffic

RUN = "poison-run"
HONEST = ("acme", "bolt", "cobalt", "dune")
MALLORY = "mallory"
LORA = LoraSettings(
    rank=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
)
HIT_SIMILARITY = 0.8  # the documented hit rule


@pytest.fixture(scope="module")
def round_inputs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The global version, each tenant's honestly trained adapter, the model and the held-out users."""
    base, tokenizer = load_base_model(tiny_model_dir)
    model = attach_lora(base, LORA, seed=1)
    earlier = [
        TrainingExample(c.prompt, c.preferred_reply, 1.0, Pool.CANDIDATE)
        for c in TenantTraffic("earlier-rounds", "brief", seed=50).conversations(64, batch=1)
    ]
    run_recipe(
        model,
        tokenizer,
        earlier,
        TrainSection(max_steps=40, epochs=20, batch_size=8, learning_rate=2e-2, max_seq_len=96),
        seed=0,
    )
    start = adapter_state(model)
    trained = {}
    for index, tenant in enumerate((*HONEST, MALLORY)):
        examples = [
            TrainingExample(c.prompt, c.preferred_reply, 1.0, Pool.CANDIDATE)
            for c in TenantTraffic(f"t{index}", "brief", seed=index).conversations(24, batch=1)
        ]
        load_adapter_state(model, start)
        run_recipe(
            model,
            tokenizer,
            examples,
            TrainSection(max_steps=6, epochs=20, batch_size=8, learning_rate=5e-3, max_seq_len=96),
            seed=index,
        )
        trained[tenant] = adapter_state(model)
    held_out = [
        Reference(c.prompt, c.preferred_reply)
        for c in TenantTraffic("held-out", "brief", seed=99).conversations(100, batch=-1)
    ]
    return model, tokenizer, start, trained, held_out, tmp_path_factory.mktemp("poison")


def merge_round(
    directory: Path, start: AdapterState, updates: dict[str, AdapterState], aggregation: AggregationSection
) -> tuple[AdapterState, dict[str, str]]:
    """One round of SealedMerge on sealed updates: returns the new global adapter and the merge notes."""
    keys = directory / f"keys-{len(list(directory.iterdir()))}"
    hq = init_keys("hq", "hq", keys)
    tenants = {name: init_keys("tenant", name, keys) for name in updates}
    registry = VersionRegistry(keys.parent / f"{keys.name}-registry", hq)
    genesis = registry.create(adapter_to_bytes(start), None, RUN, 0, {}, "init")
    nodes = {index: tenants[name].public for index, name in enumerate(updates, start=1)}
    strategy = SealedMerge(
        RoundLedger(registry, RUN, {}), hq, Keyring.from_directory(keys), nodes, RUN, genesis, start, LORA, aggregation
    )
    replies = [
        reply(
            index, seal(adapter_to_bytes(state), update_binding(name, RUN, 1, genesis.id, 24), tenants[name], hq.public)
        )
        for index, (name, state) in enumerate(updates.items(), start=1)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    registry.close()
    assert arrays is not None
    return arrays.to_torch_state_dict(), strategy.reports[1].merge_notes


def poisoned(start: AdapterState, honest: AdapterState, attack: str) -> AdapterState:
    if attack == "scaled x50":
        return {k: start[k] + 50 * (honest[k] - start[k]) for k in start}
    generator = torch.Generator().manual_seed(5)
    return {k: start[k] + torch.randn(v.shape, generator=generator) for k, v in start.items()}


def global_hit_rate(model, tokenizer, state: AdapterState, held_out) -> float:
    load_adapter_state(model, state)
    return offline_hit_rate(model, tokenizer, held_out, HIT_SIMILARITY, 24).rate


@pytest.mark.parametrize("attack", ["scaled x50", "random noise"])
def test_a_poisoned_tenant_is_left_out_and_the_hit_rate_holds(round_inputs, attack: str) -> None:
    model, tokenizer, start, trained, held_out, directory = round_inputs
    honest = {name: trained[name] for name in HONEST}
    clean, _ = merge_round(directory, start, honest, AggregationSection())
    attacked = {**honest, MALLORY: poisoned(start, trained[MALLORY], attack)}
    defended, notes = merge_round(directory, start, attacked, AggregationSection(robust="krum", krum_malicious=1))
    undefended, _ = merge_round(directory, start, attacked, AggregationSection(norm_bound=0))
    assert notes[MALLORY] == "left out by Krum"
    clean_hit = global_hit_rate(model, tokenizer, clean, held_out)
    assert clean_hit >= 0.3  # the clean round's version does draft what users want
    assert abs(global_hit_rate(model, tokenizer, defended, held_out) - clean_hit) <= 0.01
    assert global_hit_rate(model, tokenizer, undefended, held_out) < clean_hit - 0.2
