"""Hit-rate benchmark on real support data: base vs local-only vs fedloop federated vs centralized.

Protocol (fixed before any result was seen; see docs/evaluation.md):
- Data: the Bitext customer-support CSV (`--data`), split into 4 tenants by
  category (non-IID: categories sorted by size, dealt round-robin), each with
  `n_train` training prompts and `n_eval` held-out prompts.
- Replies are truncated to their first sentence, at most 120 characters, both
  as training targets and as the reference a simulated user wants (CPU budget).
- Simulated user rule: similarity = rapidfuzz ratio (case-folded) between the
  reference and the draft cut to the reference's length; >= 0.6 accept,
  >= 0.35 edit, else reject. Hit rate = share of accepts.
- Training feedback is produced the product's way: each tenant runs (its own
  store and keys, the base model released as its serving version), its
  simulated product asks the tenant's draft service for a draft for each
  training prompt and reports what the simulated user did by draft id; the
  training examples are what the tenant's ingestion and curation made of that
  feedback (client/samples/curation.py); rejected drafts become DPO pairs.
- Same budget for every arm: each trained model gets rounds x steps optimiser
  steps of batch `batch_size` (local: on its own samples; federated: `steps`
  per round per tenant from the global version, merged by fedloop's default
  aggregation (the exact merge: SVD of the sample-weighted sum of B·A, with
  the default norm bound); centralized: on all tenants' samples pooled).
- Every arm runs the same recipe (`--method`, default SFT; `sft_then_dpo`
  adds up to as many DPO steps on the rejected drafts after the SFT steps).
- Ablations on the same split (default protocol only): the federated arm with
  the other recipe (SFT then DPO, or SFT when `--method sft_then_dpo`), and the
  federated arm with FedAvg of A and B instead of the exact merge.
- `--quick`: 24 training / 16 held-out prompts per tenant, 2 rounds x 4 steps,
  no ablations: a check of the pipeline end to end in under 10 minutes, not a
  measurement (one held-out prompt is 6.25 points).

Run: .venv/bin/python scripts/bench_hit_rate.py --data ../shared/data/bitext/bitext_customer_support_4514.csv [--quick]
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from fedloop.client.feedback import Action
from fedloop.client.release.controller import ReleaseController
from fedloop.client.samples.curation import training_examples
from fedloop.client.serve.drafts import DraftService
from fedloop.client.serve.engine import DraftEngine
from fedloop.client.simulated_product import Conversation, Decision, SimulatedProduct, UserJudgement
from fedloop.client.store_api import InstalledVersion, TrainingExample
from fedloop.client.tenant_runtime import open_tenant
from fedloop.client.tenant_settings import EvaluationSection, ServeSection, TenantSection, TenantSettings
from fedloop.client.train.generate import generate_replies
from fedloop.client.train.recipe import run_recipe
from fedloop.server.aggregation import TenantUpdate, lora_scaling, merge
from fedloop.shared.adapter import (AdapterState, LoraSettings, adapter_state, adapter_to_bytes, attach_lora,
                                    load_adapter_state, load_base_model)
from fedloop.shared.keys import init_keys
from fedloop.shared.settings import AggregationSection, TrainSection

ROOT = Path(__file__).resolve().parents[1]
TENANTS = 4
REFERENCE_CHARS = 120
METHOD_LABELS = {"sft": "SFT", "sft_then_dpo": "SFT+DPO"}


class CutJudgement(UserJudgement):
    """The benchmark's user: compares the reference with the draft cut to the reference's length."""

    def decide(self, draft: str, conversation: Conversation) -> Decision:
        """Judge the opening of the draft, as long as the reply the user wants."""
        return super().decide(draft[:len(conversation.preferred_reply)], conversation)


JUDGEMENT = CutJudgement(accept_threshold=0.6, edit_threshold=0.35)


def first_sentence(text: str) -> str:
    """The reply's first sentence, at most REFERENCE_CHARS characters."""
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return sentence[:REFERENCE_CHARS].strip()


@dataclass
class TenantData:
    """One tenant's categories, training prompts and held-out conversations."""

    name: str
    categories: list[str]
    train: list[Conversation]
    held_out: list[Conversation]


def split_tenants(path: Path, n_train: int, n_eval: int, seed: int) -> list[TenantData]:
    """Non-IID tenants by category, each with its own train and held-out prompts."""
    frame = pd.read_csv(path)
    missing = {"instruction", "response", "category"} - set(frame.columns)
    if missing:
        raise SystemExit(f"{path}: missing column(s) {sorted(missing)}; expected the Bitext support CSV")
    ordered = frame["category"].value_counts().index.tolist()
    rng = random.Random(seed)
    tenants = []
    for index in range(TENANTS):
        categories = ordered[index::TENANTS]
        rows = frame[frame["category"].isin(categories)].sample(frac=1.0, random_state=seed + index)
        conversations = [Conversation(f"t{index}-u{i % 40}", str(r.instruction), first_sentence(str(r.response)))
                         for i, r in enumerate(rows.itertuples())]
        rng.shuffle(conversations)
        tenants.append(TenantData(f"tenant{index}", categories, conversations[:n_train],
                                  conversations[n_train:n_train + n_eval]))
    return tenants


def feedback_examples(tenant: TenantData, engine: DraftEngine, init: AdapterState, work: Path,
                      max_new_tokens: int) -> list[TrainingExample]:
    """The tenant's simulated product drafts through the tenant's draft service; its curation makes the samples."""
    keys = work / tenant.name / "keys"
    settings = TenantSettings(tenant=TenantSection(tenant.name, str(keys), str(work / tenant.name / "data")),
                              evaluation=EvaluationSection(held_out_share=0.0),  # the benchmark holds out its own
                              serve=ServeSection(max_new_tokens=max_new_tokens))
    runtime = open_tenant(settings, init_keys("tenant", tenant.name, keys))
    try:
        runtime.store.install_version(InstalledVersion("base", 0, None, "base"), adapter_to_bytes(init))
        ReleaseController(runtime.store, settings.release).offer("base", "the base model serves")
        product = SimulatedProduct(tenant.name, DraftService(runtime, engine), JUDGEMENT, max_tokens=max_new_tokens)
        served = product.serve(tenant.train, 1)
        if served.refused:
            print(f"  {tenant.name}: {sum(served.refused.values())} drafts refused {dict(served.refused)}", flush=True)
        return training_examples(runtime.store, settings.curation)
    finally:
        runtime.close()


def evaluate(model, tokenizer, state: AdapterState, tenant: TenantData, max_new_tokens: int) -> dict[str, float]:
    """Hit rate of an adapter on a tenant's held-out prompts."""
    load_adapter_state(model, state)
    drafts = generate_replies(model, tokenizer, [c.prompt for c in tenant.held_out], max_new_tokens)
    decisions = [JUDGEMENT.decide(d, c) for d, c in zip(drafts, tenant.held_out)]
    count = len(decisions)
    return {"hit-rate": sum(d.action is Action.ACCEPT for d in decisions) / count,
            "mean-similarity": sum(d.similarity for d in decisions) / count, "num-examples": count}


def train_from(model, tokenizer, start: AdapterState, examples: list[TrainingExample], settings: TrainSection,
               steps: int, seed: int) -> AdapterState:
    """Train `steps` optimiser steps from adapter `start`; returns the new adapter."""
    load_adapter_state(model, start)
    run_recipe(model, tokenizer, examples, replace(settings, max_steps=steps, epochs=10_000), seed)
    return adapter_state(model)


def federated(model, tokenizer, init: AdapterState, data: list[list[TrainingExample]], settings: TrainSection,
              rounds: int, steps: int, seed: int, lora: LoraSettings,
              merge_method: str = AggregationSection.method) -> AdapterState:
    """fedloop's loop in-process: each round every tenant trains from the global version, then HQ merges.

    The merge is fedloop's own (server/aggregation.py, default robust settings) with `merge_method`.
    """
    global_state = init
    scaling = lora_scaling(lora.alpha, lora.rank)
    for round_ in range(1, rounds + 1):
        updates = [TenantUpdate(f"tenant{i}", train_from(model, tokenizer, global_state, examples, settings, steps,
                                                         seed + 100 * round_ + i), len(examples), scaling)
                   for i, examples in enumerate(data)]
        global_state, _ = merge(updates, global_state, scaling, AggregationSection(method=merge_method))
        print(f"  federated ({merge_method}) round {round_}/{rounds} done", flush=True)
    return global_state


def main() -> None:
    """Run every arm and print the result table; write the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the Bitext customer-support CSV")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="small protocol, about 10 minutes on 2 cores")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "hit_rate.png")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--method", choices=tuple(METHOD_LABELS), default="sft",
                        help="the training recipe of every arm (the ablation uses the other one)")
    parser.add_argument("--dpo-lr", type=float, default=0.0,
                        help="learning rate of the DPO phase (train.dpo_learning_rate; 0 = the SFT rate 2e-3)")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"--data {args.data} not found: pass the path of bitext_customer_support_4514.csv")
    n_train, n_eval, rounds, steps = (24, 16, 2, 4) if args.quick else (64, 32, 3, 8)
    max_new_tokens = 32
    settings = TrainSection(batch_size=8, learning_rate=2e-3, max_seq_len=128, curriculum=(0.8, 0.0),
                            method=args.method, dpo_learning_rate=args.dpo_lr)
    ablation_method = "sft" if args.method != "sft" else "sft_then_dpo"
    lora = LoraSettings(rank=8, alpha=16, target_modules=("q_proj", "v_proj"))
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.monotonic()

    tenants = split_tenants(args.data, n_train, n_eval, args.seed)
    base_model, tokenizer = load_base_model(args.model)
    model = attach_lora(base_model, lora, args.seed)
    init = adapter_state(model)
    print(f"protocol: {'quick' if args.quick else 'default'}; {TENANTS} tenants x {n_train} train / {n_eval} "
          f"held-out prompts; {rounds} rounds x {steps} steps, batch {settings.batch_size}; "
          f"recipe {METHOD_LABELS[args.method]}, DPO lr {settings.dpo_learning_rate or settings.learning_rate:g}",
          flush=True)
    engine = DraftEngine(args.model, lora)
    with tempfile.TemporaryDirectory() as work:
        data = [feedback_examples(t, engine, init, Path(work), max_new_tokens) for t in tenants]
    del engine
    print(f"  feedback collected through each tenant's draft service: {[len(d) for d in data]} training examples "
          f"({time.monotonic() - started:.0f} s)", flush=True)

    results: dict[str, list[dict[str, float]]] = {}
    results["base"] = [evaluate(model, tokenizer, init, t, max_new_tokens) for t in tenants]
    results["local"] = [evaluate(model, tokenizer,
                                 train_from(model, tokenizer, init, data[i], settings, rounds * steps, args.seed + i),
                                 t, max_new_tokens) for i, t in enumerate(tenants)]
    print(f"  local done ({time.monotonic() - started:.0f} s)", flush=True)
    fed_state = federated(model, tokenizer, init, data, settings, rounds, steps, args.seed, lora)
    results["federated"] = [evaluate(model, tokenizer, fed_state, t, max_new_tokens) for t in tenants]
    pooled = [e for examples in data for e in examples]
    central_state = train_from(model, tokenizer, init, pooled, settings, rounds * steps, args.seed)
    results["centralized"] = [evaluate(model, tokenizer, central_state, t, max_new_tokens) for t in tenants]
    print(f"  centralized done ({time.monotonic() - started:.0f} s)", flush=True)
    if not args.quick:  # the ablations run in the default protocol only (the quick one must fit 10 minutes)
        ablation_state = federated(model, tokenizer, init, data, replace(settings, method=ablation_method), rounds,
                                   steps, args.seed, lora)
        results[f"federated {METHOD_LABELS[ablation_method]}"] = [
            evaluate(model, tokenizer, ablation_state, t, max_new_tokens) for t in tenants]
        fedavg_state = federated(model, tokenizer, init, data, settings, rounds, steps, args.seed, lora, "fedavg")
        results["federated FedAvg(A,B)"] = [evaluate(model, tokenizer, fedavg_state, t, max_new_tokens)
                                            for t in tenants]
    report(tenants, results, time.monotonic() - started, args.plot)
    if not args.quick:
        print(f"ablation (federated): {METHOD_LABELS[args.method]} {mean_hit_rate(results['federated']):.1%} vs "
              f"{METHOD_LABELS[ablation_method]} "
              f"{mean_hit_rate(results[f'federated {METHOD_LABELS[ablation_method]}']):.1%}")
        print(f"ablation (merge, {METHOD_LABELS[args.method]}): exact {mean_hit_rate(results['federated']):.1%} vs "
              f"FedAvg of A and B {mean_hit_rate(results['federated FedAvg(A,B)']):.1%}")


def mean_hit_rate(per_tenant: list[dict[str, float]]) -> float:
    """Mean hit rate over tenants."""
    return sum(r["hit-rate"] for r in per_tenant) / len(per_tenant)


def report(tenants: list[TenantData], results: dict[str, list[dict[str, float]]], elapsed: float, plot: Path) -> None:
    """Print the per-tenant table, the goals, and write the PNG plot."""
    arms = list(results)
    print(f"\nwall time: {elapsed / 60:.1f} min")
    print("| tenant (categories) | " + " | ".join(arms) + " | fed uplift | local uplift | central uplift |")
    print("|---" * (len(arms) + 4) + "|")
    rows = []
    for i, tenant in enumerate(tenants):
        hits = [results[a][i]["hit-rate"] for a in arms]
        base, local, fed, central = (results[a][i]["hit-rate"] for a in ("base", "local", "federated", "centralized"))
        rows.append((fed - base, local - base, central - base))
        print(f"| {tenant.name} ({', '.join(c.lower() for c in tenant.categories)}) | "
              + " | ".join(f"{h:.1%}" for h in hits)
              + f" | {(fed - base) * 100:+.1f} | {(local - base) * 100:+.1f} | {(central - base) * 100:+.1f} |")
    means = {a: mean_hit_rate(results[a]) for a in arms}
    sims = {a: sum(r["mean-similarity"] for r in results[a]) / len(tenants) for a in arms}
    fed_up, local_up, central_up = (sum(r[k] for r in rows) / len(rows) for k in range(3))
    print("| **mean** | " + " | ".join(f"**{means[a]:.1%}**" for a in arms)
          + f" | **{fed_up * 100:+.1f}** | {local_up * 100:+.1f} | {central_up * 100:+.1f} |")
    print("| mean similarity | " + " | ".join(f"{sims[a]:.3f}" for a in arms) + " | | | |")
    ratio = fed_up / central_up if central_up > 0 else float("nan")
    print(f"\nfederated/centralized uplift ratio: {ratio:.2f}")
    print(f"goal mean federated uplift >= +20 pts: {'met' if fed_up >= 0.20 else 'missed'} ({fed_up * 100:+.1f})")
    worse = [t.name for t, r in zip(tenants, rows) if r[0] < r[1]]
    print(f"goal federated >= local for every tenant: {'met' if not worse else 'missed for ' + ', '.join(worse)}")
    print(f"goal federated uplift >= 0.9 x centralized: {'met' if ratio >= 0.9 else 'missed'} ({ratio:.2f})")
    write_plot(tenants, results, plot)
    print(f"plot: {plot}")


def write_plot(tenants: list[TenantData], results: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Grouped bars: hit rate per tenant per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results)
    width = 0.8 / len(arms)
    figure, axis = plt.subplots(figsize=(9, 4))
    for k, arm in enumerate(arms):
        axis.bar([i + k * width for i in range(len(tenants))], [r["hit-rate"] * 100 for r in results[arm]], width,
                 label=arm)
    axis.set_xticks([i + width * (len(arms) - 1) / 2 for i in range(len(tenants))], [t.name for t in tenants])
    axis.set_ylabel("hit rate on held-out prompts (%)")
    axis.set_title("Draft hit rate by training arm (SmolLM2-135M-Instruct, Bitext, 4 non-IID tenants)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
