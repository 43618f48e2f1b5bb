"""``POST /v1/responses`` with the official SDK against real vLLM hosts: text, function tools and the turn after a
call, streamed and not, each answer and event valid against OpenAI's schema, and billed by the router's own count,
which equals the engine's."""
from __future__ import annotations

import json

import openai
import pytest

from ..support.openapi import errors
from .conftest import MODEL, records
from .test_tools_vllm import counts_agree

pytestmark = pytest.mark.vllm

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                          "required": ["city"], "additionalProperties": False}}
NAMED = {"type": "function", "name": "get_weather"}


@pytest.fixture
def sdk(engine_sdk):
    return engine_sdk


def test_it_answers_text_as_a_response(sdk):
    answer = sdk.responses.create(model=MODEL, input="What is the weather in Paris?", instructions="Be brief.",
                                  max_output_tokens=6, metadata={"run": "1"}, store=False, temperature=0)
    assert errors("Response", answer.model_dump(exclude_unset=True)) == []
    assert answer.id.startswith("resp_") and answer.object == "response" and answer.metadata == {"run": "1"}
    assert answer.status in ("completed", "incomplete") and answer.output[0].type == "message"
    assert answer.output_text and answer.usage.output_tokens == 6 and answer.usage.cost > 0
    [row] = records()
    assert row.endpoint == "responses" and answer.usage.cost == row.cost / 1_000_000
    counts_agree()


def test_it_calls_a_function_then_answers_with_its_output(sdk):
    asked = [{"role": "user", "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]}]
    first = sdk.responses.create(model=MODEL, input=asked, tools=[WEATHER], tool_choice=NAMED, max_output_tokens=300)
    assert errors("Response", first.model_dump(exclude_unset=True)) == []
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] in ("Paris", "Rome") and call.call_id
    turn = asked + [call.model_dump(exclude_none=True),
                    {"type": "function_call_output", "call_id": call.call_id, "output": "21 C and sunny"}]
    final = sdk.responses.create(model=MODEL, input=turn, tools=[WEATHER], max_output_tokens=5, temperature=0)
    assert final.output_text and final.usage.input_tokens > first.usage.input_tokens
    counts_agree()


def test_it_streams_response_events(sdk):
    events = list(sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=5, stream=True))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type in ("response.completed", "response.incomplete")
    for event in events:
        assert errors("ResponseStreamEvent", event.model_dump(exclude_unset=True)) == [], event.type
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output[0].content[0].text
    assert events[-1].response.usage.output_tokens == records()[-1].completion_tokens
    tools = list(sdk.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice=NAMED,
                                      max_output_tokens=300, stream=True))
    arguments = "".join(e.delta for e in tools if e.type == "response.function_call_arguments.delta")
    done = [e for e in tools if e.type == "response.function_call_arguments.done"]
    assert done and done[0].arguments == arguments and json.loads(arguments)["city"]
    for event in tools:
        assert errors("ResponseStreamEvent", event.model_dump(exclude_unset=True)) == [], event.type
    counts_agree()


def test_it_refuses_what_it_cannot_serve(sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input="Hi", previous_response_id="resp_123")
    assert refused.value.code == "unsupported_parameter" and "input" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}])
    assert refused.value.code == "unsupported_modality"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input="Hi", tools=[{"type": "web_search"}])
    assert refused.value.code == "unsupported_value"
    assert records() == []
