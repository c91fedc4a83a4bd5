"""HQ's merge at 7B scale, on the CPU: fedloop's exact merge against Flower's FedAvg on the same updates.

Ten tenants' adapters shaped like LoRA r=16 on every linear layer of Qwen2-7B
(28 layers, hidden 3584, 4 KV heads of 128, MLP 18944: 40,370,176 floats,
161.5 MB each in float32), with random values (A uniform, B normal: the time
and memory of a merge do not depend on the values), and the current global
adapter of the same shape.

Arms, each in a fresh process so that its peak memory is its own:
- fedloop: `server.aggregation.merge` with the default `[aggregation]` settings,
  what HQ runs each round: shares capped, distances bounded, then the exact
  merge (SVD of Σ pᵢ·BᵢAᵢ from the stacked factors, re-factorised to r=16).
- baseline: Flower's `aggregate_arrayrecords` (the weighted mean FedAvg uses)
  on the same adapters as ArrayRecords, which averages A and B separately.

Printed per arm: wall time of the merge, the process's peak resident memory
(the ten inputs included: HQ holds them too) and its growth over the inputs
(each arm holds its inputs its own way: torch tensors, Flower's Arrays), then
fedloop / baseline time. Goal: fedloop under 60 s and 8 GB.

Run: .venv/bin/python scripts/bench_hq_merge.py [--tenants 10] [--rank 16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from process_memory import resident_bytes, start_peak_count
from random_models import DecoderShape, qwen2_config

from fedloop.server.aggregation import TenantUpdate, lora_scaling, merge
from fedloop.shared.adapter import AdapterState
from fedloop.shared.settings import AggregationSection, LoraSettings

QWEN2_7B = DecoderShape.of(qwen2_config("qwen2-7b"))


def random_adapter(shape: DecoderShape, rank: int, seed: int) -> AdapterState:
    """A LoRA adapter of `rank` on every linear layer of `shape`, under PEFT's saved keys, random float32 values."""
    generator = torch.Generator().manual_seed(seed)
    state: AdapterState = {}
    for module, (fan_in, fan_out) in shape.modules().items():
        bound = fan_in**-0.5
        state[f"{module}.lora_A.weight"] = (torch.rand(rank, fan_in, generator=generator) * 2 - 1) * bound
        state[f"{module}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 1e-3
    return state


@dataclass(frozen=True)
class ArmResult:
    """What one arm measured."""

    seconds: float
    peak_bytes: int
    inputs_bytes: int


def run_arm(arm: str, tenants: int, rank: int, results: multiprocessing.Queue[ArmResult]) -> None:
    """Build the inputs, then time one merge and record the peak memory it reached."""
    current = random_adapter(QWEN2_7B, rank, seed=0)
    states = [random_adapter(QWEN2_7B, rank, seed=index + 1) for index in range(tenants)]
    counts = [20 + 7 * index for index in range(tenants)]
    if arm == "fedloop":
        updates = [
            TenantUpdate(f"tenant-{index}", state, count)
            for index, (state, count) in enumerate(zip(states, counts, strict=True))
        ]
        del states
        settings, scaling = AggregationSection(), lora_scaling(LoraSettings().alpha, rank)
        inputs = start_peak_count()
        started = time.perf_counter()
        merged, _ = merge(updates, current, scaling, settings)
    else:
        records = [
            RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": count})})
            for state, count in zip(states, counts, strict=True)
        ]
        del states
        inputs = start_peak_count()
        started = time.perf_counter()
        merged_record = aggregate_arrayrecords(records, "num-examples")
        merged = merged_record.to_torch_state_dict()
    seconds = time.perf_counter() - started
    assert merged.keys() == current.keys() and all(merged[k].shape == current[k].shape for k in current)
    results.put(ArmResult(seconds, resident_bytes("VmHWM"), inputs))


def measure(arm: str, tenants: int, rank: int) -> ArmResult:
    """Run one arm in a fresh process and return what it measured."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[ArmResult] = context.Queue()
    process = context.Process(target=run_arm, args=(arm, tenants, rank, results))
    process.start()
    result = results.get()
    process.join()
    return result


def main() -> None:
    """Measure both arms and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    floats = sum(args.rank * (fan_in + fan_out) for fan_in, fan_out in QWEN2_7B.modules().values())
    print(
        f"{args.tenants} adapters shaped like Qwen2-7B LoRA r={args.rank} on all linear layers: "
        f"{len(QWEN2_7B.modules())} modules, {floats:,} floats = {floats * 4 / 1e6:.1f} MB each in float32; "
        f"random values (time and memory do not depend on them); {torch.get_num_threads()} CPU threads"
    )
    gb = 1e9
    results = {}
    for arm in ("fedloop", "baseline"):
        result = measure(arm, args.tenants, args.rank)
        results[arm] = result
        label = "fedloop exact merge (default [aggregation])" if arm == "fedloop" else "Flower FedAvg mean of A and B"
        print(
            f"  {label:<44} {result.seconds:7.1f} s   peak {result.peak_bytes / gb:5.2f} GB "
            f"(inputs {result.inputs_bytes / gb:.2f} GB, +{(result.peak_bytes - result.inputs_bytes) / gb:.2f} GB)"
        )
    fedloop, baseline = results["fedloop"], results["baseline"]
    print(
        f"fedloop / FedAvg time: x{fedloop.seconds / baseline.seconds:.1f} (the exact merge runs a QR and an SVD per "
        f"module where FedAvg adds); goal fedloop under 60 s and 8 GB peak: "
        f"{'met' if fedloop.seconds < 60 and fedloop.peak_bytes < 8 * gb else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
