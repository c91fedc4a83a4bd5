"""The training recipe: DPO and KTO losses by hand, pool weighting and curriculum, SFT, DPO and KTO on a tiny
model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GlmConfig, PreTrainedTokenizerBase, Qwen2Config

from fedloop.client.store.api import Pool, TrainingExample
from fedloop.client.train.data import WeightedExample, curriculum, mix
from fedloop.client.train.losses import dpo_loss, kto_loss, sequence_logprobs
from fedloop.client.train.recipe import _reply_logprobs, kto_items, run_recipe
from fedloop.shared.adapter import ModelLoadError, Placement, adapter_state, attach_lora, load_base_model
from fedloop.shared.settings import LoraSettings, TrainSection


def test_dpo_loss_matches_a_hand_computed_value() -> None:
    # margin = (-1.0 - -2.0) - (-3.0 - -2.5) = 1.0 + 0.5 = 1.5; beta 0.1 -> -log(sigmoid(0.15)) = log(1 + e^-0.15)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), 0.1)
    assert loss.item() == pytest.approx(0.620957, abs=1e-6)


def test_kto_loss_matches_a_hand_computed_value() -> None:
    # z0 = mean((-4 - -5), (-6 - -5)) = mean(1, -1) = 0
    # desirable: r = -1 - -2 = 1 -> 1 - sigmoid(0.1 * (1 - 0)) = 0.475021, sample weight 1
    # undesirable: r = -3 - -2.5 = -0.5 -> 1 - sigmoid(0.1 * (0 + 0.5)) = 0.487503, x 1.5 (lambda_U), sample weight 2
    # loss = (0.475021 + 2 x 1.5 x 0.487503) / (1 + 2) = 0.645843
    policy, reference = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.5])
    desirable, weights = torch.tensor([True, False]), torch.tensor([1.0, 2.0])
    loss = kto_loss(
        policy, reference, torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -5.0]), desirable, weights, 0.1, 1.0, 1.5
    )
    assert loss.item() == pytest.approx(0.645843, abs=1e-6)
    # z0 = 1: desirable 1 - sigmoid(0) = 0.5; undesirable 1 - sigmoid(0.1 x 1.5) = 0.462570 -> (0.5 + 3 x 0.462570) / 3
    shifted = kto_loss(
        policy, reference, torch.tensor([-4.0, -4.0]), torch.tensor([-5.0, -5.0]), desirable, weights, 0.1, 1.0, 1.5
    )
    assert shifted.item() == pytest.approx(0.629237, abs=1e-6)


def test_kto_items_take_targets_as_desirable_and_rejected_drafts_as_undesirable() -> None:
    weighted = [
        WeightedExample(example("a", 0.8, "candidate", rejected="bad a"), 0.48),
        WeightedExample(example("b", 1.0, Pool.CANDIDATE), 1.0),
    ]
    items = kto_items(weighted, seed=3)
    assert sorted((i.messages[-1]["content"], i.reply, i.desirable, i.weight) for i in items) == [
        ("a", "bad a", False, 0.48),
        ("a", "reply to a", True, 0.48),
        ("b", "reply to b", True, 1.0),
    ]
    assert all(i.mismatched == items[(k + 1) % 3].reply for k, i in enumerate(items))


def test_sequence_logprobs_count_only_labelled_tokens() -> None:
    logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: log(1/4) each
    labels = torch.tensor([[-100, 2, 3]])
    logprobs, counts = sequence_logprobs(logits, labels)
    assert counts.item() == 2 and abs(logprobs.item() - 2 * math.log(0.25)) < 1e-6


def example(prompt: str, weight: float, pool: str, rejected: str | None = None) -> TrainingExample:
    return TrainingExample(prompt, f"reply to {prompt}", weight, Pool(pool), rejected)


def test_pool_weights_multiply_sample_weights_and_zero_drops() -> None:
    settings = TrainSection(weight_core_baseline=1.0, weight_candidate=0.5, weight_problem=0.0)
    mixed = mix(
        [example("a", 0.8, "core_baseline"), example("b", 0.8, "candidate"), example("c", 1.0, "problem")], settings
    )
    assert [(w.example.prompt, round(w.weight, 3)) for w in mixed] == [("a", 0.8), ("b", 0.4)]


def test_curriculum_starts_confident_and_adds_marginal_samples() -> None:
    settings = TrainSection()
    mixed = mix(
        [
            example("sure", 1.0, "candidate"),
            example("likely", 0.6, "candidate"),
            example("marginal", 0.3, "candidate"),
        ],
        settings,
    )
    stages = curriculum(mixed, (0.8, 0.5, 0.0), seed=1)
    assert [sorted(w.example.prompt for w in stage) for stage in stages] == [
        ["sure"],
        ["likely", "sure"],
        ["likely", "marginal", "sure"],
    ]
    assert curriculum(mixed, (0.99, 0.0), seed=1)[0][0].example.prompt in {"sure", "likely", "marginal"}


def _model(tiny_model_dir: Path) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    model, tokenizer = load_base_model(tiny_model_dir)
    return attach_lora(model, LoraSettings(rank=4, alpha=8), seed=0), tokenizer


def test_recipe_is_deterministic_and_dpo_prefers_the_chosen_reply(tiny_model_dir: Path) -> None:
    examples = [
        TrainingExample(
            f"Where is my order {i}?",
            f"Order {i} ships today.",
            0.5,
            Pool.CANDIDATE,
            rejected=f"I cannot help with order {i}.",
        )
        for i in range(6)
    ]
    settings = TrainSection(
        method="sft_then_dpo", max_steps=4, batch_size=3, learning_rate=1e-2, max_seq_len=64, dpo_learning_rate=0.0
    )
    states = []
    for _ in range(2):
        model, tokenizer = _model(tiny_model_dir)
        report = run_recipe(model, tokenizer, examples, settings, seed=5)
        states.append(adapter_state(model))
    assert (
        report.steps("sft") == 4 and report.steps("dpo") == 2 and report.pairs == 6
    )  # 2 curriculum stages x 2 batches
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

    model, tokenizer = _model(tiny_model_dir)
    from fedloop.client.train.data import mix as mix_examples
    from fedloop.client.train.recipe import _pair_logprobs

    pairs = mix_examples(examples, settings)
    with torch.no_grad():
        chosen, rejected = _pair_logprobs(model, tokenizer, pairs, settings)
    before = (chosen - rejected).mean().item()
    run_recipe(
        model,
        tokenizer,
        examples,
        settings.model_copy(update={"method": "dpo", "max_steps": 6, "learning_rate": 3e-2}),
        seed=5,
    )
    with torch.no_grad():
        chosen, rejected = _pair_logprobs(model, tokenizer, pairs, settings)
    assert (chosen - rejected).mean().item() > before


def test_fedprox_keeps_the_adapter_closer_to_the_global_version(tiny_model_dir: Path) -> None:
    examples = [
        TrainingExample(f"Where is my order {i}?", f"Order {i} ships today.", 1.0, Pool.CANDIDATE) for i in range(8)
    ]
    settings = TrainSection(max_steps=6, batch_size=4, learning_rate=2e-2, max_seq_len=64, curriculum=(0.0,))
    drift = {}
    for mu in (0.0, 50.0):
        model, tokenizer = _model(tiny_model_dir)
        start = adapter_state(model)
        run_recipe(model, tokenizer, examples, settings.model_copy(update={"proximal_mu": mu}), seed=3)
        end = adapter_state(model)
        drift[mu] = sum(float(((end[k] - start[k]) ** 2).sum()) for k in start) ** 0.5
    assert 0 < drift[50.0] < 0.7 * drift[0.0]


def test_dpo_phase_uses_its_own_learning_rate(tiny_model_dir: Path) -> None:
    examples = [
        TrainingExample(
            f"Where is my order {i}?",
            f"Order {i} ships today.",
            0.5,
            Pool.CANDIDATE,
            rejected=f"I cannot help with order {i}.",
        )
        for i in range(6)
    ]
    settings = TrainSection(method="dpo", max_steps=3, batch_size=3, learning_rate=3e-2, max_seq_len=64)
    drift = {}
    for dpo_rate in (0.0, 3e-4):
        model, tokenizer = _model(tiny_model_dir)
        start = adapter_state(model)
        run_recipe(model, tokenizer, examples, settings.model_copy(update={"dpo_learning_rate": dpo_rate}), seed=5)
        end = adapter_state(model)
        drift[dpo_rate] = sum(float(((end[k] - start[k]) ** 2).sum()) for k in start) ** 0.5
    assert 0 < drift[3e-4] < 0.1 * drift[0.0]  # 0 = the SFT learning rate, 100x larger


def test_kto_raises_desirable_replies_over_rejected_drafts(tiny_model_dir: Path) -> None:
    examples = [
        TrainingExample(
            f"Where is my order {i}?",
            f"Order {i} ships today.",
            0.7,
            Pool.CANDIDATE,
            rejected=f"I cannot help with order {i}.",
        )
        for i in range(6)
    ]
    settings = TrainSection(
        method="kto", max_steps=6, batch_size=4, learning_rate=3e-2, kto_learning_rate=0.0, kto_beta=1.0, max_seq_len=64
    )
    model, tokenizer = _model(tiny_model_dir)
    chosen = [(e.messages, e.target) for e in examples]
    rejected = [(e.messages, e.rejected or "") for e in examples]

    def margin() -> float:
        with torch.no_grad():
            return (
                (
                    _reply_logprobs(model, tokenizer, chosen, settings)
                    - _reply_logprobs(model, tokenizer, rejected, settings)
                )
                .mean()
                .item()
            )

    before = margin()
    report = run_recipe(model, tokenizer, examples, settings, seed=5)
    assert report.steps("kto") == 3 and report.steps("sft") == 0  # 12 items in batches of 4
    assert margin() > before + 1.0
    report = run_recipe(
        *_model(tiny_model_dir), examples, settings.model_copy(update={"method": "sft_then_kto"}), seed=5
    )
    assert report.steps("sft") > 0 and report.steps("kto") == 3 and not math.isnan(report.loss)


def test_a_bfloat16_model_trains_on_the_cpu_and_its_adapter_travels_as_float32(tiny_model_dir: Path) -> None:
    """`[train] dtype = "bfloat16"`: the base model runs in bfloat16, the adapter leaves in the shared float32
    format, so a bfloat16 tenant and a float32 tenant merge at HQ without a dtype refusal."""
    placement = Placement.of("cpu", "bfloat16")
    base, tokenizer = load_base_model(tiny_model_dir, placement)
    assert next(base.parameters()).dtype == torch.bfloat16
    model = attach_lora(base, LoraSettings(rank=4, alpha=8), seed=0)
    examples = [
        TrainingExample(f"Where is my order {i}?", f"Order {i} ships today.", 1.0, Pool.CANDIDATE) for i in range(8)
    ]
    settings = TrainSection(max_steps=3, batch_size=4, learning_rate=3e-2, max_seq_len=64, gradient_checkpointing=True)
    start = adapter_state(model)
    report = run_recipe(model, tokenizer, examples, settings, seed=1)
    assert report.steps("sft") == 3 and math.isfinite(report.loss)
    assert not model.is_activation_checkpointing  # switched off again: evaluation and drafting share the model
    trained = adapter_state(model)
    reference = adapter_state(_model(tiny_model_dir)[0])  # a float32 tenant's adapter
    assert {k: (v.dtype, v.shape) for k, v in trained.items()} == {k: (v.dtype, v.shape) for k, v in reference.items()}
    assert all(v.dtype == torch.float32 for v in trained.values())
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # it learned


def test_the_device_setting_is_checked_against_the_machine() -> None:
    assert Placement.of("cpu", "auto") == Placement(torch.device("cpu"), torch.float32)
    if torch.cuda.is_available():  # a GPU machine: "auto" takes it, in bfloat16
        assert Placement.of("auto", "auto") == Placement(torch.device("cuda"), torch.bfloat16)
    else:
        assert Placement.of("auto", "auto") == Placement(torch.device("cpu"), torch.float32)
        with pytest.raises(ModelLoadError, match='train.device = "cuda".*set train.device = "auto" or "cpu"'):
            Placement.of("cuda", "auto")


# The `[lora] target_modules` docs/sizing.md gives for each family (all linear layers of a decoder layer).
FAMILY_TARGETS = {
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "glm": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
}


@pytest.mark.parametrize("family", sorted(FAMILY_TARGETS))
def test_a_local_qwen2_or_glm_directory_trains_with_the_documented_target_modules(
    family: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """docs/sizing.md: `paths.model` may name a local Qwen2 or (transformers-native) GLM directory; the target
    modules it lists exist there, and one recipe step trains every one of them."""
    vocabulary = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    shape: dict[str, Any] = dict(vocab_size=len(vocabulary), hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    shape |= dict(num_attention_heads=2, num_key_value_heads=1, pad_token_id=vocabulary.pad_token_id)
    config = Qwen2Config(**shape) if family == "qwen2" else GlmConfig(**shape, head_dim=16)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    vocabulary.save_pretrained(tmp_path)
    base, tokenizer = load_base_model(tmp_path)
    lora = LoraSettings(rank=4, alpha=8, target_modules=FAMILY_TARGETS[family])
    model = attach_lora(base, lora, seed=0)
    start = adapter_state(model)
    examples = [
        TrainingExample(f"Where is order {i}?", f"Order {i} ships today.", 1.0, Pool.CANDIDATE) for i in range(4)
    ]
    run_recipe(model, tokenizer, examples, TrainSection(max_steps=1, batch_size=4, max_seq_len=48), seed=0)
    trained = adapter_state(model)
    adapted = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in trained}
    assert adapted == set(FAMILY_TARGETS[family])
    changed = {
        key.split(".lora_")[0].rsplit(".", 1)[-1] for key in trained if not torch.equal(trained[key], start[key])
    }
    assert changed == adapted
