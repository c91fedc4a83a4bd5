"""The draft endpoint driven by the client libraries products use: `openai`, `langchain-openai` and `litellm`.

Each drafts streaming and not, on a real uvicorn server on 127.0.0.1, and
ends with an outcome recorded by draft id. litellm drops `user` for
OpenAI-compatible models, so it sends the `X-Fedloop-User` header; a
streaming LangChain product names its draft itself (`X-Fedloop-Draft-Id`),
because LangChain replaces the chunks' ids with its own run id.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from serve_helpers import Endpoint

QUESTION = "Where is my order 12345? It has not arrived."


@pytest.fixture()
def endpoint(served_v0: Endpoint) -> Endpoint:
    return served_v0


def report(endpoint: Endpoint, draft_id: str, version: str) -> None:
    """Report an accept for `draft_id` and check it is stored against the version that drafted it."""
    reply = httpx.post(f"{endpoint.base_url}/drafts/{draft_id}/outcome", json={"action": "accept"}, timeout=30)
    assert reply.status_code == 200, reply.text
    record = endpoint.runtime.store.drafts.get_draft(draft_id)
    assert record is not None and record.model_version == version
    assert endpoint.runtime.store.drafts.has_outcome(draft_id)


def test_the_openai_client(endpoint: Endpoint) -> None:
    api = openai.OpenAI(base_url=endpoint.base_url, api_key="loopback", max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    plain = api.chat.completions.create(model="fedloop", messages=messages, user="o1", max_tokens=5)
    report(endpoint, plain.id, plain.model)
    chunks = list(api.chat.completions.create(model="fedloop", messages=messages, user="o2", max_tokens=5, stream=True))
    report(endpoint, chunks[0].id, chunks[0].model)


def test_langchain_openai(endpoint: Endpoint) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=endpoint.base_url, api_key="loopback", model="fedloop", max_tokens=5, max_retries=0)
    message = llm.invoke([("system", "Answer briefly."), ("user", QUESTION)], user="lc1")
    report(endpoint, message.response_metadata["id"], message.response_metadata["model_name"])
    chunks = list(llm.stream([("user", QUESTION)], user="lc2", extra_headers={"X-Fedloop-Draft-Id": "lc-draft-0001"}))
    assert chunks and all(chunk.id != "lc-draft-0001" for chunk in chunks)  # LangChain's own run id
    report(endpoint, "lc-draft-0001", "v0")


def test_litellm(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm would fetch its price list from the web
    import litellm

    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    common = {
        "model": "openai/fedloop",
        "api_base": endpoint.base_url,
        "api_key": "loopback",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 5,
        "user": "dropped-by-litellm",
    }
    plain: Any = litellm.completion(**common, extra_headers={"X-Fedloop-User": "ll1"})
    report(endpoint, plain.id, plain.model)
    stream = litellm.completion(**common, stream=True, extra_headers={"X-Fedloop-User": "ll2"})
    chunks = list(stream)
    report(endpoint, chunks[0].id, "v0")
