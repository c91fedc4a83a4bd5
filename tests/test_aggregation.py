"""Merging LoRA adapters: exact merge against the dense sum, validation, and robust merging."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import pytest
import torch

from fedloop.server.aggregation import (
    TenantUpdate,
    UpdateRejected,
    cap_shares,
    check_update,
    dense_deltas,
    exact_merge,
    fedavg,
    lora_scaling,
    merge,
)
from fedloop.shared.settings import AggregationSection

MODULES = ("layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj")
OUT, IN = 24, 20


def adapter(rank: int, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random PEFT-keyed adapter of `rank` over MODULES."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for module in MODULES:
        state[f"{module}.lora_A.weight"] = torch.randn(rank, IN, generator=generator) * scale
        state[f"{module}.lora_B.weight"] = torch.randn(OUT, rank, generator=generator) * scale
    return state


def dense_sum(updates: list[TenantUpdate], scaling: float) -> dict[str, torch.Tensor]:
    total = sum(u.num_examples for u in updates)
    result: dict[str, torch.Tensor] = {}
    for update in updates:
        for module, delta in dense_deltas(update.state, scaling).items():
            result[module] = result.get(module, 0) + delta * update.num_examples / total
    return result


def test_exact_merge_equals_the_dense_sum_when_the_rank_allows() -> None:
    updates = [
        TenantUpdate("a", adapter(4, 1), 30),
        TenantUpdate("b", adapter(4, 2), 10),
        TenantUpdate("c", adapter(4, 3), 20),
    ]
    scaling = lora_scaling(8, 4)
    merged = exact_merge(updates, adapter(12, 0), scaling)  # 3 x rank 4 <= 12: nothing is lost
    assert merged["layers.0.q_proj.lora_A.weight"].shape == (12, IN)
    expected, got = dense_sum(updates, scaling), dense_deltas(merged, scaling)
    for module in expected:
        assert torch.allclose(got[module], expected[module], atol=1e-4, rtol=1e-4)


def test_exact_merge_truncates_to_the_best_rank_r_approximation() -> None:
    updates = [TenantUpdate(name, adapter(8, seed), 10) for name, seed in (("a", 1), ("b", 2), ("c", 3))]
    merged = exact_merge(updates, adapter(8, 0), 2.0)
    for module, target in dense_sum(updates, 2.0).items():
        tail = torch.linalg.svdvals(target)[8:]
        error = torch.linalg.matrix_norm(dense_deltas(merged, 2.0)[module] - target)
        assert error == pytest.approx(float(torch.linalg.vector_norm(tail)), rel=1e-4)


def test_fedavg_of_factors_is_not_the_average_update_but_is_sample_weighted() -> None:
    a, b = TenantUpdate("a", adapter(4, 1), 30), TenantUpdate("b", adapter(4, 2), 10)
    averaged = fedavg([(a.state, 30), (b.state, 10)])
    assert torch.allclose(
        averaged["layers.0.q_proj.lora_A.weight"],
        0.75 * a.state["layers.0.q_proj.lora_A.weight"] + 0.25 * b.state["layers.0.q_proj.lora_A.weight"],
    )
    module = next(iter(dense_sum([a, b], 2.0)))
    assert not torch.allclose(dense_deltas(averaged, 2.0)[module], dense_sum([a, b], 2.0)[module], atol=1e-3)


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (
            lambda s: {**s, "layers.0.q_proj.lora_A.weight": s["layers.0.q_proj.lora_A.weight"].double()},
            "dtype mismatch",
        ),
        (lambda s: {**s, "layers.0.q_proj.lora_A.weight": torch.zeros(4, IN + 1)}, "shape mismatch"),
        (lambda s: {k: v for k, v in s.items() if "v_proj" not in k}, "shape mismatch"),
        (
            lambda s: {**s, "layers.1.q_proj.lora_B.weight": s["layers.1.q_proj.lora_B.weight"] * float("nan")},
            "non-finite",
        ),
        (lambda s: {**s, "layers.1.q_proj.lora_B.weight": torch.full((OUT, 4), float("inf"))}, "non-finite"),
    ],
)
def test_an_update_that_does_not_fit_is_rejected_with_its_reason(corrupt, reason: str) -> None:
    reference = adapter(4, 0)
    check_update(adapter(4, 1), reference, "bolt")
    with pytest.raises(UpdateRejected, match=f"bolt: {reason}"):
        check_update(corrupt(adapter(4, 1)), reference, "bolt")


def honest_round(current: dict[str, torch.Tensor], count: int) -> list[TenantUpdate]:
    """Small, similar updates around `current`, as tenants training from it produce."""
    common = adapter(4, 99, 0.05)
    return [
        TenantUpdate(f"t{i}", {k: current[k] + common[k] + adapter(4, 10 + i, 0.01)[k] for k in current}, 20)
        for i in range(count)
    ]


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(torch.linalg.vector_norm(a[k] - b[k]) ** 2 for k in a) ** 0.5)


@pytest.mark.parametrize("method", ["fedavg", "exact"])
def test_a_scaled_poisoned_update_is_norm_bounded(method: Literal["fedavg", "exact"]) -> None:
    current = adapter(4, 0, 0.1)
    honest = honest_round(current, 3)
    clean, _ = merge(honest, current, 2.0, AggregationSection(method=method))
    poisoned = honest[:2] + [
        TenantUpdate("t2", {k: current[k] + (v - current[k]) * 50 for k, v in honest[2].state.items()}, 20)
    ]
    unprotected, _ = merge(poisoned, current, 2.0, AggregationSection(method=method, norm_bound=0))
    protected, notes = merge(poisoned, current, 2.0, AggregationSection(method=method))
    assert "norm bounded" in notes["t2"]
    assert distance(protected, clean) < 0.1 * distance(unprotected, clean)


def test_krum_leaves_out_a_noise_update_and_trimmed_mean_ignores_it() -> None:
    current = adapter(4, 0, 0.1)
    honest = honest_round(current, 4)
    noise = TenantUpdate("noisy", {k: torch.randn_like(v) * 3 for k, v in current.items()}, 20)
    clean, _ = merge(honest, current, 2.0, AggregationSection(norm_bound=0))
    krum, notes = merge(honest + [noise], current, 2.0, AggregationSection(robust="krum", norm_bound=0))
    assert notes == {"noisy": "left out by Krum"}
    assert distance(krum, clean) < 1e-5
    trimmed, _ = merge(honest + [noise], current, 2.0, AggregationSection(robust="trimmed_mean", trim_fraction=0.2))
    plain, _ = merge(honest + [noise], current, 2.0, AggregationSection(norm_bound=0))
    assert distance(trimmed, clean) < 0.2 * distance(plain, clean)


def test_differential_privacy_clips_each_update_and_adds_calibrated_noise() -> None:
    current = adapter(4, 0, 0.1)
    updates = [
        TenantUpdate(f"t{i}", {k: current[k] + adapter(4, 20 + i, scale)[k] for k in current}, 10 * (i + 1))
        for i, scale in enumerate((0.01, 0.02, 5.0))
    ]
    clipped, _ = merge(updates, current, 2.0, AggregationSection(dp_clipping_norm=0.5))
    assert distance(clipped, current) <= 0.5 + 1e-6  # a mean of updates each clipped to 0.5
    noisy, _ = merge(updates, current, 2.0, AggregationSection(dp_clipping_norm=0.5, dp_noise_multiplier=1.0))
    noise = torch.cat([(noisy[k] - clipped[k]).flatten() for k in sorted(current)])
    assert float(noise.std()) == pytest.approx(1.0 * 0.5 / 3, rel=0.1)  # z · C / n, as Flower computes it


def test_exact_merge_keeps_the_global_shapes_when_the_rank_exceeds_the_module() -> None:
    wide = {k: torch.zeros(40, IN) if "lora_A" in k else torch.zeros(OUT, 40) for k in adapter(40, 0)}  # 40 > 20
    updates = [TenantUpdate("a", adapter(40, 1), 10), TenantUpdate("b", adapter(40, 2), 10)]
    merged = exact_merge(updates, wide, 1.0)
    assert all(merged[k].shape == wide[k].shape for k in wide)
    for module, target in dense_sum(updates, 1.0).items():
        assert torch.allclose(dense_deltas(merged, 1.0)[module], target, atol=1e-3)


def test_a_tenant_claiming_a_billion_samples_does_not_own_the_round() -> None:
    current = adapter(4, 0, 0.0)
    honest = honest_round(current, 3)
    liar = replace(
        honest[2], tenant="liar", num_examples=10**9, state={k: current[k] + adapter(4, 99, 0.5)[k] for k in current}
    )
    capped, notes = cap_shares(honest[:2] + [liar], max_share=0.5, outlier_factor=10)
    shares = {u.tenant: u.num_examples / sum(c.num_examples for c in capped) for u in capped}
    assert shares["liar"] == pytest.approx(0.5, abs=1e-6) and shares["t0"] == pytest.approx(0.25, abs=1e-6)
    assert "outlier" in notes["liar"] and "capped at 50%" in notes["liar"] and "t0" not in notes
    merged, merge_notes = merge(
        honest[:2] + [liar], current, 2.0, AggregationSection(method="fedavg", norm_bound=0, max_share=0.5)
    )
    uncapped, _ = merge(
        honest[:2] + [liar], current, 2.0, AggregationSection(method="fedavg", norm_bound=0, max_share=1.0)
    )
    assert distance(uncapped, liar.state) < 1e-3 < distance(merged, liar.state)  # uncapped, the liar is the merge
    assert "capped" in merge_notes["liar"]
