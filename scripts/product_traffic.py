"""A product for a deployed tenant: drafts through its OpenAI-compatible endpoint, outcomes back by draft id.

For trying a deployment before real users arrive (the operator guides' "from
nothing to a released version" walk-through uses it). It is a product, not part
of fedloop: it reaches the tenant only through the public draft endpoint, as
docs/tenant-operator.md shows. Prompts and the replies users want are the
demo's embedded support questions, each tenant index with its own preferred
reply style (src/fedloop/simulation/product.py), or, with `--data`, the Bitext
customer-support CSV (one non-IID category split per tenant, as in
scripts/bench_hit_rate.py); its users judge each draft by the benchmark's fixed
rule (accept, edit into the wanted reply, or reject and write it).

Printed: one line per 10 drafts, then drafts and accepts per version that drafted.

Run: .venv/bin/python scripts/product_traffic.py --endpoint http://127.0.0.1:8000 --tenant-index 0 \
        --drafts 60 [--first 0] [--api-key KEY] [--data bitext_customer_support_4514.csv]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import httpx
from bench_hit_rate import JUDGEMENT, split_tenants
from openai import OpenAI

from fedloop.client.ingest.recorder import Action
from fedloop.simulation.product import STYLES, Conversation, TenantTraffic


def product_conversations(
    data: Path | None, tenant_index: int, first: int, count: int, seed: int
) -> list[Conversation]:
    """Conversations `first` .. `first + count` of one tenant's users: the demo's questions, or the CSV's split."""
    if data is None:
        style = sorted(STYLES)[tenant_index % len(STYLES)]
        return TenantTraffic(f"tenant-{tenant_index}", style, seed).conversations(first + count, batch=0)[first:]
    if not data.exists():
        raise SystemExit(f"--data {data} not found: pass the path of bitext_customer_support_4514.csv, or leave it out")
    split = split_tenants(data, "category", first + count, 0, 0, seed)[tenant_index]
    return split.train[first : first + count]


def main() -> None:
    """Send `--drafts` conversations of one tenant's split and report what its users did."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="the tenant's serve.address as a URL")
    parser.add_argument("--api-key", default="unused-on-loopback", help="a key of serve.api_keys_file (off loopback)")
    parser.add_argument("--data", type=Path, help="the Bitext customer-support CSV (default: the demo's questions)")
    parser.add_argument("--tenant-index", type=int, default=0, help="which tenant's users (0-3)")
    parser.add_argument("--drafts", type=int, default=60, help="conversations to send")
    parser.add_argument("--first", type=int, default=0, help="skip this many conversations of the split")
    parser.add_argument("--users", type=int, default=400, help="distinct users the conversations cycle through")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not 0 <= args.tenant_index < 4:
        raise SystemExit(f"--tenant-index {args.tenant_index}: give 0 to 3 (the users of 4 tenants)")
    conversations = product_conversations(args.data, args.tenant_index, args.first, args.drafts, args.seed)
    client = OpenAI(base_url=f"{args.endpoint}/v1", api_key=args.api_key)
    served: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    started = time.monotonic()
    with httpx.Client(headers={"Authorization": f"Bearer {args.api_key}"}, timeout=120) as http:
        for index, conversation in enumerate(conversations, 1):
            user = f"customer-{(args.first + index) % args.users}"
            draft = client.chat.completions.create(
                model="fedloop",
                user=user,
                max_tokens=args.max_tokens,
                messages=[{"role": "user", "content": conversation.prompt}],
            )
            decision = JUDGEMENT.decide(draft.choices[0].message.content or "", conversation)
            http.post(
                f"{args.endpoint}/v1/drafts/{draft.id}/outcome",
                json={"action": decision.action.value, "final_text": decision.final_text, "dwell_ms": 4000},
            ).raise_for_status()
            served[draft.model] += 1
            accepted[draft.model] += decision.action is Action.ACCEPT
            if index % 10 == 0 or index == len(conversations):
                print(f"  {index}/{len(conversations)} drafts ({time.monotonic() - started:.0f} s)", flush=True)
    for version, count in served.items():
        print(f"{version}: {count} drafts, {accepted[version]} accepted as drafted")


if __name__ == "__main__":
    main()
