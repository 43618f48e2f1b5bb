"""What clients receive is valid against OpenAI's published OpenAPI document, even when a host's output is not."""
import json

import pytest

from ..support.factories import give_credits, make_host, make_key
from ..support.fakehost import FakeHost
from ..support.openapi import errors

MODEL = "gpushare/tiny-chat"


@pytest.fixture
def key(people):
    give_credits(people.alice, "5")
    _, secret = make_key(people.alice)
    return {"Authorization": f"Bearer {secret}"}


def events(response) -> list:
    text = response.get_data(as_text=True)
    payloads = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]", text[-300:]
    return [json.loads(p) for p in payloads[:-1]]


def test_it_answers_chat_completions_to_the_schema(client, people, key):
    with FakeHost() as host:  # sends vLLM's extra fields and nulls
        make_host(people.bob, [MODEL], api_base=host.api_base)
        body = client.post("/v1/chat/completions", headers=key, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).get_json()
        chunks = events(client.post("/v1/chat/completions", headers=key, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}))
    assert errors("CreateChatCompletionResponse", body) == []
    assert "service_tier" not in body and "stop_reason" not in body["choices"][0]
    for chunk in chunks:
        assert errors("CreateChatCompletionStreamResponse", chunk) == [], chunk
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_it_answers_completions_to_the_schema(client, people, key):
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        body = client.post("/v1/completions", headers=key, json={"model": MODEL, "prompt": "a", "max_tokens": 3})
        chunks = events(client.post("/v1/completions", headers=key, json={
            "model": MODEL, "prompt": "a", "max_tokens": 3, "stream": True}))
    assert errors("CreateCompletionResponse", body.get_json()) == []
    for chunk in chunks:
        # OpenAI itself streams finish_reason null until the last chunk; its document has no null there.
        if chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
            chunk = {**chunk, "choices": [{**chunk["choices"][0], "finish_reason": "stop"}]}
        assert errors("CreateCompletionResponse", chunk) == [], chunk


def test_it_lists_models_to_the_schema(client, people, key):
    make_host(people.bob, [MODEL])
    body = client.get("/v1/models", headers=key).get_json()
    assert errors("ListModelsResponse", body) == [] and body["data"]


@pytest.mark.parametrize("request_kwargs", [
    {"headers": {}},
    {"json": {"model": "no/such", "messages": [{"role": "user", "content": "x"}]}},
    {"data": b"{", "content_type": "application/json"},
])
def test_it_answers_errors_to_the_schema(client, people, key, request_kwargs):
    request_kwargs.setdefault("headers", key)
    response = client.post("/v1/chat/completions", **request_kwargs)
    assert response.status_code >= 400 and errors("ErrorResponse", response.get_json()) == []


def test_it_notices_what_a_host_sends_unnormalised():
    """The check can fail: vLLM's own body, as a host sends it, breaks the schema."""
    raw = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "service_tier": None,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    assert errors("CreateChatCompletionResponse", raw)
