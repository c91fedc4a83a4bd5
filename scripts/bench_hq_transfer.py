"""A 7B-sized adapter through the real Deployment Engine: HQ and one tenant on loopback, TLS and node auth on.

The model has Qwen2-7B's layer shapes (hidden 3584, 28 query and 4 KV heads,
MLP 18944) but one decoder layer and SmolLM2's vocabulary, with random
weights: a full 7B base model would not fit twice (HQ and tenant) in this
machine's memory, and the adapter does not depend on the layer count. LoRA on
its 7 linear layers at rank 64 x 28 = 1792 holds exactly the floats of r=64 on
all 28 layers of Qwen2-7B (161,480,704: 645.9 MB in float32), so every message
carries what a 7B tenant's does: HQ seals the global adapter to the tenant for
training and for evaluation, the tenant seals its update back, HQ verifies,
merges and registers it. Baseline arm: the same deployment, model and feedback
at rank 64 (one layer's share, 23 MB).

Printed per arm: the bytes each way in round 1, round 1's wall time (first
training message to evaluations back), the whole `fedloop run`, then
7B-sized / baseline. A message-size failure would fail the run.

Run: .venv/bin/python scripts/bench_hq_transfer.py [--model models/smollm2-135m-instruct] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from random_models import DecoderShape, qwen2_config, write_random_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback deployment harness the deployment tests use
from deployment_helpers import ALL_LINEAR, run_one_tenant_round  # noqa: E402

QWEN2_7B_LAYERS = 28
EDITED_DRAFTS = 4


@dataclass(frozen=True)
class RoundFigures:
    """What one arm measured."""

    rank: int
    bytes_to_hq: int
    bytes_to_tenant: int
    round_seconds: float
    run_seconds: float


def run_round(root: Path, model_dir: Path, rank: int) -> RoundFigures:
    """Deploy HQ and tenant `acme` under `root`, run one round at LoRA `rank`, and read what it measured."""
    root.mkdir(parents=True)
    run = run_one_tenant_round(root, model_dir, rank, EDITED_DRAFTS, timeout=3600)
    if run.returncode != 0:
        raise SystemExit(f"fedloop run failed at rank {rank}:\n{run.log}")
    summary = json.loads((root / "hq-home" / "summary.json").read_text())
    round_1 = summary["rounds"][1]
    if round_1["contributors"] != {"acme": EDITED_DRAFTS} or round_1["refused"] or "acme" not in round_1["evaluation"]:
        raise SystemExit(f"round 1 did not complete at rank {rank}: {json.dumps(round_1)[:2000]}")
    return RoundFigures(
        rank, round_1["bytes_to_hq"]["acme"], round_1["bytes_to_tenant"]["acme"], round_1["duration_s"], run.seconds
    )


def main() -> None:
    """Build the model, run both arms, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct", help="tokenizer")
    parser.add_argument("--keep", type=Path, default=None, help="keep the deployments' files here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedloop-transfer-") as scratch:
        work = args.keep or Path(scratch)
        config = qwen2_config("qwen2-7b", num_hidden_layers=1, vocab_size=49152, tie_word_embeddings=True)
        model_dir = write_random_model(config, args.model, work / "qwen2-7b-shaped-1-layer", torch.float32)
        large_rank = 64 * QWEN2_7B_LAYERS
        floats = large_rank * sum(fan_in + fan_out for fan_in, fan_out in DecoderShape.of(config).modules().values())
        print(
            f"model: Qwen2-7B layer shapes, 1 layer, random weights; LoRA rank {large_rank} on {len(ALL_LINEAR)} "
            f"modules = {floats:,} floats ({floats * 4 / 1e6:.1f} MB float32), the size of r=64 on all 28 layers"
        )
        figures = {}
        for label, rank in (("7B-sized", large_rank), ("baseline", 64)):
            figures[label] = run_round(work / label, model_dir, rank)
            f = figures[label]
            print(
                f"  {label:<9} rank {rank:>5}: to HQ {f.bytes_to_hq / 1e6:7.1f} MB, to tenant "
                f"{f.bytes_to_tenant / 1e6:7.1f} MB, round 1 {f.round_seconds:6.1f} s, whole run "
                f"{f.run_seconds:6.1f} s",
                flush=True,
            )
        large, small = figures["7B-sized"], figures["baseline"]
        print(
            f"7B-sized / baseline: bytes to HQ x{large.bytes_to_hq / small.bytes_to_hq:.1f}, round time "
            f"x{large.round_seconds / small.round_seconds:.2f} (+{large.round_seconds - small.round_seconds:.0f} s); "
            "no message-size failure"
        )


if __name__ == "__main__":
    main()
