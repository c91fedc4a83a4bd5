"""The conversation a draft answered is recorded whole, and training and evaluation see exactly what serving saw.

A request with a system prompt and history is drafted through the real
endpoint; the draft record keeps every message (redacted and encrypted like
the prompt); its sample trains on the same conversation, rendered by the same
chat template function the engine drafts with; the held-out evaluation drafts
from it too, with the budget users' drafts get. A record from before
conversations were kept still trains on its single prompt.
"""

from __future__ import annotations

import sqlite3

import openai
import pytest
from serve_helpers import Endpoint

from fedloop.client.ingest.recorder import FeedbackRecorder
from fedloop.client.samples.curation import training_examples
from fedloop.client.samples.held_out import reference as reference_of
from fedloop.client.serve.engine import GenerationRequest
from fedloop.client.train.data import encode
from fedloop.client.train.generate import chat_text, generate_replies

SYSTEM = "You are the support desk of Acme. Answer in one sentence."
HISTORY = [
    {"role": "user", "content": "Hi, I ordered a kettle last week. My number is 13812345678."},
    {"role": "assistant", "content": "Thanks, I can see the order. What is wrong with it?"},
]
QUESTION = "It leaks from the bottom. Can I get a replacement?"


@pytest.fixture()
def endpoint(served_v0: Endpoint) -> Endpoint:
    return served_v0


def test_the_whole_conversation_is_recorded_and_trained_and_evaluated_as_served(endpoint: Endpoint) -> None:
    api = openai.OpenAI(base_url=endpoint.base_url, api_key="loopback", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, *HISTORY, {"role": "user", "content": QUESTION}]
    completion = api.chat.completions.create(model="fedloop", messages=messages, user="kim", max_tokens=10)  # type: ignore[arg-type]
    store = endpoint.runtime.store
    record = store.drafts.get_draft(completion.id)
    assert record is not None and record.prompt == QUESTION
    assert [m["role"] for m in record.context] == ["system", "user", "assistant"]
    assert record.context[0]["content"] == SYSTEM and record.context[2] == HISTORY[1]
    assert "13812345678" not in record.context[1]["content"] and "<CN_MOBILE_1>" in record.context[1]["content"]
    raw = sqlite3.connect(store.path).execute("SELECT context FROM drafts WHERE id = ?", (completion.id,)).fetchone()
    assert raw[0] is not None and SYSTEM.encode() not in raw[0]  # encrypted at rest

    final = "Yes, a replacement ships today."
    endpoint.service.record_outcome(completion.id, "edit", final, 4000)
    [example] = training_examples(store, endpoint.runtime.settings.curation)
    assert example.messages == (*record.context, {"role": "user", "content": QUESTION})
    tokenizer = endpoint.engine.tokenizer
    served_text = chat_text(tokenizer, example.messages)  # what the engine renders for this conversation
    ids, labels = encode(tokenizer, example.messages, final, 512)
    prompt_ids = tokenizer(served_text, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids and all(label == -100 for label in labels[: len(prompt_ids)])
    assert SYSTEM in served_text and "What is wrong with it?" in served_text

    [sample] = store.samples.find()
    reference = reference_of(store, sample)  # the reference this final gives if its cluster is held out
    assert reference.messages == example.messages and reference.final == final
    settings = endpoint.runtime.settings
    assert settings.held_out_tokens == settings.serve.max_new_tokens  # evaluated with the budget drafts get
    model = endpoint.engine._model
    model.set_adapter("v0")
    [evaluated] = generate_replies(model, tokenizer, [reference.messages], 10)
    served = endpoint.engine.submit(GenerationRequest("v0", reference.messages, 10)).result().text
    assert evaluated == served  # the evaluation drafts exactly what serving drafts for the recorded conversation


def test_a_draft_recorded_without_context_still_trains_on_its_prompt(endpoint: Endpoint) -> None:
    recorder = FeedbackRecorder(endpoint.runtime.pipeline)
    draft_id = recorder.record_draft("old-user", "Where is my parcel?", "It is on its way.", "v0")
    recorder.record_outcome(draft_id, "accept")
    [example] = training_examples(endpoint.runtime.store, endpoint.runtime.settings.curation)
    assert example.context == () and example.messages == ({"role": "user", "content": "Where is my parcel?"},)
