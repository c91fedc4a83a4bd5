"""The online loop on its own: HQ runs continuously, two deployed tenants, a product with concurrent users.

On loopback with the Deployment Engine and the tiny model: `fedloop hq up`,
`fedloop tenant up` for acme and bolt (draft endpoints on), and
`fedloop run --continuous`. A product script drives concurrent users through
each tenant's draft endpoint and reports what they did with every draft. The
test plays the world the product lives in, by version, as the product sees it
in each reply's `model`:

- the base model's drafts are accepted 30 % of the time;
- v0001 (the first round) drafts well (90 %) until it is promoted; then it
  turns worse (10 %), as if the product had changed under it;
- after round 1, bolt's users send poisoned finals (garbage edits); v0002,
  trained on them, drafts badly (5 %).

Nothing else moves the loop. Within the bounded time: round 1 starts on its
own from the feedback counts; v0001 goes canary -> widened -> promoted (guard)
by the sequential test; the guard rolls it back when it turns worse; round 2
starts on its own; v0002 is refused or rolled back automatically at both
tenants; and each store holds exactly the events the product sent.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from deployment_helpers import (
    FEDLOOP,
    Federation,
    free_port,
    listening,
    provision,
    start_hq,
    start_tenant,
    tenant_store,
    wait_for,
    write_tenant_config,
)

from fedloop.client.release.controller import ReleaseController
from fedloop.client.store.api import ReleaseRecord
from fedloop.client.tenant_settings import ReleaseSection

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

TENANTS = ("acme", "bolt")
POISONED = "bolt"
USERS_PER_TENANT = 40
CLIENTS_PER_TENANT = 3
MIN_NEW_SAMPLES = 60
PAUSE_S = 0.2
DEADLINE_S = 270
QUESTIONS = [
    "Where is my parcel?",
    "Can I change my delivery address?",
    "How do I return a jacket?",
    "My invoice shows the wrong amount.",
    "Is the blue model back in stock?",
]
RELEASE = """
[release]
canary_share = 0.3
widened_share = 0.5
holdback_share = 0.3
canary_dwell_h = 0.0015    # 5.4 s at 30 %
promote_after_h = 0.003    # promoted no earlier than 11 s after its canary began
guard_h = 0.05             # 3 minutes of guard
mixture_scale = 0.5
min_drafts_per_arm = 15
min_users_per_arm = 5
decide_every_outcomes = 5
decide_every_s = 1.0
[evaluation]
held_out_share = 0.1
min_held_out = 1
max_held_out = 16
kl_bound = 1000000.0
forgetting_bound = 1000000.0
degenerate_bound = 0.99
max_new_tokens = 4
"""


def write_settings(path: Path, model: Path) -> None:
    path.write_text(f"""
[federation]
run_name = "soak"
tenants = {json.dumps(list(TENANTS))}
round_timeout_s = 120
enrol_timeout_s = 30
[paths]
model = "{model}"
[lora]
rank = 4
alpha = 8
[train]
max_steps = 2
batch_size = 4
max_seq_len = 48
[aggregation]
min_tenants = 2
[schedule]
min_new_samples = {MIN_NEW_SAMPLES}
min_tenants = 2
max_interval_s = 0
poll_s = 2.0
max_rounds = 2
""")


@dataclass
class World:
    """What users do with a version's drafts, and what the product sent (events the stores must hold)."""

    turned_worse: set[tuple[str, str]] = field(default_factory=set)  # (tenant, version) promoted, then worse
    poisoning: set[str] = field(default_factory=set)  # tenants whose users send garbage finals
    sent: Counter = field(default_factory=Counter)  # tenant -> events the product recorded
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept_rate(self, tenant: str, version: str) -> float:
        """The world's truth for a draft of `version` at `tenant`."""
        if version.startswith("v0001"):
            return 0.10 if (tenant, version) in self.turned_worse else 0.90
        if version.startswith("v0002"):
            return 0.05
        return 0.30


def product(world: World, tenant: str, port: int, stop: threading.Event, seed: int) -> None:
    """One product client: users ask for a draft, then accept, edit or reject it."""
    rng = random.Random(seed)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as http:
        while not stop.wait(PAUSE_S):  # a user pauses between drafts: the rounds need the CPU too
            user = f"{tenant}-customer-{rng.randrange(USERS_PER_TENANT)}"
            question = rng.choice(QUESTIONS)
            reply = http.post(
                "/chat/completions",
                json={
                    "model": "fedloop",
                    "user": user,
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": question}],
                },
            )
            if reply.status_code != 200:
                with world.lock:
                    world.failures.append(f"{tenant} draft: {reply.status_code} {reply.text[:200]}")
                continue
            body = reply.json()
            with world.lock:
                world.sent[tenant] += 1
                rate = world.accept_rate(tenant, body["model"])
                poisoned = tenant in world.poisoning
            draw = rng.random()
            if draw < rate:
                outcome = {"action": "accept"}
            elif poisoned:
                outcome = {"action": "edit", "final_text": f"zq{rng.randrange(10**6)} xx ## {rng.randrange(10**6)}"}
            elif draw < rate + (1 - rate) / 2:
                outcome = {"action": "edit", "final_text": f"About '{question}': it is sorted, thank you."}
            else:
                outcome = {"action": "reject", "final_text": "We are on it and will write back today."}
            answer = http.post(f"/drafts/{body['id']}/outcome", json={**outcome, "dwell_ms": 1500})
            with world.lock:
                if answer.status_code == 200:
                    world.sent[tenant] += 1
                else:
                    world.failures.append(f"{tenant} outcome: {answer.status_code} {answer.text[:200]}")


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[Federation, World, dict]]:
    root = tmp_path_factory.mktemp("soak")
    federation = Federation(root, free_port())
    provision(root, TENANTS)
    write_settings(root / "settings.toml", tiny_model_dir)
    world, stop, threads, seen = World(), threading.Event(), [], {}
    started = time.monotonic()
    try:
        start_hq(federation, TENANTS)
        ingest_ports = {tenant: free_port() for tenant in TENANTS}
        for tenant, port in ingest_ports.items():  # both start at once; then wait for both
            federation.serve_ports[tenant] = serve_port = free_port()
            config = write_tenant_config(root, tenant, f"{tenant}-home", port, serve_port=serve_port)
            config.write_text(config.read_text() + RELEASE)
            start_tenant(federation, tenant, config, None)
        for tenant, port in ingest_ports.items():
            process, log = federation.processes[tenant]
            wait_for(lambda p=port: listening(p), f"{tenant}'s FeedbackService", log, process)
        run, run_log = federation.start(
            "run", "run", "--continuous", "--settings", "settings.toml", "--config", "hq.toml"
        )
        for tenant in TENANTS:
            wait_for(lambda t=tenant: _ready(federation, t), f"{tenant}'s draft endpoint", run_log, run)
            for client in range(CLIENTS_PER_TENANT):
                thread = threading.Thread(
                    target=product, args=(world, tenant, federation.serve_ports[tenant], stop, hash((tenant, client)))
                )
                thread.start()
                threads.append(thread)
        wait_for(lambda: "round 1 starts" in run_log.read_text(), "round 1 from the feedback counts", run_log, run, 120)
        seen["round 1 started after s"] = time.monotonic() - started
        wait_for(
            lambda: (
                "round 1: offline hit rate" in run_log.read_text()
                or "round 1: no tenant has held-out" in run_log.read_text()
            ),
            "round 1's evaluation",
            run_log,
            run,
            150,
        )
        with world.lock:
            world.poisoning.add(POISONED)  # from now on, bolt's users send garbage finals: round 2 trains on them
        while time.monotonic() - started < DEADLINE_S:
            done = [_loop_done(root, tenant, world) for tenant in TENANTS]  # every tenant's world, every second
            if all(done) and run.poll() is not None:
                break
            time.sleep(1.0)
        seen["finished after s"] = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        run.wait(timeout=60)
        yield federation, world, seen
    finally:
        stop.set()
        federation.stop()


def _ready(federation: Federation, tenant: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{federation.serve_ports[tenant]}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _records(root: Path, tenant: str) -> tuple[list[ReleaseRecord], dict[str, str]]:
    """A tenant's release history and the versions it declined (refused or rolled back), read from its store."""
    store = tenant_store(root, tenant)
    try:
        return store.versions.release_history(), ReleaseController(store, ReleaseSection()).declined()
    finally:
        store.close()


def _loop_done(root: Path, tenant: str, world: World) -> bool:
    """Whether the scenario ran its course at `tenant`: the world turns v0001 worse once it is promoted (guard)."""
    records, declined = _records(root, tenant)
    for record in records:
        if record.action == "guard" and record.serving and record.serving.startswith("v0001"):
            with world.lock:
                world.turned_worse.add((tenant, record.serving))
    guard_rolled_back = any(r.action == "rollback" and r.reason.startswith("automatic (guard:") for r in records)
    return guard_rolled_back and any(v.startswith("v0002") for v in declined)


def test_rounds_start_on_their_own_and_every_release_decision_is_made_by_the_loop(soak) -> None:
    federation, world, seen = soak
    root = federation.root
    print(seen)
    log = (root / "run.log").read_text()
    assert "continuous run: round 1 starts: 2 tenants have" in log and "continuous run: round 2 starts" in log
    assert not world.failures, world.failures[:5]
    for tenant in TENANTS:
        records, declined = _records(root, tenant)
        print(tenant, [(r.action, r.serving, r.canary, r.reason[:60]) for r in records], declined)
        first = [r.action for r in records if "v0001" in f"{r.serving} {r.canary}"]
        assert first[:3] == ["canary", "widen", "guard"], (tenant, first)  # promoted by the test, through the ramp
        assert any(r.action == "rollback" and r.reason.startswith("automatic (guard:") for r in records), tenant
        assert any(v.startswith("v0001") for v in declined) and any(v.startswith("v0002") for v in declined), tenant
        store = tenant_store(root, tenant)
        try:
            actors = {e.actor for e in store.audit_log.entries() if e.action.startswith("release-")}
            assert actors <= {"release-controller", "fedloop"}, actors  # no operator moved the pointer
            assert store.drafts.count_events() == world.sent[tenant]  # every event the product sent, once
        finally:
            store.close()
    schedule = json.loads((root / "hq-home" / "schedule.json").read_text())
    assert schedule["rounds_done"] >= 1 and schedule["min_new_samples"] == MIN_NEW_SAMPLES
    assert subprocess_ok(root)


def subprocess_ok(root: Path) -> bool:
    """`fedloop status --hq` reports the continuous run's schedule."""
    import subprocess

    done = subprocess.run([FEDLOOP, "status", "--hq", "hq.toml"], cwd=root, capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and "continuous_run.reason" in done.stdout
