"""Drafts through fedloop's OpenAI-compatible endpoint against plain transformers `generate`, and rollback time.

Both arms run in this one process on the same prompts, one request at a time,
interleaved prompt by prompt, greedy, with the same token budget:
- fedloop: `POST /v1/chat/completions` on a real uvicorn server on 127.0.0.1,
  the tenant holding two installed versions (serving v0 and a canary v1 on half
  of the users, both loaded); each request is checked, routed by the release
  pointer, drafted with that version's adapter, redacted, encrypted and stored,
  and answered with its draft id.
- floor: the base model's `generate` called directly (no HTTP, no adapter, no
  recording). v0 is the base model and v1 a slight perturbation of it, so both
  arms draft replies of about the same length (printed).

Then the rollback: a product keeps asking for drafts while an operator's
process (its own store connection, as `fedloop release rollback` opens it)
rolls v1 back; measured from the rollback call to the first draft served by v0
(goal < 1 s), 5 times, with 8-token drafts and with 1-token drafts (the
draft in flight at the rollback finishes with v1 first, so the time is the
pointer switch plus up to two drafts' generation). The same through the real `fedloop release rollback`
command is printed too: there Python's start-up and imports come first.

Run: .venv/bin/python scripts/bench_serve.py [--model models/smollm2-135m-instruct] [--prompts 60]
     [--data ../shared/data/bitext/bitext_customer_support_4514.csv]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import torch

from fedloop.client.release.controller import ReleaseController
from fedloop.client.serve.drafts import DraftService
from fedloop.client.serve.http import build_http_app
from fedloop.client.serve.server import start_http
from fedloop.client.serve.transformers_engine import TransformersEngine
from fedloop.client.simulation.product import TenantTraffic
from fedloop.client.store import FeedbackStore
from fedloop.client.store_api import InstalledVersion
from fedloop.client.tenant_runtime import open_tenant
from fedloop.client.tenant_settings import ReleaseSection, ServeSection, TenantSection, TenantSettings
from fedloop.shared.adapter import adapter_state, adapter_to_bytes, attach_lora, load_base_model
from fedloop.shared.keys import init_keys, load_identity
from fedloop.shared.settings import LoraSettings

ROOT = Path(__file__).resolve().parents[1]
FEDLOOP = str(Path(sys.executable).parent / "fedloop")


def prompts(count: int, data: Path | None) -> list[str]:
    """Support questions: the Bitext file's first `count` instructions, or the simulated product's."""
    if data is not None:
        return pd.read_csv(data)["instruction"].astype(str).head(count).tolist()
    return [c.prompt for c in TenantTraffic("bench", "brief", 1).conversations(count, batch=1)]


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def install(store: FeedbackStore, model_path: Path, lora: LoraSettings) -> None:
    """v0: the base model (B = 0); v1: a slight perturbation of it."""
    model, _ = load_base_model(model_path)
    state = adapter_state(attach_lora(model, lora, seed=1))
    generator = torch.Generator().manual_seed(3)
    for index, version in enumerate(("v0", "v1")):
        adapter = {k: v + (1e-3 * torch.randn(v.shape, generator=generator) if index else 0) for k, v in state.items()}
        store.versions.install(InstalledVersion(version, index, None, f"bench-{version}"), adapter_to_bytes(adapter))


class Floor:
    """Plain transformers: chat template, `generate`, decode."""

    def __init__(self, model_path: Path) -> None:
        self.model, self.tokenizer = load_base_model(model_path)
        self.model.eval()

    def draft(self, question: str, max_tokens: int) -> int:
        """One greedy draft; returns its token count."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = self.model.generate(  # type: ignore[operator]  # PeftModel forwards generate() to its base
                **encoded,
                max_new_tokens=max_tokens,
                min_new_tokens=1,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        self.tokenizer.decode(output[0][encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        return output.shape[1] - encoded["input_ids"].shape[1]


def endpoint_draft(client: httpx.Client, question: str, user: str, max_tokens: int) -> tuple[int, str]:
    """One POST; returns the draft's token count and the version that drafted it."""
    reply = client.post(
        "/v1/chat/completions",
        json={
            "model": "fedloop",
            "user": user,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": question}],
        },
    )
    reply.raise_for_status()
    body = reply.json()
    return body["usage"]["completion_tokens"], body["model"]


def interleaved(
    floor: Floor, client: httpx.Client, questions: list[str], max_tokens: int
) -> tuple[dict[str, list[float]], dict[str, int], dict[str, int]]:
    """Each prompt through the floor, then through the endpoint (so drift on the machine hits both arms alike).

    Returns the latencies and token counts of each arm ("floor", "fedloop") and the drafts per version.
    """
    latencies: dict[str, list[float]] = {"floor": [], "fedloop": []}
    tokens = {"floor": 0, "fedloop": 0}
    versions: dict[str, int] = {}
    for index, question in enumerate(questions):
        started = time.perf_counter()
        tokens["floor"] += floor.draft(question, max_tokens)
        latencies["floor"].append(time.perf_counter() - started)
        started = time.perf_counter()
        count, version = endpoint_draft(client, question, f"bench-user-{index}", max_tokens)
        latencies["fedloop"].append(time.perf_counter() - started)
        tokens["fedloop"] += count
        versions[version] = versions.get(version, 0) + 1
    return latencies, tokens, versions


def rollback_times(
    client: httpx.Client, controller: ReleaseController, operator: ReleaseController, repeats: int, max_tokens: int
) -> list[float]:
    """While a product drafts continuously, roll v1 back from another connection; time to the first v0 draft."""
    times = []
    for _ in range(repeats):
        controller.offer("v1", "bench: canary again")
        controller.promote("bench: v1 serves everyone")
        stop, first_v0, issued = threading.Event(), list[float](), [0.0]

        def product(
            stop: threading.Event = stop, first_v0: list[float] = first_v0, issued: list[float] = issued
        ) -> None:
            while not stop.is_set():
                body = client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "fedloop",
                        "user": "product-user",
                        "max_tokens": max_tokens,
                        "messages": [{"role": "user", "content": "Where is my order 12345?"}],
                    },
                ).json()
                if body["model"] == "v0" and issued[0] and not first_v0:
                    first_v0.append(time.perf_counter())
                    stop.set()

        worker = threading.Thread(target=product)
        worker.start()
        time.sleep(1.0)  # the product is drafting with v1
        issued[0] = time.perf_counter()
        operator.rollback("bench: rollback")
        worker.join(timeout=30)
        times.append(first_v0[0] - issued[0])
    return times


def cli_rollback_time(client: httpx.Client, controller: ReleaseController, config: Path) -> float:
    """`fedloop release rollback` as a subprocess: from its start to the first draft served by v0."""
    controller.offer("v1", "bench: canary again")
    controller.promote("bench: v1 serves everyone")
    started = time.perf_counter()
    subprocess.run(
        [FEDLOOP, "release", "rollback", "--config", str(config), "--operator", "bench", "--reason", "bench"],
        check=True,
        capture_output=True,
    )
    while (
        client.post(
            "/v1/chat/completions",
            json={
                "model": "fedloop",
                "user": "product-user",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        ).json()["model"]
        != "v0"
    ):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    questions = prompts(args.prompts, args.data)
    lora = LoraSettings(rank=8, alpha=16)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        identity = init_keys("tenant", "bench", root / "keys")
        settings = TenantSettings(
            tenant=TenantSection(name="bench", keys_dir=str(root / "keys"), data_dir=str(root / "data")),
            release=ReleaseSection(canary_share=0.5, widened_share=0.5),
            serve=ServeSection(max_new_tokens=max(args.max_tokens, 8)),
        )
        config = root / "tenant.toml"
        config.write_text(f'[tenant]\nname = "bench"\nkeys_dir = "{root / "keys"}"\ndata_dir = "{root / "data"}"\n')
        runtime = open_tenant(settings, identity)
        install(runtime.store, args.model, lora)
        controller = ReleaseController(runtime.store, settings.release)
        controller.offer("v0", "bench")
        controller.offer("v1", "bench")  # the canary, on half of the users
        service = DraftService(runtime, TransformersEngine(args.model, lora))
        server = start_http(build_http_app(service, "fedloop"), "127.0.0.1:0")
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120)
        floor = Floor(args.model)
        interleaved(floor, client, questions[:3], args.max_tokens)  # warm both arms up
        latencies, tokens, versions = interleaved(floor, client, questions, args.max_tokens)
        print(
            f"prompts: {len(questions)} ({'Bitext' if args.data else 'simulated product'}), max_tokens "
            f"{args.max_tokens}, one request at a time, greedy, {torch.get_num_threads()} torch threads"
        )
        for name, arm in (("transformers generate (floor)", "floor"), ("fedloop endpoint", "fedloop")):
            total = sum(latencies[arm])
            print(
                f"{name:30s} {len(latencies[arm]) / total:6.3f} drafts/s  {tokens[arm] / total:6.1f} tokens/s  "
                f"p50 {percentile(latencies[arm], 0.5) * 1000:7.1f} ms  "
                f"p99 {percentile(latencies[arm], 0.99) * 1000:7.1f} ms  ({tokens[arm]} tokens)"
            )
        print(f"drafts by version (fedloop): {versions}")
        floor_latencies, fed_latencies = latencies["floor"], latencies["fedloop"]
        ratio = (len(fed_latencies) / sum(fed_latencies)) / (len(floor_latencies) / sum(floor_latencies))
        print(f"ratio fedloop / floor (drafts per second): {ratio:.3f} (goal >= 0.8)")
        print(
            "p50 overhead per draft: "
            f"{(percentile(fed_latencies, 0.5) - percentile(floor_latencies, 0.5)) * 1000:+.1f} ms"
        )
        operator_identity = load_identity(root / "keys", "bench")
        operator_store = FeedbackStore(settings.store_path, operator_identity.storage, operator_identity.pseudonym_key)
        operator = ReleaseController(operator_store, settings.release, "bench")
        for draft_tokens in (8, 1):
            times = rollback_times(client, controller, operator, 5, draft_tokens)
            print(
                f"rollback -> first draft by the previous version, product drafting {draft_tokens}-token drafts "
                f"back to back (5 runs): median {statistics.median(times) * 1000:.0f} ms, max "
                f"{max(times) * 1000:.0f} ms (goal < 1 s; includes finishing the draft in flight)"
            )
        print(
            f"`fedloop release rollback` process start -> first draft by the previous version: "
            f"{cli_rollback_time(client, controller, config):.2f} s (Python start-up and imports included)"
        )
        operator_store.close()
        client.close()
        server.stop()
        runtime.close()


if __name__ == "__main__":
    main()
