"""Drafts through fedloop's OpenAI-compatible endpoint under concurrent clients against batched `generate`, and
rollback time.

Concurrency: at 1, 8 and 32 concurrent clients (half of the requests streamed,
users split between serving v0 and canary v1 at 50 %), each client sending
requests back to back, fedloop's drafts/s and per-request p50/p99 latency,
against the floor: the base model's `generate` called directly on the same
prompts in batches of the client count (no HTTP, no adapter, no recording).
Each level runs the floor first, in a process of its own (two torch thread
teams in one process slowed whichever ran second by a third), then fedloop's
clients, also in a process of their own as a product's would be, against the
server in this process; greedy, same token budget. fedloop: `POST /v1/chat/completions` on a real uvicorn
server on 127.0.0.1; each request is checked, routed by the release pointer,
batched by the generation worker with whatever else is waiting (rows of both
versions in one `generate` call), redacted, encrypted and stored, and answered
with its draft id. v0 is the base model and v1 a slight perturbation of it, so
both arms draft replies of about the same length (token counts printed).

Then the rollback: a product keeps asking for drafts while an operator's
process (its own store connection, as `fedloop release rollback` opens it)
rolls v1 back; measured from the rollback call to the first draft served by v0
(goal < 1 s), 5 times, with 8-token drafts and with 1-token drafts (the
draft in flight at the rollback finishes with v1 first, so the time is the
pointer switch plus up to two drafts' generation). The same through the real `fedloop release rollback`
command is printed too: there Python's start-up and imports come first.

Run: .venv/bin/python scripts/bench_serve.py [--model models/smollm2-135m-instruct] [--requests-per-client 2]
     [--data ../shared/data/bitext/bitext_customer_support_4514.csv]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pandas as pd
import torch
from peft import PeftModel, set_peft_model_state_dict
from transformers import PreTrainedModel

from fedloop.client.ingest.runtime import open_tenant
from fedloop.client.release.controller import ReleaseController
from fedloop.client.serve.drafts import DraftService
from fedloop.client.serve.http import build_http_app
from fedloop.client.serve.server import start_http
from fedloop.client.serve.transformers_engine import TransformersEngine, cores_available
from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import InstalledVersion
from fedloop.client.tenant_settings import ReleaseSection, ServeSection, TenantSection, TenantSettings
from fedloop.shared.adapter import (
    AdapterState,
    adapter_state,
    adapter_to_bytes,
    attach_lora,
    load_base_model,
    peft_config,
)
from fedloop.shared.keys import init_keys, load_identity
from fedloop.shared.settings import LoraSettings
from fedloop.simulation.product import TenantTraffic

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


def bench_adapters(model_path: Path, lora: LoraSettings) -> dict[str, AdapterState]:
    """v0: the base model (B = 0); v1: a slight perturbation of it."""
    model, _ = load_base_model(model_path)
    state = adapter_state(attach_lora(model, lora, seed=1))
    generator = torch.Generator().manual_seed(3)
    return {"v0": state, "v1": {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in state.items()}}


def install(store: FeedbackStore, model_path: Path, lora: LoraSettings) -> None:
    """Install the two benchmark versions."""
    for index, (version, adapter) in enumerate(bench_adapters(model_path, lora).items()):
        store.versions.install(InstalledVersion(version, index, None, f"bench-{version}"), adapter_to_bytes(adapter))


class Floor:
    """Plain transformers: chat template, `generate`, decode; with `lora`, PEFT with v0 and v1 mixed in each batch."""

    def __init__(self, model_path: Path, lora: LoraSettings | None = None) -> None:
        base, self.tokenizer = load_base_model(model_path)
        self.model: PreTrainedModel | PeftModel = base
        self.adapters: list[str] = []
        if lora is not None:
            states = bench_adapters(model_path, lora)
            peft_model = attach_lora(base, lora, seed=1)
            for version, state in states.items():
                peft_model.add_adapter(version, peft_config(lora))
                set_peft_model_state_dict(peft_model, state, adapter_name=version)
            self.model, self.adapters = peft_model, list(states)
        self.model.eval()

    def drafts(self, questions: list[str], max_tokens: int) -> int:
        """Greedy drafts of `questions` in one batch; returns their tokens (up to each one's end of turn)."""
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            for question in questions
        ]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        per_row = {"adapter_names": [self.adapters[i % 2] for i in range(len(questions))]} if self.adapters else {}
        with torch.no_grad():
            output = self.model.generate(  # type: ignore[operator]  # PeftModel forwards generate() to its base
                **encoded,
                **per_row,
                max_new_tokens=max_tokens,
                min_new_tokens=1,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = output[:, encoded["input_ids"].shape[1] :]
        self.tokenizer.batch_decode(new, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        return sum(row.tolist().index(eos) + 1 if eos in row.tolist() else len(row) for row in new)


def endpoint_draft(client: httpx.Client, question: str, user: str, max_tokens: int, stream: bool) -> tuple[int, str]:
    """One POST, streamed or not; returns the draft's token count and the version that drafted it."""
    body = {
        "model": "fedloop",
        "user": user,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": question}],
    }
    if not stream:
        reply = client.post("/v1/chat/completions", json=body)
        reply.raise_for_status()
        answer = reply.json()
        return answer["usage"]["completion_tokens"], answer["model"]
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    events = []
    with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-2:]
    chunks = [json.loads(event) for event in events[:-1]]
    return chunks[-1]["usage"]["completion_tokens"], chunks[0]["model"]


@dataclass
class Level:
    """One concurrency level's measurements of one arm."""

    seconds: float
    latencies: list[float]
    tokens: int

    @property
    def rate(self) -> float:
        """Drafts per second."""
        return len(self.latencies) / self.seconds


def floor_level(floor: Floor, questions: list[str], batch: int, max_tokens: int) -> Level:
    """The floor on `questions` in batches of `batch`: every draft of a batch waits for the whole batch."""
    floor.drafts(questions[:batch], 4)  # warm up this batch shape
    latencies, tokens, started = [], 0, time.perf_counter()
    for start in range(0, len(questions), batch):
        chunk = questions[start : start + batch]
        began = time.perf_counter()
        tokens += floor.drafts(chunk, max_tokens)
        latencies += [time.perf_counter() - began] * len(chunk)
    return Level(time.perf_counter() - started, latencies, tokens)


def in_own_process(role: str, **spec: object) -> dict[str, Any]:
    """Run `role` ("floor", "peft" or "clients") with `spec` in a child process of this script; its JSON result.

    The floor runs apart because two torch thread teams in one process (the floor's on the main thread, the
    endpoint's generation worker) slowed whichever ran second by a third here; the clients run apart, as a
    product's do, so their Python does not compete with the server's for the interpreter.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump({"role": role, **spec}, file)
        file.flush()
        done = subprocess.run(
            [sys.executable, __file__, "--child-spec", file.name], check=True, capture_output=True, text=True
        )
    return cast(dict[str, Any], json.loads(done.stdout.strip().splitlines()[-1]))


def run_child(spec_path: Path) -> None:
    """The child side of `in_own_process`: print the result as JSON."""
    spec = json.loads(spec_path.read_text())
    versions: dict[str, int] = {}
    if spec["role"] in ("floor", "peft"):
        lora = LoraSettings(**spec["lora"]) if spec["role"] == "peft" else None
        floor = Floor(Path(spec["model"]), lora)
        level = floor_level(floor, spec["questions"], spec["clients"], spec["max_tokens"])
    else:
        level, versions = fedloop_level(
            spec["base_url"], spec["questions"], spec["clients"], spec["max_tokens"], spec["tag"]
        )
    print(
        json.dumps(
            {"seconds": level.seconds, "latencies": level.latencies, "tokens": level.tokens, "versions": versions}
        )
    )


def level_of(result: dict[str, Any]) -> Level:
    """A Level from a child's JSON result."""
    return Level(result["seconds"], result["latencies"], result["tokens"])


def fedloop_level(
    base_url: str, questions: list[str], clients: int, max_tokens: int, tag: str
) -> tuple[Level, dict[str, int]]:
    """`clients` threads sending `questions` back to back (every other one streamed); the drafts per version."""
    work = list(enumerate(questions))
    lock = threading.Lock()
    latencies: list[float] = []
    tokens = [0]
    versions: dict[str, int] = {}

    def client_loop() -> None:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            while True:
                with lock:
                    if not work:
                        return
                    index, question = work.pop(0)
                began = time.perf_counter()
                count, version = endpoint_draft(client, question, f"{tag}-user-{index}", max_tokens, index % 2 == 1)
                with lock:
                    latencies.append(time.perf_counter() - began)
                    tokens[0] += count
                    versions[version] = versions.get(version, 0) + 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Level(time.perf_counter() - started, latencies, tokens[0]), versions


def concurrency_table(
    model: Path,
    lora: LoraSettings,
    engine: TransformersEngine,
    base_url: str,
    questions: list[str],
    levels: tuple[int, ...],
    per_client: int,
    max_tokens: int,
    show: bool = True,
) -> dict[int, tuple[Level, Level]]:
    """Each level: the floor in batches of the client count, the same with the two versions' adapters (PEFT,
    rows alternating), each in its own process, then fedloop with that many clients (printed when `show`)."""
    results = {}
    say = print if show else (lambda *_: None)
    say(f"{'clients':>7}  {'arm':34s} {'drafts/s':>8} {'tokens/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'tokens':>7}")
    for clients in levels:
        count = max(clients * per_client, 8)
        chosen = [questions[(clients + i) % len(questions)] for i in range(count)]
        base = level_of(
            in_own_process("floor", model=str(model), questions=chosen, clients=clients, max_tokens=max_tokens)
        )
        peft = level_of(
            in_own_process(
                "peft",
                model=str(model),
                lora=lora.model_dump(),
                questions=chosen,
                clients=clients,
                max_tokens=max_tokens,
            )
        )
        before = engine.rows_per_step.copy()
        served = in_own_process(
            "clients", base_url=base_url, questions=chosen, clients=clients, max_tokens=max_tokens, tag=f"c{clients}"
        )
        fed, versions = level_of(served), served["versions"]
        steps = engine.rows_per_step - before
        mean_rows = sum(rows * count for rows, count in steps.items()) / max(1, steps.total())
        results[clients] = (base, fed)
        arms = (
            (f"generate, batches of {clients} (floor)", base),
            ("  + v0/v1 adapters (PEFT, mixed)", peft),
            ("fedloop endpoint", fed),
        )
        for name, level in arms:
            say(
                f"{clients:7d}  {name:34s} {level.rate:8.3f} {level.tokens / level.seconds:8.1f} "
                f"{percentile(level.latencies, 0.5) * 1000:8.0f} {percentile(level.latencies, 0.99) * 1000:8.0f} "
                f"{level.tokens:7d}"
            )
        say(
            f"{'':7s}  fedloop / floor {fed.rate / base.rate:.2f}, / floor with adapters {fed.rate / peft.rate:.2f}; "
            f"drafts by version {versions}; "
            f"fedloop decoded {mean_rows:.1f} rows per step on average"
        )
    return results


def goals(results: dict[int, tuple[Level, Level]]) -> None:
    """The goals of the serving issue (#28), each with its figure (needs the levels 1 and 8)."""
    if 1 not in results or 8 not in results:
        return
    single, eight = results[1][1], results[8][1]
    checks = [
        ("fedloop at 8 clients / fedloop at 1 client", eight.rate / single.rate, ">=", 3.0),
        ("fedloop at 8 clients / the floor in batches of 8", eight.rate / results[8][0].rate, ">=", 0.8),
        ("p99 / p50 at 8 clients", percentile(eight.latencies, 0.99) / percentile(eight.latencies, 0.5), "<=", 2.0),
        ("fedloop at 1 client / plain generate", single.rate / results[1][0].rate, ">=", 0.8),
    ]
    for name, value, direction, goal in checks:
        met = value >= goal if direction == ">=" else value <= goal
        print(f"goal: {name} = {value:.2f} ({direction} {goal}): {'met' if met else 'NOT met'}")


def canary_again(controller: ReleaseController) -> None:
    """Serve v1 to everyone again (re-admitted after the previous rollback, which declines it)."""
    if "v1" in controller.declined():
        controller.readmit("v1", "bench: measure another rollback")
    controller.offer("v1", "bench: canary again")
    controller.promote("bench: v1 serves everyone")


def rollback_times(
    client: httpx.Client, controller: ReleaseController, operator: ReleaseController, repeats: int, max_tokens: int
) -> list[float]:
    """While a product drafts continuously, roll v1 back from another connection; time to the first v0 draft."""
    times = []
    for _ in range(repeats):
        canary_again(controller)
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
    canary_again(controller)
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
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends per level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--child-spec", type=Path, default=None, help=argparse.SUPPRESS)  # see in_own_process
    args = parser.parse_args()
    if args.child_spec is not None:
        run_child(args.child_spec)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    questions = prompts(max(args.levels) * args.requests_per_client + max(args.levels), args.data)
    lora = LoraSettings(rank=8, alpha=16)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        identity = init_keys("tenant", "bench", root / "keys")
        settings = TenantSettings(
            tenant=TenantSection(name="bench", keys_dir=str(root / "keys"), data_dir=str(root / "data")),
            release=ReleaseSection(canary_share=0.5, widened_share=0.5, guard_h=0),
            serve=ServeSection(max_new_tokens=max(args.max_tokens, 8), max_batch_size=max(args.levels)),
        )
        config = root / "tenant.toml"
        config.write_text(
            f'[tenant]\nname = "bench"\nkeys_dir = "{root / "keys"}"\ndata_dir = "{root / "data"}"\n'
            "[release]\nguard_h = 0\n"
        )
        runtime = open_tenant(settings, identity)
        install(runtime.store, args.model, lora)
        controller = ReleaseController(runtime.store, settings.release)
        controller.offer("v0", "bench")
        controller.offer("v1", "bench")  # the canary, on half of the users
        engine = TransformersEngine(args.model, lora, serve=settings.serve)
        service = DraftService(runtime, engine)
        server = start_http(build_http_app(service, "fedloop"), "127.0.0.1:0")
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120)
        base_url = f"http://127.0.0.1:{server.port}"
        concurrency_table(args.model, lora, engine, base_url, questions, (1, 2), 1, 4, show=False)  # warm both arms up
        print(
            f"SmolLM2-class model {args.model.name}; {'Bitext' if args.data else 'simulated product'} prompts; "
            f"max_tokens {args.max_tokens}, greedy; {args.requests_per_client} requests per client (at least 8) per "
            f"level; half streamed; canary v1 on 50 % of users; generation worker: {cores_available()} torch "
            f"threads, batches of up to {settings.serve.max_batch_size}"
        )
        goals(
            concurrency_table(
                args.model,
                lora,
                engine,
                base_url,
                questions,
                tuple(args.levels),
                args.requests_per_client,
                args.max_tokens,
            )
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
        engine.close()
        runtime.close()


if __name__ == "__main__":
    main()
