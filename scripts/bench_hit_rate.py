"""Hit-rate benchmark on real support data: base, local-only, federated, personalised, centralized.

Protocol (fixed before any result was seen; see docs/evaluation.md):
- Data: the Bitext customer-support CSV (`--data`), dealt into 4 tenants by a
  split rule (`--split`, each with `--seed`):
  `category`: whole categories, sorted by size, dealt round-robin (the split
  fedloop's recipe was tuned on); `intent`: intents shuffled and dealt
  round-robin, so a tenant holds parts of several categories; `dirichlet`:
  every intent's rows shared among the tenants in Dirichlet(0.5) proportions
  (label skew, as in FL benchmarks). Each tenant gets `n_train` training,
  `n_val` validation and `n_eval` held-out prompts.
- Replies are truncated to their first sentence, at most 120 characters, both
  as training targets and as the reference a simulated user wants (CPU budget).
- Simulated user rule: similarity = rapidfuzz ratio (case-folded) between the
  reference and the draft cut to the reference's length; >= 0.6 accept,
  >= 0.35 edit, else reject. Hit rate = share of accepts, with its 95 % Wilson
  interval; the mean over tenants is the pooled rate (equal prompts per
  tenant) with its interval. Arms are compared on the same prompts with a
  paired 95 % interval of the difference.
- Training feedback is produced the product's way: each tenant runs (its own
  store and keys, the base model released as its serving version), its
  simulated product asks the tenant's draft service for a draft for each
  training prompt and reports what the simulated user did by draft id; the
  training examples are what the tenant's ingestion and curation made of that
  feedback (src/fedloop/client/samples/curation.py); rejected drafts are the rejected side
  of DPO pairs and KTO's undesirable replies.
- Arms (every one SFT, lr 2e-3, batch 8, unless named otherwise):
  local: rounds x steps steps per tenant on its own samples;
  federated: fedloop's loop in-process, `steps` per round per tenant from the
  global version, merged by fedloop's default aggregation (the exact merge of
  B·A with the default norm bound); every tenant drafts with the global version;
  personalised: the federated version plus `personal_steps` local SFT steps per
  tenant (src/fedloop/client/train/personalise.py, "local_steps");
  FedSA: A shared and averaged, B kept by each tenant ("local_b"), each tenant
  drafts with the global A and its own B;
  fedloop (gated): per tenant, personalised when it drafts better than
  federated on the tenant's own validation prompts (never trained on) with 95 %
  confidence (sign test), else federated, as the tenant's gates choose in
  production;
  centralized (same steps per model): rounds x steps steps on all samples
  pooled; centralized (same total steps): rounds x steps x tenants steps, the
  optimiser steps the federated arm spends over all tenants;
  federated SFT+DPO / SFT+KTO: the federated arm with the preference phase
  after SFT at the shipped preference learning rate (train.dpo_learning_rate,
  train.kto_learning_rate).
- Headline: mean federated uplift over base, divided by the uplift of the
  stronger centralized arm.
- `--ablations` adds the federated arm with FedAvg of A and B instead of the
  exact merge, and personalisation with half and twice the local steps.
- `--quick`: 24 training / 8 validation / 16 held-out prompts per tenant,
  2 rounds x 4 steps, no preference arms: a check of the pipeline end to end,
  not a measurement.

Run: .venv/bin/python scripts/bench_hit_rate.py --data ../shared/data/bitext/bitext_customer_support_4514.csv \
         [--split intent] [--seed 7] [--quick] [--ablations]
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from fedloop.client.evaluate.candidates import drafts_better
from fedloop.client.evaluate.hit_rate import HitRate
from fedloop.client.ingest.recorder import Action
from fedloop.client.ingest.runtime import open_tenant
from fedloop.client.release.controller import ReleaseController
from fedloop.client.samples.curation import training_examples
from fedloop.client.serve.drafts import DraftService
from fedloop.client.serve.transformers_engine import TransformersEngine
from fedloop.client.store.api import InstalledVersion, TrainingExample
from fedloop.client.tenant_settings import EvaluationSection, ServeSection, TenantSection, TenantSettings
from fedloop.client.train.generate import generate_replies
from fedloop.client.train.personalise import local_part, local_steps, shared_part, with_local_part
from fedloop.client.train.recipe import run_recipe
from fedloop.server.aggregation import TenantUpdate, lora_scaling, merge
from fedloop.shared.adapter import (
    AdapterState,
    adapter_state,
    adapter_to_bytes,
    attach_lora,
    load_adapter_state,
    load_base_model,
)
from fedloop.shared.intervals import paired_difference_interval, wilson_interval
from fedloop.shared.keys import init_keys
from fedloop.shared.settings import AggregationSection, LoraSettings, TrainSection
from fedloop.simulation.product import Conversation, Decision, SimulatedProduct, UserJudgement

ROOT = Path(__file__).resolve().parents[1]
TENANTS = 4
REFERENCE_CHARS = 120
LOCAL, FEDERATED, PERSONAL, GATED = "local", "federated", "personalised", "fedloop (gated)"
CENTRAL_SAME, CENTRAL_TOTAL = "centralized (same steps per model)", "centralized (same total steps)"


class CutJudgement(UserJudgement):
    """The benchmark's user: compares the reference with the draft cut to the reference's length."""

    def decide(self, draft: str, conversation: Conversation) -> Decision:
        """Judge the opening of the draft, as long as the reply the user wants."""
        return super().decide(draft[: len(conversation.preferred_reply)], conversation)


JUDGEMENT = CutJudgement(accept_threshold=0.6, edit_threshold=0.35)


def first_sentence(text: str) -> str:
    """The reply's first sentence, at most REFERENCE_CHARS characters."""
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return sentence[:REFERENCE_CHARS].strip()


@dataclass
class TenantData:
    """One tenant's label, training prompts, validation prompts and held-out conversations."""

    name: str
    label: str
    train: list[Conversation]
    validation: list[Conversation]
    held_out: list[Conversation]


def _deal_groups(frame: pd.DataFrame, column: str, order: list[str]) -> list[pd.DataFrame]:
    return [frame[frame[column].isin(order[i::TENANTS])] for i in range(TENANTS)]


def split_category(frame: pd.DataFrame, seed: int) -> list[pd.DataFrame]:
    """Whole categories, largest first, dealt round-robin (the split the recipe was tuned on)."""
    return _deal_groups(frame, "category", frame["category"].value_counts().index.tolist())


def split_intent(frame: pd.DataFrame, seed: int) -> list[pd.DataFrame]:
    """Intents shuffled under `seed` and dealt round-robin: each tenant holds parts of several categories."""
    intents = sorted(frame["intent"].unique())
    random.Random(seed).shuffle(intents)
    return _deal_groups(frame, "intent", intents)


def split_dirichlet(frame: pd.DataFrame, seed: int, alpha: float = 0.5) -> list[pd.DataFrame]:
    """Every intent's rows shared among the tenants in Dirichlet(`alpha`) proportions (label skew)."""
    rng = np.random.default_rng(seed)
    parts: list[list[pd.DataFrame]] = [[] for _ in range(TENANTS)]
    for intent in sorted(frame["intent"].unique()):
        rows = frame[frame["intent"] == intent].sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
        cuts = (np.cumsum(rng.dirichlet([alpha] * TENANTS))[:-1] * len(rows)).astype(int)
        for index, part in enumerate(np.split(np.arange(len(rows)), cuts)):
            parts[index].append(rows.iloc[part])
    return [pd.concat(p) for p in parts]


SPLITS: dict[str, Callable[[pd.DataFrame, int], list[pd.DataFrame]]] = {
    "category": split_category,
    "intent": split_intent,
    "dirichlet": split_dirichlet,
}


def split_tenants(path: Path, split: str, n_train: int, n_val: int, n_eval: int, seed: int) -> list[TenantData]:
    """The corpus dealt into tenants by rule `split`, each with its own train, validation and held-out prompts."""
    frame = pd.read_csv(path)
    missing = {"instruction", "response", "category", "intent"} - set(frame.columns)
    if missing:
        raise SystemExit(f"{path}: missing column(s) {sorted(missing)}; expected the Bitext support CSV")
    tenants = []
    for index, rows in enumerate(SPLITS[split](frame, seed)):
        needed = n_train + n_val + n_eval
        if len(rows) < needed:
            raise SystemExit(
                f"--split {split} --seed {seed}: tenant{index} got {len(rows)} rows, fewer than the "
                f"{needed} prompts it needs; try another seed"
            )
        rows = rows.sample(frac=1.0, random_state=seed + index)
        conversations = [
            Conversation(f"t{index}-u{i % 40}", str(r.instruction), first_sentence(str(r.response)))
            for i, r in enumerate(rows.itertuples())
        ]
        top = rows["intent"].value_counts()
        label = f"{rows['intent'].nunique()} intents, most {top.index[0]} {top.iloc[0] / len(rows):.0%}"
        tenants.append(
            TenantData(
                f"tenant{index}",
                label,
                conversations[:n_train],
                conversations[n_train : n_train + n_val],
                conversations[n_train + n_val : needed],
            )
        )
    return tenants


def feedback_examples(
    tenant: TenantData, engine: TransformersEngine, init: AdapterState, work: Path, max_new_tokens: int
) -> list[TrainingExample]:
    """The tenant's simulated product drafts through the tenant's draft service; its curation makes the samples."""
    keys = work / tenant.name / "keys"
    settings = TenantSettings(
        tenant=TenantSection(name=tenant.name, keys_dir=str(keys), data_dir=str(work / tenant.name / "data")),
        evaluation=EvaluationSection(held_out_share=0.0),  # the benchmark holds out its own
        serve=ServeSection(max_new_tokens=max_new_tokens),
    )
    runtime = open_tenant(settings, init_keys("tenant", tenant.name, keys))
    try:
        runtime.store.versions.install(InstalledVersion("base", 0, None, "base"), adapter_to_bytes(init))
        ReleaseController(runtime.store, settings.release).offer("base", "the base model serves")
        product = SimulatedProduct(tenant.name, DraftService(runtime, engine), JUDGEMENT, max_tokens=max_new_tokens)
        served = product.serve(tenant.train, 1)
        if served.refused:
            print(f"  {tenant.name}: {sum(served.refused.values())} drafts refused {dict(served.refused)}", flush=True)
        return training_examples(runtime.store, settings.curation)
    finally:
        runtime.close()


def hits(model, tokenizer, state: AdapterState, conversations: list[Conversation], max_new_tokens: int) -> list[bool]:
    """Whether the simulated user accepts the adapter's draft, per conversation."""
    load_adapter_state(model, state)
    drafts = generate_replies(
        model, tokenizer, [({"role": "user", "content": c.prompt},) for c in conversations], max_new_tokens
    )
    return [JUDGEMENT.decide(d, c).action is Action.ACCEPT for d, c in zip(drafts, conversations, strict=True)]


def train_from(
    model,
    tokenizer,
    start: AdapterState,
    examples: list[TrainingExample],
    settings: TrainSection,
    steps: int,
    seed: int,
) -> AdapterState:
    """Train `steps` optimiser steps from adapter `start`; returns the new adapter."""
    load_adapter_state(model, start)
    run_recipe(model, tokenizer, examples, settings.model_copy(update={"max_steps": steps, "epochs": 10_000}), seed)
    return adapter_state(model)


def federated(
    model,
    tokenizer,
    init: AdapterState,
    data: list[list[TrainingExample]],
    settings: TrainSection,
    rounds: int,
    steps: int,
    seed: int,
    lora: LoraSettings,
    merge_method: Literal["exact", "fedavg"] = "exact",
    keep_b_local: bool = False,
) -> list[AdapterState]:
    """fedloop's loop in-process: each round every tenant trains from the global version, then HQ merges.

    The merge is fedloop's own (src/fedloop/server/aggregation.py, default robust settings) with `merge_method`. With
    `keep_b_local` (FedSA) each tenant trains from the global A and its own B and sends only its A (with the
    global B); it then drafts with the global A and its own B. Returns the adapter each tenant drafts with.
    """
    global_state = init
    own_b = [local_part(init) for _ in data]
    scaling = lora_scaling(lora.alpha, lora.rank)
    for round_ in range(1, rounds + 1):
        updates = []
        for i, examples in enumerate(data):
            start = with_local_part(global_state, own_b[i]) if keep_b_local else global_state
            trained = train_from(model, tokenizer, start, examples, settings, steps, seed + 100 * round_ + i)
            if keep_b_local:
                own_b[i], trained = local_part(trained), shared_part(trained, global_state)
            updates.append(TenantUpdate(f"tenant{i}", trained, len(examples)))
        global_state, _ = merge(updates, global_state, scaling, AggregationSection(method=merge_method))
        print(
            f"  federated ({merge_method}{', B local' if keep_b_local else ''}, {settings.method}) round "
            f"{round_}/{rounds} done",
            flush=True,
        )
    return [with_local_part(global_state, b) if keep_b_local else global_state for b in own_b]


@dataclass
class Arms:
    """Every arm's per-prompt accepts on each tenant's held-out prompts."""

    tenants: list[TenantData]
    accepts: dict[str, list[list[bool]]]

    def rate(self, arm: str, index: int) -> float:
        """An arm's hit rate on one tenant."""
        values = self.accepts[arm][index]
        return sum(values) / len(values)

    def pooled(self, arm: str) -> list[bool]:
        """An arm's accepts over every tenant's prompts (equal counts: the pooled rate is the mean)."""
        return [a for per_tenant in self.accepts[arm] for a in per_tenant]


def cell(values: list[bool]) -> str:
    """A hit rate with its 95 % Wilson interval, in points."""
    low, high = wilson_interval(sum(values), len(values))
    return f"{100 * sum(values) / len(values):.1f} [{100 * low:.0f}, {100 * high:.0f}]"


def difference(first: list[bool], second: list[bool]) -> str:
    """A paired difference in points with its 95 % interval."""
    mean, low, high = paired_difference_interval(first, second)
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def main() -> None:
    """Run every arm and print the result table; write the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the Bitext customer-support CSV")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--split", choices=tuple(SPLITS), default="intent", help="how tenants are dealt the corpus")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small protocol: a pipeline check, not a measurement")
    parser.add_argument("--ablations", action="store_true", help="also FedAvg(A,B) and other personalisation steps")
    parser.add_argument("--held-out", type=int, default=64, help="held-out prompts per tenant (default protocol)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default docs/hit_rate_<split>.png)")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"--data {args.data} not found: pass the path of bitext_customer_support_4514.csv")
    n_train, n_val, n_eval, rounds, steps = (24, 8, 16, 2, 4) if args.quick else (64, 16, args.held_out, 3, 8)
    personal_steps, max_new_tokens = steps, 32
    settings = TrainSection(batch_size=8, learning_rate=2e-3, max_seq_len=128, curriculum=(0.8, 0.0))
    lora = LoraSettings(rank=8, alpha=16, target_modules=("q_proj", "v_proj"))
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()

    def progress(what: str) -> None:
        print(f"  {what} ({time.monotonic() - started:.0f} s)", flush=True)

    tenants = split_tenants(args.data, args.split, n_train, n_val, n_eval, args.seed)
    base_model, tokenizer = load_base_model(args.model)
    model = attach_lora(base_model, lora, args.seed)
    init = adapter_state(model)
    print(
        f"protocol: {'quick' if args.quick else 'default'}; split {args.split}, seed {args.seed}; {TENANTS} "
        f"tenants x {n_train} train / {n_val} validation / {n_eval} held-out prompts; {rounds} rounds x {steps} "
        f"steps, batch {settings.batch_size}; personalised: +{personal_steps} local steps; DPO lr "
        f"{settings.dpo_learning_rate:g}, KTO lr {settings.kto_learning_rate:g}; torch threads "
        f"{torch.get_num_threads()}",
        flush=True,
    )
    engine = TransformersEngine(args.model, lora)
    with tempfile.TemporaryDirectory() as work:
        data = [feedback_examples(t, engine, init, Path(work), max_new_tokens) for t in tenants]
    del engine
    progress(
        f"feedback collected through each tenant's draft service: {[len(d) for d in data]} training examples, "
        f"{[sum(1 for e in d if e.rejected) for d in data]} with a rejected draft"
    )

    accepts: dict[str, list[list[bool]]] = {}

    def measure(arm: str, states: list[AdapterState]) -> None:
        accepts[arm] = [
            hits(model, tokenizer, s, t.held_out, max_new_tokens) for s, t in zip(states, tenants, strict=True)
        ]
        progress(f"{arm}: {cell([a for per in accepts[arm] for a in per])}")

    def personalise(global_states: list[AdapterState], count: int) -> list[AdapterState]:
        states = []
        for i, examples in enumerate(data):
            load_adapter_state(model, global_states[i])
            local_steps(model, tokenizer, examples, settings, count, args.seed + 500 + i)
            states.append(adapter_state(model))
        return states

    measure("base", [init] * TENANTS)
    measure(
        LOCAL,
        [train_from(model, tokenizer, init, data[i], settings, rounds * steps, args.seed + i) for i in range(TENANTS)],
    )
    fed_states = federated(model, tokenizer, init, data, settings, rounds, steps, args.seed, lora)
    measure(FEDERATED, fed_states)
    personal_states = personalise(fed_states, personal_steps)
    measure(PERSONAL, personal_states)
    chosen = []
    for i, tenant in enumerate(tenants):  # the tenant's gates on its own validation prompts, as in production
        scored = [
            HitRate(tuple(hits(model, tokenizer, s[i], tenant.validation, max_new_tokens)), 0.0)
            for s in (fed_states, personal_states)
        ]
        better = drafts_better(scored[1], scored[0], EvaluationSection().confidence)
        chosen.append(PERSONAL if better else FEDERATED)
    accepts[GATED] = [accepts[arm][i] for i, arm in enumerate(chosen)]
    progress(f"{GATED}: {chosen}")
    measure(
        "FedSA (B local)",
        federated(model, tokenizer, init, data, settings, rounds, steps, args.seed, lora, "fedavg", keep_b_local=True),
    )
    pooled = [e for examples in data for e in examples]
    measure(CENTRAL_SAME, [train_from(model, tokenizer, init, pooled, settings, rounds * steps, args.seed)] * TENANTS)
    measure(
        CENTRAL_TOTAL,
        [train_from(model, tokenizer, init, pooled, settings, rounds * steps * TENANTS, args.seed)] * TENANTS,
    )
    if not args.quick:
        for method, label in (("sft_then_dpo", "federated SFT+DPO"), ("sft_then_kto", "federated SFT+KTO")):
            measure(
                label,
                federated(
                    model,
                    tokenizer,
                    init,
                    data,
                    settings.model_copy(update={"method": method}),
                    rounds,
                    steps,
                    args.seed,
                    lora,
                ),
            )
    if args.ablations:
        measure(
            "federated FedAvg(A,B)",
            federated(model, tokenizer, init, data, settings, rounds, steps, args.seed, lora, "fedavg"),
        )
        for count in (personal_steps // 2, personal_steps * 2):
            measure(f"personalised +{count} steps", personalise(fed_states, count))
    report(
        Arms(tenants, accepts),
        time.monotonic() - started,
        args.plot or ROOT / "docs" / f"hit_rate_{args.split}.png",
        args.split,
    )


def report(arms: Arms, elapsed: float, plot: Path, split: str) -> None:
    """Print the per-tenant table with intervals, the goals, and write the PNG plot."""
    names = list(arms.accepts)
    print(f"\nwall time: {elapsed / 60:.1f} min; hit rate % [95 % interval] on each tenant's held-out prompts")
    print("| tenant | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for i, tenant in enumerate(arms.tenants):
        print(f"| {tenant.name} ({tenant.label}) | " + " | ".join(cell(arms.accepts[a][i]) for a in names) + " |")
    print("| **mean** | " + " | ".join(f"**{cell(arms.pooled(a))}**" for a in names) + " |")

    base = arms.pooled("base")
    print("\nuplift over base, points [95 % paired interval]:")
    uplifts = {}
    for name in names[1:]:
        uplifts[name] = paired_difference_interval(arms.pooled(name), base)[0]
        print(f"  {name}: {difference(arms.pooled(name), base)}")
    central = max(uplifts[CENTRAL_SAME], uplifts[CENTRAL_TOTAL])
    stronger = CENTRAL_SAME if uplifts[CENTRAL_SAME] >= uplifts[CENTRAL_TOTAL] else CENTRAL_TOTAL
    print("\nagainst local-only, per tenant, points [95 % paired interval]:")
    not_worse = {}
    for name in (FEDERATED, PERSONAL, GATED):
        diffs = [
            paired_difference_interval(arms.accepts[name][i], arms.accepts[LOCAL][i]) for i in range(len(arms.tenants))
        ]
        not_worse[name] = [d[2] >= 0 for d in diffs]
        print(
            f"  {name} - local: "
            + ", ".join(
                f"{t.name} {difference(arms.accepts[name][i], arms.accepts[LOCAL][i])}"
                for i, t in enumerate(arms.tenants)
            )
        )
    print(f"\ngoals (split {split}):")
    for name in (GATED, FEDERATED):
        losing = [t.name for t, ok in zip(arms.tenants, not_worse[name], strict=True) if not ok]
        print(
            f"  {name} >= local for every tenant (interval reaches 0): "
            f"{'met' if not losing else 'missed for ' + ', '.join(losing)}"
        )
    for name in (GATED, FEDERATED):
        print(
            f"  {name} mean uplift >= +20 points: {'met' if uplifts[name] >= 0.20 else 'missed'} "
            f"({difference(arms.pooled(name), base)})"
        )
        ratio = uplifts[name] / central if central > 0 else float("nan")
        print(
            f"  {name} uplift / {stronger} uplift ({100 * central:+.1f}) = {ratio:.2f} (goal >= 0.95: "
            f"{'met' if ratio >= 0.95 else 'missed'}); {name} - {stronger}: "
            f"{difference(arms.pooled(name), arms.pooled(stronger))}"
        )
    write_plot(arms, plot, split)
    print(f"plot: {plot}")


def write_plot(arms: Arms, path: Path, split: str) -> None:
    """Grouped bars with 95 % intervals: hit rate per tenant (and pooled) per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(arms.accepts)
    groups = [t.name for t in arms.tenants] + ["mean"]
    width = 0.85 / len(names)
    figure, axis = plt.subplots(figsize=(12, 4.5))
    colours = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]  # a ListedColormap
    for k, name in enumerate(names):
        cells = arms.accepts[name] + [arms.pooled(name)]
        rates = [100 * sum(c) / len(c) for c in cells]
        bounds = [wilson_interval(sum(c), len(c)) for c in cells]
        errors = [
            [r - 100 * lo for r, (lo, _) in zip(rates, bounds, strict=True)],
            [100 * hi - r for r, (_, hi) in zip(rates, bounds, strict=True)],
        ]
        axis.bar(
            [g + k * width for g in range(len(groups))],
            rates,
            width,
            yerr=errors,
            capsize=1.5,
            label=name,
            color=colours[k % len(colours)],
        )
    axis.set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(groups))], groups)
    axis.set_ylabel("hit rate on held-out prompts (%), 95 % CI")
    axis.set_title(f"Draft hit rate by arm (SmolLM2-135M-Instruct, Bitext, 4 tenants, split '{split}')")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
