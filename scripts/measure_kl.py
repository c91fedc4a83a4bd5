"""How far one federated round moves the model: the KL and forgetting gates' values, to calibrate their bounds.

The KL gate (src/fedloop/client/evaluate/drift.py) refuses a version whose mean per-token
KL(candidate || serving) over the tenant's held-out finals plus fedloop's
general texts is above `evaluation.kl_bound`; the forgetting gate refuses a
version that raises the general-text NLL by more than `forgetting_bound`.
A bound must let the default recipe's rounds through (a version that wins on
held-out feedback must be able to ship) and refuse a version that moves the
model much further than a round of that recipe does.

Protocol:
- Data: the Bitext customer-support CSV (`--data`), split into non-IID tenants
  by category as in scripts/bench_hit_rate.py; each tenant's product asks the
  tenant's draft service for a draft for `--samples` prompts (the issue's
  deployment: 40 per tenant) and reports the simulated users' decisions; the
  training examples are what the tenant's curation made of that feedback.
- Every round: each tenant runs the recipe from the global version, HQ merges
  with fedloop's default aggregation, and each tenant's gates measure the new
  global version against the previous one (the version 0 the first round starts
  from is the base model).
- Recipes: the shipped default ([train] defaults: SFT, 8 steps of 8, lr 2e-3,
  LoRA r=8 on q/v), and two that move the model much further, as the KL gate's
  "baseline" of what it must refuse: 10x the learning rate, and 10x the steps.

Printed: each round's KL and NLL increase per tenant, and each recipe's largest
KL over the default bound (headroom ratio).

Run: .venv/bin/python scripts/measure_kl.py --data ../shared/data/bitext/bitext_customer_support_4514.csv
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_hit_rate import TenantData, feedback_examples, split_tenants

from fedloop.client.evaluate.drift import forgetting_gate, general_texts, mean_token_kl
from fedloop.client.serve.transformers_engine import TransformersEngine
from fedloop.client.store.api import TrainingExample
from fedloop.client.tenant_settings import EvaluationSection, TenantSettings
from fedloop.client.train.recipe import run_recipe
from fedloop.server.aggregation import TenantUpdate, lora_scaling, merge
from fedloop.shared.adapter import AdapterState, adapter_state, attach_lora, load_adapter_state, load_base_model
from fedloop.shared.settings import AggregationSection, LoraSettings, TrainSection

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = TrainSection()
RECIPES = {
    "default": DEFAULT_TRAIN,
    "10x learning rate": DEFAULT_TRAIN.model_copy(update={"learning_rate": DEFAULT_TRAIN.learning_rate * 10}),
    "10x steps": DEFAULT_TRAIN.model_copy(update={"max_steps": DEFAULT_TRAIN.max_steps * 10, "epochs": 100}),
}


def gate_texts(tenant: TenantData) -> list[str]:
    """What the KL gate measures on: the tenant's held-out prompts with their finals, and the general texts."""
    return [f"{c.prompt}\n{c.preferred_reply}" for c in tenant.held_out] + general_texts()


def run_rounds(
    model,
    tokenizer,
    init: AdapterState,
    tenants: list[TenantData],
    data: list[list[TrainingExample]],
    recipe: TrainSection,
    rounds: int,
    seed: int,
    lora: LoraSettings,
) -> list[list[tuple[float, float]]]:
    """Each round's (KL to the previous global version, general NLL increase) for every tenant."""
    scaling = lora_scaling(lora.alpha, lora.rank)
    current, measured = init, []
    for round_ in range(1, rounds + 1):
        updates = []
        for index, examples in enumerate(data):
            load_adapter_state(model, current)
            run_recipe(model, tokenizer, examples, recipe, seed * 1000 + round_ * 10 + index)
            updates.append(TenantUpdate(tenants[index].name, adapter_state(model), len(examples)))
        merged, _ = merge(updates, current, scaling, AggregationSection())
        bound = EvaluationSection().forgetting_bound
        row = [
            (
                mean_token_kl(model, tokenizer, merged, current, gate_texts(t)),
                forgetting_gate(model, tokenizer, merged, bound).value,
            )
            for t in tenants
        ]
        measured.append(row)
        print(
            f"  round {round_}: "
            + "; ".join(f"{t.name} KL {kl:.4f}, NLL {nll:+.1%}" for t, (kl, nll) in zip(tenants, row, strict=True)),
            flush=True,
        )
        current = merged
    return measured


def main() -> None:
    """Measure every recipe's rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the Bitext customer-support CSV")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--tenants", type=int, default=2, help="tenants in the federation (at most 4)")
    parser.add_argument("--samples", type=int, default=40, help="drafts with feedback per tenant")
    parser.add_argument("--held-out", type=int, default=20, help="held-out finals per tenant for the KL gate")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the default recipe")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"--data {args.data} not found: pass the path of bitext_customer_support_4514.csv")
    if not 2 <= args.tenants <= 4:
        raise SystemExit(f"--tenants {args.tenants}: give 2 to 4 (a round needs two tenants, the split makes 4)")
    started = time.monotonic()
    lora = LoraSettings()
    tenants = split_tenants(args.data, "category", args.samples, 0, args.held_out, args.seed)[: args.tenants]
    base_model, tokenizer = load_base_model(args.model)
    model = attach_lora(base_model, lora, args.seed)
    init = adapter_state(model)
    engine = TransformersEngine(args.model, lora)
    with tempfile.TemporaryDirectory() as work:
        data = [feedback_examples(t, engine, init, Path(work), TenantSettings().held_out_tokens) for t in tenants]
    del engine
    print(
        f"{args.tenants} tenants, {[len(d) for d in data]} training examples from {args.samples} drafts each, "
        f"{args.held_out} held-out finals each ({time.monotonic() - started:.0f} s)",
        flush=True,
    )
    bound = EvaluationSection().kl_bound
    results = {}
    for name, recipe in RECIPES.items():
        rounds = args.rounds if name == "default" else 1
        print(
            f"{name}: lr {recipe.learning_rate:g}, {recipe.max_steps} steps of {recipe.batch_size}, {rounds} round(s)",
            flush=True,
        )
        results[name] = run_rounds(model, tokenizer, init, tenants, data, recipe, rounds, args.seed, lora)
    print(f"\nwall time: {(time.monotonic() - started) / 60:.1f} min")
    print(f"| recipe | round | KL to previous version (per tenant) | general NLL increase | KL / kl_bound {bound} |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        for round_, row in enumerate(rows, 1):
            kls = [kl for kl, _ in row]
            print(
                f"| {name} | {round_} | "
                + ", ".join(f"{kl:.4f}" for kl in kls)
                + " | "
                + ", ".join(f"{nll:+.1%}" for _, nll in row)
                + f" | {max(kls) / bound:.2f} |"
            )
    default_max = max(kl for row in results["default"] for kl, _ in row)
    runaway_min = min(kl for name, rows in results.items() if name != "default" for row in rows for kl, _ in row)
    print(
        f"\ndefault recipe: largest KL {default_max:.4f} ({'passes' if default_max <= bound else 'REFUSED by'} "
        f"kl_bound {bound}); 10x recipes: smallest KL {runaway_min:.4f} "
        f"({'refused' if runaway_min > bound else 'PASSES'}); runaway / default ratio {runaway_min / default_max:.1f}"
    )


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
