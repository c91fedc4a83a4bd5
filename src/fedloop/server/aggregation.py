"""Merging tenants' LoRA adapters into a global one: FedAvg, the exact merge, and robust merging.

- `fedavg`: sample-weighted average of A and B separately (the common baseline;
  the average of products is not the product of averages, so it is inexact).
- `exact_merge`: ΔW = s·Σ pᵢ·BᵢAᵢ per module (s = alpha / rank, the same for
  every tenant: the federation fixes one LoRA shape), re-factorised by
  truncated SVD into that rank: A = Vᵣᵀ (orthonormal rows, never dead),
  B = Uᵣ·Σᵣ / s.
- Robust merging before either: every update's distance to the current global
  adapter is bounded (`norm_bound` × the round's median distance), and
  optionally Flower's trimmed mean or (Multi-)Krum decides what is averaged.
- Optional central differential privacy (`dp_clipping_norm` > 0), with
  Flower's own fixed-clipping helpers: each tenant's update (its adapter minus
  the current one) is clipped to the norm, the clipped updates are averaged
  with equal weights, and Gaussian noise of std `dp_noise_multiplier` ×
  clipping norm / tenants is added. What this does and does not guarantee:
  docs/federation.md.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update, compute_stdv

from fedloop.shared.adapter import LORA_A, LORA_B, AdapterState
from fedloop.shared.settings import AggregationSection


class UpdateRejected(ValueError):
    """A tenant's adapter cannot be merged; `reason` is `shape-or-dtype` or `non-finite`."""

    def __init__(self, message: str, reason: str = "shape-or-dtype") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TenantUpdate:
    """One tenant's trained adapter (in the federation's LoRA shape), its sample count and its dataset version."""

    tenant: str
    state: AdapterState
    num_examples: int
    dataset_version: str = ""


def check_update(state: AdapterState, reference: AdapterState, tenant: str) -> None:
    """Raise UpdateRejected unless `state` has the reference's modules, float tensors of its shapes, all finite."""
    if state.keys() != reference.keys():
        missing, extra = sorted(reference.keys() - state.keys()), sorted(state.keys() - reference.keys())
        raise UpdateRejected(
            f"{tenant}: shape mismatch: adapter modules differ (missing {missing[:2]}, unexpected {extra[:2]})"
        )
    for key, tensor in state.items():
        expected = reference[key]
        if not tensor.is_floating_point() or tensor.dtype != expected.dtype:
            raise UpdateRejected(f"{tenant}: dtype mismatch at {key}: {tensor.dtype}, expected {expected.dtype}")
        if tensor.shape != expected.shape:
            raise UpdateRejected(
                f"{tenant}: shape mismatch at {key}: {tuple(tensor.shape)}, expected {tuple(expected.shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise UpdateRejected(f"{tenant}: non-finite value in {key}", "non-finite")


def lora_pairs(state: AdapterState) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) per adapted module, keyed by the module's name."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for part in (LORA_A, LORA_B):
            if part in key:
                module, suffix = key.split(part, 1)
                pairs.setdefault(f"{module}\0{suffix}", {})[part] = tensor
    incomplete = [m.split("\0")[0] for m, p in pairs.items() if len(p) != 2]
    if incomplete:
        raise UpdateRejected(f"modules without both LoRA factors: {incomplete[:3]}")
    return {module: (p[LORA_A], p[LORA_B]) for module, p in pairs.items()}


def dense_deltas(state: AdapterState, scaling: float) -> dict[str, torch.Tensor]:
    """ΔW = s·B·A per module, in float64."""
    return {m: scaling * (b.double() @ a.double()) for m, (a, b) in lora_pairs(state).items()}


def fedavg(states: list[tuple[AdapterState, int]]) -> AdapterState:
    """Sample-weighted average of adapters with identical keys and shapes."""
    total = sum(n for _, n in states)
    keys = states[0][0].keys()
    for state, _ in states:
        if state.keys() != keys or any(state[k].shape != states[0][0][k].shape for k in keys):
            raise ValueError("updates have different adapter layouts; all tenants must use the same LoRA settings")
    return {k: torch.stack([state[k].to(torch.float32) * (n / total) for state, n in states]).sum(0) for k in keys}


Svd = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U, Σ, Vᴴ of one module's ΔW


def factor_svd(left: torch.Tensor, right: torch.Tensor, rank: int | None = None) -> Svd:
    """The SVD of left @ right (out×R times R×in) without forming it: QR of each factor, SVD of the R×R core;
    only the leading `rank` singular triplets when `rank` is given.

    Exact, and O((out + in)·R²) instead of O(out·in·min(out, in)) for the dense matrix.
    """
    q_left, r_left = torch.linalg.qr(left)
    q_right, r_right = torch.linalg.qr(right.T)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
    return q_left @ u[:, :rank], s[:rank], vh[:rank] @ q_right.T


def refactorise(module: str, svd: Svd, template: AdapterState, scaling: float) -> AdapterState:
    """One module's truncated SVD into the template's rank: A = Vᵣᵀ, B = Uᵣ·Σᵣ / s (the module's two entries).

    A rank above what ΔW can hold (min(out, in)) is filled with zero factors, so the
    result always has the template's shapes.
    """
    u, s, vh = svd
    name, suffix = module.split("\0")
    key_a, key_b = f"{name}{LORA_A}{suffix}", f"{name}{LORA_B}{suffix}"
    kept = min(template[key_a].shape[0], s.shape[0])
    a = torch.zeros(template[key_a].shape, dtype=torch.float64)
    b = torch.zeros(template[key_b].shape, dtype=torch.float64)
    a[:kept], b[:, :kept] = vh[:kept], u[:, :kept] * s[:kept] / scaling
    return {key_a: a.to(template[key_a].dtype).contiguous(), key_b: b.to(template[key_b].dtype).contiguous()}


def template_rank(module: str, template: AdapterState) -> int:
    """The LoRA rank of `module` in `template` (rows of its A factor)."""
    name, suffix = module.split("\0")
    return template[f"{name}{LORA_A}{suffix}"].shape[0]


def exact_merge(updates: list[TenantUpdate], template: AdapterState, scaling: float) -> AdapterState:
    """ΔW = s·Σ pᵢ·BᵢAᵢ per module (s = `scaling`), re-factorised into `template`'s rank.

    The sum is never formed densely: its SVD comes from the stacked factors [s·pᵢBᵢ] and [Aᵢ]. Modules are merged
    one at a time, so beyond its inputs a merge holds one module's stacks (what keeps a 7B-shaped merge of ten
    tenants in memory: docs/sizing.md).
    """
    total = sum(u.num_examples for u in updates)
    weights = [scaling * u.num_examples / total for u in updates]
    pairs = [lora_pairs(u.state) for u in updates]
    merged: AdapterState = {}
    for module in pairs[0]:
        left = torch.cat([p[module][1].double() * w for p, w in zip(pairs, weights, strict=True)], dim=1)
        right = torch.cat([p[module][0].double() for p in pairs], dim=0)
        merged |= refactorise(module, factor_svd(left, right, template_rank(module, template)), template, scaling)
    return merged


def update_distance(state: AdapterState, reference: AdapterState) -> float:
    """The L2 distance between two adapters of the same layout, tensor by tensor (nothing flattened)."""
    squares = (float(torch.linalg.vector_norm(state[k].double() - reference[k].double())) ** 2 for k in reference)
    return math.sqrt(sum(squares))


def bound_norms(
    updates: list[TenantUpdate], current: AdapterState, factor: float
) -> tuple[list[TenantUpdate], dict[str, float]]:
    """Scale each update's distance to `current` down to `factor` × the round's median distance.

    Returns the bounded updates and, for each tenant that was scaled, its original distance / bound.
    """
    if factor <= 0 or not updates:
        return updates, {}
    distances = [update_distance(u.state, current) for u in updates]
    bound = factor * float(np.median(distances))
    bounded, scaled = [], {}
    for update, distance in zip(updates, distances, strict=True):
        if distance > bound > 0:
            shrink = bound / distance
            state = {k: current[k] + (v - current[k]) * shrink for k, v in update.state.items()}
            bounded.append(replace(update, state=state))
            scaled[update.tenant] = distance / bound
        else:
            bounded.append(update)
    return bounded, scaled


def krum_select(updates: list[TenantUpdate], malicious: int) -> list[TenantUpdate]:
    """Flower's Multi-Krum: keep the n - f updates closest to the others."""
    keep = len(updates) - malicious
    if keep < 1 or len(updates) < 2 * malicious + 3:
        raise ValueError(
            f"Krum needs at least {2 * malicious + 3} updates for {malicious} malicious tenant(s), got {len(updates)}"
        )
    contents = [RecordDict({"arrays": ArrayRecord(dict(sorted(u.state.items())))}) for u in updates]
    chosen = select_multikrum(contents, malicious, keep)
    return [u for u, c in zip(updates, contents, strict=True) if any(c is x for x in chosen)]


def trimmed_mean(updates: list[TenantUpdate], fraction: float) -> AdapterState:
    """Flower's coordinate-wise trimmed mean of the adapters (unweighted, as the method requires)."""
    keys = updates[0].state.keys()
    return {
        k: torch.from_numpy(trim_mean(np.stack([u.state[k].numpy() for u in updates]), fraction)).to(
            updates[0].state[k].dtype
        )
        for k in keys
    }


def trimmed_mean_exact(
    updates: list[TenantUpdate], fraction: float, template: AdapterState, scaling: float
) -> AdapterState:
    """Coordinate-wise trimmed mean of the dense ΔW per module, re-factorised into the global rank.

    Forms every tenant's dense ΔW of a module and its full SVD, one module at a time: at 7B one MLP module's SVD
    takes about 30 s on 2 cores and ten tenants' dense ΔW of it about 11 GB, so use `robust = "krum"` or
    `method = "fedavg"` there (docs/sizing.md).
    """
    pairs = [lora_pairs(u.state) for u in updates]
    merged: AdapterState = {}
    for module in pairs[0]:  # one module's dense ΔW per tenant at a time
        deltas = [scaling * (p[module][1].double() @ p[module][0].double()).numpy() for p in pairs]
        trimmed = torch.from_numpy(trim_mean(np.stack(deltas), fraction))
        merged |= refactorise(module, torch.linalg.svd(trimmed, full_matrices=False), template, scaling)
    return merged


def private_mean(
    updates: list[TenantUpdate], current: AdapterState, clipping_norm: float, noise_multiplier: float
) -> AdapterState:
    """Central DP with fixed clipping (Flower's helpers): clip each update, average equally, add Gaussian noise."""
    keys = sorted(current)
    reference = [current[k].double().numpy() for k in keys]
    clipped = []
    for update in updates:
        arrays = [update.state[k].double().numpy().copy() for k in keys]
        compute_clip_model_update(arrays, reference, clipping_norm)
        clipped.append(arrays)
    mean = [np.mean([arrays[i] for arrays in clipped], axis=0) for i in range(len(keys))]
    if noise_multiplier > 0:
        add_gaussian_noise_inplace(mean, compute_stdv(noise_multiplier, clipping_norm, len(updates)))
    return {k: torch.from_numpy(m).to(current[k].dtype) for k, m in zip(keys, mean, strict=True)}


WEIGHT_UNITS = 1_000_000  # capped shares are carried as sample counts in parts per million


def cap_shares(
    updates: list[TenantUpdate], max_share: float, outlier_factor: float
) -> tuple[list[TenantUpdate], dict[str, str]]:
    """Cap each tenant's share of the sample-weighted merge at `max_share` (the excess goes to the others in
    proportion), and note tenants claiming more than `outlier_factor` x the median count of the round.

    Counts are what tenants report; the cap bounds what one tenant can buy with an inflated claim.
    """
    notes: dict[str, str] = {}
    counts = [u.num_examples for u in updates]
    median = statistics.median(counts)
    for update in updates:
        if len(updates) > 2 and update.num_examples > outlier_factor * median:
            notes[update.tenant] = (
                f"claims {update.num_examples} samples, {update.num_examples / median:.0f}x the "
                f"round's median ({median:g}): outlier"
            )
    if max_share >= 1.0 or len(updates) < 2:
        return updates, notes
    cap = max(max_share, 1.0 / len(updates))  # below 1/n no weighting can satisfy the cap: equal shares
    shares = {u.tenant: u.num_examples / sum(counts) for u in updates}
    capped: set[str] = set()
    while True:  # water-filling: fix the capped tenants at `cap`, share the rest in proportion to the claims
        free = [u for u in updates if u.tenant not in capped]
        remaining = 1.0 - cap * len(capped)
        free_total = sum(u.num_examples for u in free)
        shares.update({u.tenant: remaining * u.num_examples / free_total for u in free})
        shares.update({tenant: cap for tenant in capped})
        over = {u.tenant for u in free if shares[u.tenant] > cap + 1e-12}
        if not over:
            break
        capped |= over
    for tenant in capped:
        notes[tenant] = (
            notes.get(tenant, "") + "; " if tenant in notes else ""
        ) + f"share of the merge capped at {cap:.0%} (aggregation.max_share)"
    return [replace(u, num_examples=max(1, round(shares[u.tenant] * WEIGHT_UNITS))) for u in updates], notes


def merge(
    updates: list[TenantUpdate], current: AdapterState, scaling: float, settings: AggregationSection
) -> tuple[AdapterState, dict[str, str]]:
    """The round's global adapter, and a note for each tenant whose update was capped, bounded or left out."""
    updates, notes = cap_shares(updates, settings.max_share, settings.outlier_factor)
    if settings.dp_clipping_norm > 0:
        return private_mean(updates, current, settings.dp_clipping_norm, settings.dp_noise_multiplier), notes
    updates, scaled = bound_norms(updates, current, settings.norm_bound)
    notes.update({t: f"norm bounded (distance {ratio:.1f}x the bound)" for t, ratio in scaled.items()})
    if settings.robust == "krum":
        kept = krum_select(updates, settings.krum_malicious)
        notes.update({u.tenant: "left out by Krum" for u in updates if u not in kept})
        updates = kept
    if settings.robust == "trimmed_mean":
        if settings.method == "exact":
            return trimmed_mean_exact(updates, settings.trim_fraction, current, scaling), notes
        return trimmed_mean(updates, settings.trim_fraction), notes
    if settings.method == "exact":
        return exact_merge(updates, current, scaling), notes
    return fedavg([(u.state, u.num_examples) for u in updates]), notes


def lora_scaling(alpha: float, rank: int) -> float:
    """PEFT's LoRA scaling s = alpha / rank."""
    if rank <= 0 or not math.isfinite(alpha):
        raise ValueError(f"invalid LoRA alpha {alpha} / rank {rank}")
    return alpha / rank
