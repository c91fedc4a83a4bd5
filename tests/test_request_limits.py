"""One request cannot take a tenant down: prompt and body limits hold before the expensive work, memory bounded.

The draft endpoint runs as `fedloop tenant serve` does, in its own process under an address-space cap, with its
peak resident memory measured around the attacks (issue 29).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from deployment_helpers import FEDLOOP, free_port, listening, wait_for
from memory_helpers import CAPPED_ENV, PeakGrowth, cap_address_space, post_head, push_body
from serve_helpers import LORA
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fedloop.client.serve.drafts import DraftRequest
from fedloop.client.train.generate import chat_text
from fedloop.shared.keys import init_keys

KEY = "k-7c1d09e4"
MAX_PROMPT_TOKENS = 200


class Served:
    """A `fedloop tenant serve` process with its draft endpoint on loopback."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"


@pytest.fixture()
def serve_process(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Callable[[str], Served]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(serve_keys: str) -> Served:
        init_keys("tenant", "acme", tmp_path / "keys")
        (tmp_path / "api-keys").write_text(KEY + "\n")
        (tmp_path / "api-keys").chmod(0o600)
        port = free_port()
        config = tmp_path / "tenant.toml"
        config.write_text(
            f'[tenant]\nname = "acme"\nkeys_dir = "{tmp_path / "keys"}"\ndata_dir = "{tmp_path / "data"}"\n'
            f'[ingest]\naddress = "127.0.0.1:{free_port()}"\n[metrics]\naddress = ""\n'
            f'[serve]\naddress = "127.0.0.1:{port}"\napi_keys_file = "{tmp_path / "api-keys"}"\n{serve_keys}\n'
        )
        federation = tmp_path / "federation.toml"
        federation.write_text(
            f'[paths]\nmodel = "{tiny_model_dir}"\n[lora]\nrank = {LORA.rank}\nalpha = {LORA.alpha}\n'
        )
        log = tmp_path / "serve.log"
        process = subprocess.Popen(
            [FEDLOOP, "tenant", "serve", "--config", str(config), "--settings", str(federation)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=CAPPED_ENV,
        )
        started.append(process)
        wait_for(lambda: listening(port), "draft endpoint", log, process)
        served = Served(process, port)
        assert _post(served, _request("warm up")).status_code == 200  # the model has drafted once: its peak is in
        print(f"address space capped at {cap_address_space(process.pid) / 2**30:.2f} GiB")
        return served

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def _request(*contents: str) -> dict[str, object]:
    return {
        "model": "fedloop",
        "user": "u-1",
        "max_tokens": 4,
        "messages": [  # alternating turns, ending with the user's
            {"role": "user" if (len(contents) - i) % 2 else "assistant", "content": c} for i, c in enumerate(contents)
        ],
    }


def _post(served: Served, body: dict[str, object]) -> httpx.Response:
    return httpx.post(served.url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


def _at_tokens(tokenizer: PreTrainedTokenizerBase, tokens: int) -> str:
    """A user message whose conversation is exactly `tokens` tokens in the chat template."""

    def count(text: str) -> int:
        return len(
            tokenizer(chat_text(tokenizer, [{"role": "user", "content": text}]), add_special_tokens=False)["input_ids"]
        )

    text = ""
    while count(text + " 7") <= tokens:  # digits with spaces: one or two tokens each, never merged across
        text += " 7"
    text += " 7" if count(text) < tokens and count(text + "7") > tokens else ""
    while count(text) < tokens:
        text += "\n"
    assert count(text) == tokens, (count(text), tokens)
    return text


def test_a_huge_conversation_and_one_token_too_many_are_refused_in_milliseconds_with_memory_flat(
    serve_process: Callable[[str], Served], tiny_model_dir: Path
) -> None:
    served = serve_process(f"max_body_bytes = {8 * 2**20}\nmax_prompt_tokens = {MAX_PROMPT_TOKENS}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    growth = PeakGrowth(served.process.pid)
    huge = _request(*["x" * 65536] * 63, "y" * 65536)  # 64 messages of 64 KiB: every per-message limit passes
    started = time.perf_counter()
    refused = _post(served, huge)
    huge_s = time.perf_counter() - started
    print(f"64 x 64 KiB: {refused.status_code} in {huge_s * 1000:.0f} ms: {refused.json()['error']['message']}")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    assert "serve.max_prompt_bytes" in refused.json()["error"]["message"] and huge_s < 1.0
    over = _request(_at_tokens(tokenizer, MAX_PROMPT_TOKENS + 1))
    started = time.perf_counter()
    refused = _post(served, over)
    over_s = time.perf_counter() - started
    message = refused.json()["error"]["message"]
    print(f"{MAX_PROMPT_TOKENS + 1} tokens: {refused.status_code} in {over_s * 1000:.0f} ms: {message}")
    assert refused.status_code == 400 and "serve.max_prompt_tokens" in refused.json()["error"]["message"]
    assert f"{MAX_PROMPT_TOKENS + 1} tokens" in refused.json()["error"]["message"] and over_s < 1.0
    print(f"peak memory growth: {growth.mib():.1f} MiB (limit 50)")
    assert growth.mib() < 50
    at_limit = _post(served, _request(_at_tokens(tokenizer, MAX_PROMPT_TOKENS)))
    assert at_limit.status_code == 200, at_limit.text


def _head(port: int, authorization: str, length: int | None) -> bytes:
    return post_head(port, "/v1/chat/completions", authorization, length)


def test_unauthenticated_and_oversized_bodies_are_refused_before_they_are_read(
    serve_process: Callable[[str], Served],
) -> None:
    served = serve_process("")
    growth = PeakGrowth(served.process.pid)
    hundred_mb = 100 * 2**20
    results: list[tuple[int, int]] = []
    attackers = [
        threading.Thread(
            target=lambda: results.append(push_body(served.port, _head(served.port, "", hundred_mb), hundred_mb, False))
        )
        for _ in range(8)
    ]
    started = time.perf_counter()
    for attacker in attackers:
        attacker.start()
    for attacker in attackers:
        attacker.join()
    print(
        f"8 unauthenticated 100 MB bodies: {results} (status, body bytes sent) in {time.perf_counter() - started:.2f} s"
    )
    assert [status for status, _ in results] == [401] * 8
    assert all(sent < hundred_mb for _, sent in results)
    authorised = f"Authorization: Bearer {KEY}\r\n"
    declared = push_body(served.port, _head(served.port, authorised, hundred_mb), hundred_mb, False)
    chunked = push_body(served.port, _head(served.port, authorised, None), hundred_mb, True)
    print(f"authenticated 100 MB, Content-Length: {declared}; chunked: {chunked}")
    assert declared[0] == 413 and chunked[0] == 413 and chunked[1] < hundred_mb
    print(f"peak memory growth: {growth.mib():.1f} MiB (limit 50)")
    assert growth.mib() < 50
    too_large = httpx.post(
        served.url, content=b" " * (2**20 + 1), headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )
    error = too_large.json()["error"]
    assert too_large.status_code == 413 and "serve.max_body_bytes" in error["message"], error
    unauthenticated = httpx.post(served.url, json=_request("hi"), timeout=30)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"http://127.0.0.1:{served.port}/health", timeout=30).status_code == 200
    assert _post(served, _request("still drafting?")).status_code == 200


def test_truncate_oldest_cuts_the_oldest_turns_and_keeps_the_system_prompt(make_tenant, tiny_model_dir: Path) -> None:
    from serve_helpers import start_serving_v0

    from fedloop.client.ingest.recorder import FeedbackError
    from fedloop.client.tenant_settings import ServeSection

    served = start_serving_v0(make_tenant, tiny_model_dir, serve=ServeSection(max_prompt_tokens=120, truncate="oldest"))
    try:
        system = {"role": "system", "content": "be brief"}
        turns = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 10} for i in range(21)
        ]
        draft = served.service.draft_one(DraftRequest("u-1", (system, *turns), "fedloop", max_tokens=2))
        recorded = served.runtime.store.drafts.get_draft(draft.draft_id)
        assert recorded is not None
        context = recorded.context
        kept = [m["content"] for m in context]
        print(f"kept {len(context) + 1} of {len(turns) + 1} messages: {[k[:7] for k in kept]}")
        assert context[0] == system and kept[-1].startswith("turn 19") and len(context) < len(turns)
        assert served.service._engine.prompt_tokens((*context, turns[-1])) <= 120
        with pytest.raises(FeedbackError, match="even its last user message"):
            served.service.draft_one(
                DraftRequest("u-1", (system, {"role": "user", "content": "word " * 400}), "fedloop")
            )
    finally:
        served.stop()


def test_the_prompt_limit_must_leave_room_for_the_draft(make_tenant, tiny_model_dir: Path) -> None:
    from serve_helpers import start_endpoint

    from fedloop.client.tenant_settings import ServeSection

    runtime = make_tenant(serve=ServeSection(max_prompt_tokens=1000, max_new_tokens=128))
    with pytest.raises(ValueError, match=r"serve.max_prompt_tokens \(1000\) \+ serve.max_new_tokens \(128\) must fit"):
        start_endpoint(runtime, tiny_model_dir)
