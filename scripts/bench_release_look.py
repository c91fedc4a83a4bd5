"""A release look at a large canary window: the kept per-arm sums against re-reading the window.

A tenant store holds a canary window of `--drafts` decided drafts from
`--users` users (the canary on 30 % of them), plus `--drafts` decided drafts of
the 28 days before it (the covariates). fedloop's look (`ReleaseController.
compare()` on the service's controller) reads only the outcome and problem rows
added since its last look, each MAC-checked, and updates the per-arm sums; the
baseline is what every look cost before issue 30 and what a restarted service
pays once: reading and MAC-checking the whole window (a fresh controller's
first look). Between two looks `--new` outcomes arrive (the release loop
wakes every 20).

Printed: median and worst of `--repeat` looks for each, and the ratio
baseline / fedloop. Goal: a look at 30,000 drafts under 10 ms.

Run: .venv/bin/python scripts/bench_release_look.py [--drafts 30000] [--users 2000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from fedloop.client.release.controller import ReleaseController
from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import Action, DraftRecord, OutcomeRecord
from fedloop.client.tenant_settings import ReleaseSection
from fedloop.shared.keys import init_keys

DAY_MS = 86_400_000


class Traffic:
    """Writes decided drafts into a store as the FeedbackService would (sealed, MACed rows)."""

    def __init__(self, store: FeedbackStore, users: int, rng: random.Random) -> None:
        self.store, self.users, self.rng, self.count = store, users, rng, 0

    def decided(self, version: str, user: int, shown_at_ms: int) -> None:
        """One draft of `version` for `user`, shown at `shown_at_ms`, accepted or rejected or edited."""
        self.count += 1
        draft_id = f"d{self.count}"
        draft = DraftRecord(
            draft_id,
            f"user-{user}",
            f"session-{user}",
            "Where is my order?",
            "On its way.",
            version,
            "p1",
            0,
            shown_at_ms,
        )
        self.store.drafts.insert_draft(draft)
        action = self.rng.choice([Action.ACCEPT, Action.REJECT, Action.EDIT])
        self.store.drafts.insert_outcome(OutcomeRecord(draft_id, action, None, 1000, 1.0, shown_at_ms + 1000))


def describe(label: str, seconds: list[float]) -> str:
    """One table row: median and worst in milliseconds."""
    return f"| {label} | {statistics.median(seconds) * 1000:.2f} | {max(seconds) * 1000:.2f} |"


def main() -> None:
    """Fill a window, then time kept-sums looks against whole-window re-reads; print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drafts", type=int, default=30_000, help="decided drafts in the canary window")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--new", type=int, default=20, help="outcomes arriving between two looks")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-look-"))
    identity = init_keys("tenant", "acme", work / "keys")
    store = FeedbackStore(work / "feedback.db", identity.storage, identity.pseudonym_key)
    traffic = Traffic(store, args.users, random.Random(1))
    settings = ReleaseSection(canary_share=0.30, widened_share=0.30)
    controller = ReleaseController(store, settings)
    now = int(time.time() * 1000)
    controller.offer("v1", "bench")
    for _ in range(args.drafts):  # the 28 days before the canary: every user's covariate
        traffic.decided("v1", traffic.rng.randrange(args.users), now - traffic.rng.randrange(1, 28 * DAY_MS))
    controller.offer("v2", "bench")
    state = controller.state()
    assert state is not None

    def serve(count: int) -> None:
        for _ in range(count):
            user = traffic.rng.randrange(args.users)
            version = ReleaseController.route_in(state, f"user-{user}")
            traffic.decided(version, user, int(time.time() * 1000))

    serve(args.drafts)
    started = time.perf_counter()
    first = controller.compare()  # the service's first look reads the window once
    assert first is not None
    print(
        f"window: {first.canary.decided + first.control.decided:,} decided drafts of "
        f"{first.canary.users + first.control.users:,} users; first look {time.perf_counter() - started:.2f} s; "
        f"{args.repeat} looks each, {args.new} new outcomes before each",
        flush=True,
    )
    kept, reread = [], []
    for _ in range(args.repeat):
        serve(args.new)
        started = time.perf_counter()
        controller.compare()
        kept.append(time.perf_counter() - started)
        started = time.perf_counter()
        ReleaseController(store, settings).compare()
        reread.append(time.perf_counter() - started)
    print("| look | median ms | worst ms |\n|---|---|---|")
    print(describe("fedloop: kept per-arm sums, new rows only", kept))
    print(describe("baseline: re-read and MAC-check the whole window", reread))
    print(f"ratio baseline / fedloop (median): {statistics.median(reread) / statistics.median(kept):.0f}x")
    store.close()


if __name__ == "__main__":
    main()
