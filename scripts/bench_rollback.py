"""Rollback is a pointer swap: how long until the previous version serves again, against re-installing it.

A tenant store holds installed versions (adapters the size of SmolLM2-135M's
LoRA r=8 on q/v, SM4-encrypted at rest). v1 serves, v2 is promoted, then v2 is
rolled back. fedloop's rollback appends one row to the release pointer table
and swaps the serving adapter in memory (the previous version's tensors are
kept by the serving process); the next draft's route lookup then names v1. The
baseline is what a rollback costs without a pointer: re-installing v1 from the
store (SM4-GCM decrypt, SM3 digest check, safetensors decode) and loading it
into the model. HQ's registry rollback (stable pointer swap) is timed too.

Printed: median and worst of `--repeat` rollbacks for each, and the ratio
baseline / fedloop. Goal: a rollback under 1 second.

Run: .venv/bin/python scripts/bench_rollback.py [--model models/smollm2-135m-instruct] [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fedloop.client.release.controller import ReleaseController
from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import InstalledVersion
from fedloop.client.tenant_settings import ReleaseSection
from fedloop.server.registry import VersionRegistry
from fedloop.shared.adapter import (
    adapter_from_bytes,
    adapter_state,
    adapter_to_bytes,
    attach_lora,
    load_adapter_state,
    load_base_model,
)
from fedloop.shared.crypto import sm3_digest
from fedloop.shared.keys import init_keys
from fedloop.shared.settings import LoraSettings

ROOT = Path(__file__).resolve().parents[1]


def timed(action) -> float:
    """Seconds `action()` takes."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def describe(label: str, seconds: list[float]) -> str:
    """One table row: median and worst in milliseconds."""
    return f"| {label} | {statistics.median(seconds) * 1000:.2f} | {max(seconds) * 1000:.2f} |"


def main() -> None:
    """Time tenant and HQ rollbacks against re-installing; print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if not (args.model / "config.json").exists() and args.model.suffix != ".gguf":
        raise SystemExit(f"--model {args.model}: no model there; run `make model` first")
    work = Path(tempfile.mkdtemp(prefix="bench-rollback-"))
    base, _ = load_base_model(args.model)
    model = attach_lora(base, LoraSettings(), seed=0)
    identity = init_keys("tenant", "acme", work / "keys")
    store = FeedbackStore(work / "feedback.db", identity.storage, identity.pseudonym_key)
    controller = ReleaseController(store, ReleaseSection())
    hq_registry = VersionRegistry(work / "hq", init_keys("hq", "hq", work / "hq-keys"))

    adapters, digests = {}, {}
    for index in (1, 2):
        state = {k: v + 0.01 * index for k, v in adapter_state(model).items()}
        payload = adapter_to_bytes(state)
        version = f"v{index}"
        digests[version] = sm3_digest(payload).hex()
        store.versions.install(InstalledVersion(version, index, None, digests[version]), payload)
        adapters[version] = state
    print(f"adapter {len(adapter_to_bytes(adapters['v1'])):,} bytes; {args.repeat} rollbacks each", flush=True)

    def reinstall(version: str) -> None:
        payload = store.versions.adapter(version)
        assert sm3_digest(payload).hex() == digests[version]
        load_adapter_state(model, adapter_from_bytes(payload))

    tenant_pointer, tenant_baseline, hq_pointer = [], [], []
    controller.offer("v1", "bench")
    for _ in range(args.repeat):
        controller.offer("v2", "bench")
        controller.promote("bench")
        load_adapter_state(model, adapters["v2"])

        def pointer_swap() -> None:
            serving = controller.rollback("bench").serving
            assert serving is not None
            load_adapter_state(model, adapters[serving])
            assert controller.route("any-user") == "v1"

        tenant_pointer.append(timed(pointer_swap))
        tenant_baseline.append(timed(lambda: reinstall("v1")))
        first = hq_registry.create(adapter_to_bytes(adapters["v1"]), None, "bench", 0, {}, "init")
        second = hq_registry.create(adapter_to_bytes(adapters["v2"]), first.id, "bench", 1, {}, "exact")
        for version in (first.id, second.id):
            hq_registry.promote(version)
            hq_registry.promote(version)
        hq_pointer.append(timed(lambda second=second: hq_registry.rollback(second.id)))

    print("\n| rollback | median ms | worst ms |\n|---|---|---|")
    print(describe("tenant: fedloop pointer swap (one row + in-memory adapter swap + route)", tenant_pointer))
    print(
        describe("tenant: baseline, re-install the previous version (decrypt, digest, decode, load)", tenant_baseline)
    )
    print(describe("HQ: registry stable-pointer rollback", hq_pointer))
    ratio = statistics.median(tenant_baseline) / statistics.median(tenant_pointer)
    print(f"\nratio baseline / fedloop (median): {ratio:.1f}x")
    worst = max(tenant_pointer + hq_pointer)
    print(f"goal: rollback under 1 s: {'met' if worst < 1.0 else 'missed'} (worst {worst * 1000:.1f} ms)")
    store.close()
    hq_registry.close()


if __name__ == "__main__":
    main()
