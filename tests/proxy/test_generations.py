"""``GET /v1/generations/{id}``: a request's record for the owner of the key that made it; and what /v1 does not
serve, said in OpenAI's error object."""
from __future__ import annotations

import openai
import pytest

from ..support.factories import give_credits, make_host, make_key
from ..support.fakehost import FakeHost
from ..support.openapi import errors

MODEL = "gpushare/tiny-chat"
ASK = [{"role": "user", "content": "hello"}]


def test_it_shows_a_generation_to_its_owner_only(sdk, client, people):
    give_credits(people.alice, "5")
    _, alice_key = make_key(people.alice)
    _, other_alice_key = make_key(people.alice)
    _, mallory_key = make_key(people.mallory)
    with FakeHost() as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        answer = sdk(alice_key).chat.completions.create(model=MODEL, messages=ASK, max_tokens=3)
    assert errors("CreateChatCompletionResponse", answer.model_dump(exclude_unset=True)) == []
    record = client.get(f"/v1/generations/{answer.id}", headers={"Authorization": f"Bearer {other_alice_key}"})
    assert record.status_code == 200
    body = record.get_json()
    assert body["id"] == answer.id and body["model"] == MODEL and body["status"] == "ok"
    assert body["usage"]["completion_tokens"] == answer.usage.completion_tokens == 3
    assert body["usage"]["cost"] == answer.usage.cost > 0
    assert body["host_usage"]["completion_tokens"] == 3 and body["latency_ms"] >= 0
    assert body["host"]["region"] and "peer_id" in body["host"]
    hidden = client.get(f"/v1/generations/{answer.id}", headers={"Authorization": f"Bearer {mallory_key}"})
    assert hidden.status_code == 404 and hidden.get_json()["error"]["code"] == "generation_not_found"
    assert client.get(f"/v1/generations/{answer.id}").status_code == 401


@pytest.mark.parametrize("method, path, status, code", [
    ("POST", "/v1/audio/speech", 404, "unsupported_endpoint"),
    ("POST", "/v1/images/generations", 404, "unsupported_endpoint"),
    ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    ("DELETE", "/v1/models/gpushare/tiny-chat", 405, "method_not_allowed"),
])
def test_it_says_what_it_does_not_serve(client, method, path, status, code):
    answer = client.open(path, method=method, json={"model": MODEL})
    error = answer.get_json()["error"]
    assert answer.status_code == status and error["code"] == code
    assert "POST /v1/chat/completions" in error["message"] or "GET /v1/models" in error["message"]


def test_the_sdk_sees_an_unsupported_endpoint_as_not_found(sdk, people):
    _, key = make_key(people.alice)
    with pytest.raises(openai.NotFoundError) as refused:
        sdk(key).images.generate(prompt="a cat")
    assert refused.value.code == "unsupported_endpoint"


def test_a_response_stream_cut_by_its_host_ends_with_an_error_event(client, people):
    import json

    give_credits(people.alice, "5")
    _, key = make_key(people.alice)
    with FakeHost("die_midstream") as host:
        make_host(people.bob, [MODEL], api_base=host.api_base)
        answer = client.post("/v1/responses", headers={"Authorization": f"Bearer {key}"},
                             json={"model": MODEL, "input": "hello", "stream": True, "max_output_tokens": 20})
        body = answer.get_data(as_text=True)
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "error"
    assert events[-1]["code"] == "host_failed" and [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        assert errors("ResponseStreamEvent", event) == [], event["type"]


def test_an_empty_response_stream_still_ends_with_its_message():
    import json

    from app.proxy.responses import Presenter

    presenter = Presenter({"model": MODEL, "input": "hi"}, "resp_1", 1, MODEL)
    raw = b"".join(presenter.start() + presenter.chunk(
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + presenter.end(
        {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "cost": 0.0}))
    events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ""
    for event in events:
        assert errors("ResponseStreamEvent", event) == [], event["type"]
