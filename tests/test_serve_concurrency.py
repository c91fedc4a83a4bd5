"""The draft endpoint under concurrent users: real uvicorn on 127.0.0.1, the official `openai` client, the tiny model.

64 requests at once, streaming and not, over serving and canary users, with a
rollback in the middle, three times over: every draft equals, token for token,
the greedy output of the version it is recorded with (drafted alone), nothing
hangs, and the endpoint still drafts afterwards.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from serve_helpers import Endpoint, install_versions, start_endpoint, start_serving_v0
from tiny_model import build_wider_model

from fedloop.client.serve.engine import GenerationRequest
from fedloop.client.store.api import ChatMessage
from fedloop.client.tenant_settings import ReleaseSection, ServeSection

PROMPTS = [
    "Where is my order 12345?",
    "I want a refund for my broken kettle, it stopped working after two days of use.",
    "Can I change the delivery address?",
    "How do I cancel my subscription before the next billing date?",
    "hello",
    "My parcel says delivered but I never got it. What now?",
    "Do you ship to Hong Kong?",
    "The invoice shows the wrong company name; please fix it.",
]
BUDGETS = (6, 12)
ROUNDS = (("v1", 7), ("v2", 8), ("v3", 9))  # canary version, seed of the request mix


@pytest.fixture()
def endpoint(make_tenant, tiny_model_dir: Path) -> Iterator[Endpoint]:
    runtime = make_tenant(
        "acme",
        release=ReleaseSection(canary_share=0.5, widened_share=0.5, decide_every_outcomes=1000),
        serve=ServeSection(max_batch_size=8),
    )
    install_versions(runtime, tiny_model_dir, ("v0", "v1", "v2", "v3"))
    served = start_endpoint(runtime, tiny_model_dir)
    served.controller.offer("v0", "gates passed")
    yield served
    served.stop()


def alone(endpoint: Endpoint, version: str, prompt: str, budget: int) -> str:
    """`version`'s greedy reply to `prompt`, drafted in a batch of its own."""
    endpoint.service.sync()
    if version not in endpoint.engine.loaded():
        endpoint.service._load(version)  # the reference needs the version loaded, whatever the pointer says
    messages: tuple[ChatMessage, ...] = ({"role": "user", "content": prompt},)
    return endpoint.engine.submit(GenerationRequest(version, messages, budget)).result().text


def ask(api: openai.OpenAI, user: str, prompt: str, budget: int, stream: bool) -> tuple[str, str, str]:
    """(draft id, version, text) of one request, streamed or not."""
    messages: list[ChatMessageParam] = [{"role": "user", "content": prompt}]
    if not stream:
        completion = api.chat.completions.create(model="fedloop", messages=messages, user=user, max_tokens=budget)
        return completion.id, completion.model, completion.choices[0].message.content or ""
    chunks = list(
        api.chat.completions.create(model="fedloop", messages=messages, user=user, max_tokens=budget, stream=True)
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    return chunks[0].id, chunks[0].model, "".join(c.choices[0].delta.content or "" for c in chunks).strip()


ChatMessageParam = ChatCompletionMessageParam


def test_64_concurrent_requests_with_a_rollback_in_the_middle_draft_exactly_their_versions(endpoint: Endpoint) -> None:
    api = openai.OpenAI(base_url=endpoint.base_url, api_key="loopback", max_retries=0, timeout=120)
    store = endpoint.runtime.store
    expected: dict[tuple[str, str, int], str] = {}
    drafted_by_canary = 0
    for canary, seed in ROUNDS:
        endpoint.controller.offer(canary, "gates passed")
        for version in ("v0", canary):
            for prompt in PROMPTS:
                for budget in BUDGETS:
                    expected[(version, prompt, budget)] = alone(endpoint, version, prompt, budget)
        rng = random.Random(seed)
        jobs = [
            (f"user-{seed}-{i}", rng.choice(PROMPTS), rng.choice(BUDGETS), i % 2 == 0) for i in range(64)
        ]  # half streaming
        submitted = threading.Semaphore(0)

        def run(
            job: tuple[str, str, int, bool], submitted: threading.Semaphore = submitted
        ) -> tuple[str, str, str, str, int]:
            user, prompt, budget, stream = job
            submitted.release()
            draft_id, version, text = ask(api, user, prompt, budget, stream)
            return draft_id, version, text, prompt, budget

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as pool:
            futures = [pool.submit(run, job) for job in jobs]
            for _ in range(24):
                submitted.acquire()
            endpoint.controller.rollback("operator: rollback while 64 users draft")  # the move in the middle
            results = [f.result(timeout=180) for f in futures]
        assert time.monotonic() - started < 180
        versions = set()
        for draft_id, version, text, prompt, budget in results:
            record = store.drafts.get_draft(draft_id)
            assert record is not None and record.model_version == version, (draft_id, version)
            assert record.draft == text, (draft_id, record.draft, text)
            assert text == expected[(version, prompt, budget)], (version, prompt, budget, text)
            versions.add(version)
        assert "v0" in versions  # the serving arm drafted; the canary too, unless the rollback came first
        drafted_by_canary += sum(1 for result in results if result[1] == canary)
        state = endpoint.controller.state()
        assert state is not None and state.canary is None and state.serving == "v0"
    assert drafted_by_canary > 0  # both arms drafted in the same bursts
    after = api.chat.completions.create(
        model="fedloop", messages=[{"role": "user", "content": PROMPTS[0]}], user="after", max_tokens=4
    )
    assert after.model == "v0" and after.choices[0].message.content


def test_streamed_and_plain_drafts_take_the_same_time_beside_a_cpu_burner(
    make_tenant, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Both kinds run on the generation worker's thread team (serve.threads), so a busy host slows them alike.

    A wider untrained model makes generation, not the per-chunk cost of streaming, the bulk of a draft's time.
    """
    endpoint = start_serving_v0(make_tenant, build_wider_model(tiny_model_dir, tmp_path / "wider"))
    api = openai.OpenAI(base_url=endpoint.base_url, api_key="loopback", max_retries=0, timeout=120)
    prompt = PROMPTS[1]
    burn = "import time\nend = time.time() + 120\nwhile time.time() < end: pass"
    burner = subprocess.Popen([sys.executable, "-c", burn])
    try:
        ratios = []  # streamed / plain of back-to-back pairs: a load that drifts (another test worker) cancels out
        for pair in range(8):
            timed: dict[bool, float] = {}
            for stream in (pair % 2 == 0, pair % 2 == 1):  # which kind goes first alternates
                started = time.perf_counter()
                ask(api, f"timed-{pair}-{stream}", prompt, 64, stream)
                timed[stream] = time.perf_counter() - started
            ratios.append(timed[True] / timed[False])
    finally:
        burner.kill()
        burner.wait()
        endpoint.stop()
    assert 0.8 <= statistics.median(ratios) <= 1.25, sorted(ratios)
