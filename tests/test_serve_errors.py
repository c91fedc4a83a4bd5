"""The draft endpoint's health, its errors and what products send: real uvicorn on 127.0.0.1, the tiny model.

A busy store answers 503 + Retry-After and never leaves a draft id the
outcome route does not know; the per-user rate limit refuses before anything
is generated; a full queue answers 503 at once; `/ready` fails when the
worker is gone; every error, unknown routes and malformed JSON included, has
OpenAI's shape; the fields products send (text parts, the developer role,
stop, include_usage, metadata.user, a client's own draft id) are honoured.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from serve_helpers import Endpoint, start_serving_v0

from fedloop.client.serve.engine import GenerationHandle, GenerationRequest
from fedloop.client.tenant_settings import IngestSection, ServeSection

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Where is my order 12345? It has not arrived."}
]


def serve(make_tenant, model_dir: Path, **sections: Any) -> Endpoint:
    return start_serving_v0(make_tenant, model_dir, store_busy_timeout_s=0.5, **sections)


@pytest.fixture()
def endpoint(make_tenant, tiny_model_dir: Path) -> Iterator[Endpoint]:
    served = serve(make_tenant, tiny_model_dir)
    yield served
    served.stop()


def post(endpoint: Endpoint, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(
        f"{endpoint.base_url}/chat/completions",
        content=content,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=60,
    )


def sse_events(response: httpx.Response) -> list[Any]:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]


def test_a_locked_store_answers_503_with_retry_after_and_leaves_no_unknown_draft_id(endpoint: Endpoint) -> None:
    store = endpoint.runtime.store
    before = store.drafts.count_events()
    holder = sqlite3.connect(store.path, isolation_level=None)  # another writer (the ClientApp, say) holds the file
    holder.execute("BEGIN IMMEDIATE")
    try:
        plain = post(endpoint, {"model": "fedloop", "messages": QUESTION, "user": "u1", "max_tokens": 4})
        streamed = post(endpoint, {"model": "fedloop", "messages": QUESTION, "user": "u2", "stream": True})
        ready = httpx.get(f"http://127.0.0.1:{endpoint.http.port}/ready", timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert plain.status_code == 503 and plain.headers["retry-after"] == "1"
    error = plain.json()["error"]
    assert error["type"] == "server_error" and "busy" in error["message"] and "store_busy_timeout_s" in error["message"]
    assert ready.status_code == 503 and ready.json()["checks"]["store_writable"] is False
    events = sse_events(streamed)
    assert "[DONE]" not in events and "error" in events[-1]  # the stream ends with an error event, not [DONE]
    assert "x-fedloop-draft-id" not in plain.headers  # a refused completion hands out no id at all
    draft_id = streamed.headers["x-fedloop-draft-id"]  # a stream's id went out with its first chunk
    assert events[0]["id"] == draft_id
    outcome = httpx.post(f"{endpoint.base_url}/drafts/{draft_id}/outcome", json={"action": "accept"}, timeout=30)
    assert outcome.status_code == 409 and "never recorded" in outcome.json()["error"]["message"], outcome.text
    assert store.drafts.count_events() == before  # nothing half-written
    again = post(endpoint, {"model": "fedloop", "messages": QUESTION, "user": "u1", "max_tokens": 4})
    assert again.status_code == 200 and store.drafts.get_draft(again.json()["id"]) is not None


def test_the_rate_limit_refuses_before_anything_is_generated(make_tenant, tiny_model_dir: Path) -> None:
    served = serve(make_tenant, tiny_model_dir, ingest=IngestSection(max_events_per_user_per_minute=2))
    submitted: list[GenerationRequest] = []
    real_submit = served.engine.submit

    def counted(request: GenerationRequest) -> GenerationHandle:
        submitted.append(request)
        return real_submit(request)

    served.engine.submit = counted  # type: ignore[method-assign]  # counts what reaches the worker
    try:
        codes = [
            post(served, {"model": "fedloop", "messages": QUESTION, "user": "eager", "max_tokens": 2}).status_code
            for _ in range(3)
        ]
        refused = post(served, {"model": "fedloop", "messages": QUESTION, "user": "eager", "max_tokens": 2})
    finally:
        served.stop()
    assert codes == [200, 200, 429] and refused.status_code == 429 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert len(submitted) == 2  # the refused requests never reached the generation worker


def test_a_full_queue_answers_503_at_once_and_ready_tells_the_truth(make_tenant, tiny_model_dir: Path) -> None:
    served = serve(make_tenant, tiny_model_dir, serve=ServeSection(max_queue=1, max_batch_size=1))
    base = f"http://127.0.0.1:{served.http.port}"
    try:
        assert httpx.get(f"{base}/health", timeout=30).json() == {"status": "ok"}
        ready = httpx.get(f"{base}/ready", timeout=30)
        assert ready.status_code == 200 and ready.json()["ready"] is True

        def timed(index: int) -> tuple[int, float, str]:
            started = time.monotonic()
            body = {"model": "fedloop", "messages": QUESTION, "user": f"u{index}", "max_tokens": 64}
            reply = post(served, body)
            return reply.status_code, time.monotonic() - started, reply.headers.get("retry-after", "")

        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(timed, range(24)))
        busy = [r for r in results if r[0] == 503]
        assert busy and all(r[2] == "1" for r in busy)
        drafted = [r[1] for r in results if r[0] == 200]
        # refused at once, not after waiting for a slot: sooner than a draft takes (2 s allows for a loaded CI host;
        # it failed at 0.50 s against a bound of 0.5 s while another test ran beside it)
        assert min(r[1] for r in busy) < min(2.0, max(drafted))
        assert {r[0] for r in results} <= {200, 503}
        served.engine.close()  # the worker is gone
        dead = httpx.get(f"{base}/ready", timeout=30)
        assert dead.status_code == 503 and dead.json()["checks"]["worker_alive"] is False
        gone = post(served, {"model": "fedloop", "messages": QUESTION, "user": "late", "max_tokens": 2})
        assert gone.status_code == 503 and gone.json()["error"]["message"]
    finally:
        served.stop()


def test_a_stuck_worker_makes_ready_fail(make_tenant, tiny_model_dir: Path) -> None:
    served = serve(make_tenant, tiny_model_dir, serve=ServeSection(stall_after_s=0.5))
    base = f"http://127.0.0.1:{served.http.port}"
    hang, entered = threading.Event(), threading.Event()
    real_forward = served.engine._forward

    def stuck(*args: Any, **kwargs: Any) -> Any:  # a kernel that does not come back, until the test lets it
        entered.set()
        hang.wait(timeout=60)
        return real_forward(*args, **kwargs)

    served.engine._forward = stuck  # type: ignore[method-assign]
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(
                post, served, {"model": "fedloop", "messages": QUESTION, "user": "u", "max_tokens": 2}
            )
            assert entered.wait(timeout=30)
            time.sleep(0.8)
            stalled = httpx.get(f"{base}/ready", timeout=30)
            hang.set()
            assert waiting.result(timeout=60).status_code == 200
        assert stalled.status_code == 503 and stalled.json()["checks"]["worker_not_stuck"] is False
        assert httpx.get(f"{base}/ready", timeout=30).status_code == 200  # it recovered
    finally:
        hang.set()
        served.stop()


def test_every_error_has_openais_shape(endpoint: Endpoint) -> None:
    base = f"http://127.0.0.1:{endpoint.http.port}"
    cases = [
        (httpx.get(f"{base}/v1/nowhere", timeout=30), 404, None),
        (httpx.delete(f"{base}/v1/chat/completions", timeout=30), 405, None),
        (post(endpoint, '{"model": "fedloop", "messages": [}'), 400, None),
        (post(endpoint, {"model": "fedloop", "messages": QUESTION, "user": "u", "n": 2}), 400, "n"),
        (post(endpoint, {"model": "fedloop", "messages": QUESTION, "user": "u", "tools": []}), 400, "tools"),
        (post(endpoint, {"model": "fedloop", "messages": QUESTION, "user": "u", "temperature": 3}), 400, "temperature"),
        (httpx.get(f"{base}/v1/models/v9", timeout=30), 404, "model"),
    ]
    for response, status, param in cases:
        body = response.json()
        assert response.status_code == status, body
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["param"] == param and body["error"]["message"], body
    assert "not valid JSON" in cases[2][0].json()["error"]["message"]
    assert "n = 1" in cases[3][0].json()["error"]["message"]


def test_what_products_send_is_honoured(endpoint: Endpoint) -> None:
    api = openai.OpenAI(base_url=endpoint.base_url, api_key="loopback", max_retries=0)
    assert api.models.retrieve("fedloop").id == "fedloop"
    assert all(model.created > 0 for model in api.models.list().data)
    parts = api.chat.completions.create(
        model="fedloop",
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Where is "}, {"type": "text", "text": "my order?"}]},
        ],
        metadata={"user": "from-metadata"},  # litellm drops `user`
        max_completion_tokens=6,
        stop=["\n\n"],
        temperature=0,
        seed=3,
    )
    record = endpoint.runtime.store.drafts.get_draft(parts.id)
    assert record is not None and record.prompt == "Where is my order?"
    assert record.context == ({"role": "system", "content": "Answer briefly."},)
    assert record.user_pseudonym == endpoint.runtime.store.pseudonym("from-metadata")
    assert parts.usage is not None and parts.usage.completion_tokens <= 6 and parts.usage.prompt_tokens > 0
    chunks = list(
        api.chat.completions.create(
            model="fedloop",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=5,
            extra_headers={"X-Fedloop-User": "from-header", "X-Fedloop-Draft-Id": "product-chosen-id-1"},
        )
    )
    assert chunks[0].id == "product-chosen-id-1" and chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens <= 5
    stored = endpoint.runtime.store.drafts.get_draft("product-chosen-id-1")
    assert stored is not None and stored.user_pseudonym == endpoint.runtime.store.pseudonym("from-header")
    reuse = {"model": "fedloop", "messages": QUESTION, "user": "u", "metadata": {"draft_id": "product-chosen-id-1"}}
    reused = post(endpoint, reuse)
    assert reused.status_code == 409 and reused.json()["error"]["param"] == "draft_id"
    sampled = [
        api.chat.completions.create(
            model="fedloop",
            messages=QUESTION,
            user="s",
            max_tokens=8,
            temperature=1.5,
            seed=11,
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # a seed makes sampling repeatable


def test_numbers_out_of_range_and_huge_echoes_get_a_short_named_400(endpoint: Endpoint) -> None:
    """dwell_ms = 10**40 used to answer 500 with a traceback; a 1 MB model name and 50,000 metadata keys came back
    whole in the error message."""
    draft = post(endpoint, {"model": "fedloop", "messages": QUESTION, "user": "u", "max_tokens": 2}).json()
    outcome = httpx.post(
        f"{endpoint.base_url}/drafts/{draft['id']}/outcome", json={"action": "accept", "dwell_ms": 10**40}, timeout=30
    )
    error = outcome.json()["error"]
    print(f"dwell_ms = 10**40: {outcome.status_code} {error['message']}")
    assert outcome.status_code == 400 and "ingest.max_dwell_ms" in error["message"] and len(error["message"]) < 300
    seeded = post(endpoint, {"model": "fedloop", "messages": QUESTION, "user": "u", "temperature": 1, "seed": 10**40})
    assert seeded.status_code == 400 and seeded.json()["error"]["param"] == "seed"
    huge_model = post(endpoint, {"model": "m" * 1_000_000, "messages": QUESTION, "user": "u"})
    many_keys = post(
        endpoint,
        {"model": "fedloop", "messages": QUESTION, "user": "u", "metadata": {f"k{i}": "v" for i in range(50_000)}},
    )
    for response in (huge_model, many_keys):
        message = response.json()["error"]["message"]
        print(f"{response.status_code}: {message}")
        assert response.status_code in (400, 404) and len(message) < 500 and "characters)" in message
