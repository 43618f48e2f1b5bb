"""Agents through the router, against real vLLM hosts serving tiny-chat with its tool-calling template: tool calls
(named, required, streamed), the turns after them, every message shape, the whole parameter set, and cost in usage.

tiny-chat's text is noise, but its tool calls are real: vLLM constrains them to the tool's schema and its
``hermes`` parser reads them back. Every answer is checked against OpenAI's schema, and the router's token counts
against the engine's, exactly.
"""
from __future__ import annotations

import json

import openai
import pytest

from ..support.openapi import errors
from .conftest import MODEL, records

pytestmark = pytest.mark.vllm


@pytest.fixture
def sdk(engine_sdk):
    """The SDK pointed at the app, with both tiny-chat engines as its hosts (conftest.py)."""
    return engine_sdk

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC"]}},
                                       "required": ["zone"]}}}
TOOLS = [WEATHER, TIME]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def counts_agree() -> None:
    """Every request so far was billed by the router's own count, and that count is the engine's."""
    for row in records():
        assert (row.prompt_tokens, row.completion_tokens) == (row.host_prompt_tokens, row.host_completion_tokens), \
            f"{row.endpoint} {row.status}: router {row.prompt_tokens}/{row.completion_tokens}, " \
            f"engine {row.host_prompt_tokens}/{row.host_completion_tokens}"


def test_it_calls_a_named_function_and_bills_what_the_engine_generated(sdk):
    answer = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=300,
                                         seed=1)
    assert errors("CreateChatCompletionResponse", answer.model_dump(exclude_unset=True)) == []
    message = answer.choices[0].message
    [call] = message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
    assert message.content is None and answer.choices[0].finish_reason == "stop"
    # The tool call's own syntax (<tool_call>{"name": ...}) and the end-of-sequence token are billed as generated.
    assert answer.usage.completion_tokens > len(call.function.name) + len(call.function.arguments)
    [row] = records()
    assert answer.usage.cost == row.cost / 1_000_000 and row.cost > 0
    counts_agree()


def test_it_calls_tools_when_required(sdk):
    finishes = []
    for seed in range(4):
        answer = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                             max_tokens=300, seed=seed)
        assert errors("CreateChatCompletionResponse", answer.model_dump(exclude_unset=True)) == []
        choice = answer.choices[0]
        finishes.append(choice.finish_reason)
        if choice.finish_reason == "tool_calls":
            assert choice.message.tool_calls and all(c.function.name in ("get_weather", "get_time")
                                                     for c in choice.message.tool_calls)
            for call in choice.message.tool_calls:
                json.loads(call.function.arguments)
    assert "tool_calls" in finishes
    counts_agree()


def test_it_streams_tool_calls_as_openai_deltas(sdk):
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED,
                                              max_tokens=300, seed=2, stream=True,
                                              stream_options={"include_usage": True}))
    for chunk in chunks:
        assert errors("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True)) == []
    deltas = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function.name == "get_weather"
    assert {d.index for d in deltas} == {0}
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments)["city"] in ("Paris", "Rome")
    usage = chunks[-1].usage
    [row] = records()
    assert usage.completion_tokens == row.completion_tokens and usage.cost == row.cost / 1_000_000
    counts_agree()


def test_it_runs_an_agent_loop_call_result_answer(sdk):
    history = list(ASK)
    first = sdk.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice=NAMED,
                                        max_tokens=300, seed=3)
    call = first.choices[0].message.tool_calls[0]
    history.append(first.choices[0].message.model_dump(exclude_unset=True, exclude_none=True))
    history.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21})})
    assert history[-2]["tool_calls"] and "content" not in history[-2]
    final = sdk.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=8, seed=3)
    assert final.choices[0].message.content and final.choices[0].finish_reason in ("stop", "length")
    assert final.usage.prompt_tokens > first.usage.prompt_tokens
    counts_agree()


MESSAGE_SHAPES = {
    "text parts": [{"role": "user", "content": [{"type": "text", "text": "Weather"},
                                                {"type": "text", "text": "in Paris?"}]}],
    "names and a developer": [{"role": "developer", "content": "Be brief.", "name": "ops"},
                              {"role": "system", "content": [{"type": "text", "text": "You are a forecaster."}]},
                              {"role": "user", "content": "Hi", "name": "alice"}],
    "tool turn in parts": [
        *ASK,
        {"role": "assistant", "content": None, "refusal": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "21 C"}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00", "name": "get_time"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot say more."}], "audio": None,
         "function_call": None, "annotations": []},
        {"role": "user", "content": "Thanks!"}],
}


@pytest.mark.parametrize("shape", MESSAGE_SHAPES)
def test_it_counts_every_message_shape_as_the_engine_renders_it(sdk, shape):
    for tools in (None, TOOLS):
        sdk.chat.completions.create(model=MODEL, messages=MESSAGE_SHAPES[shape], max_tokens=4,
                                    **({"tools": tools} if tools else {}))
    counts_agree()


def test_it_takes_the_whole_openai_parameter_set(sdk):
    answer = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_completion_tokens=5, safety_identifier="user-7", prompt_cache_key="thread-1",
        modalities=["text"], prediction={"type": "content", "content": "Sunny"}, verbosity="low", store=False,
        metadata={"team": "a"}, service_tier="auto", user="u", reasoning_effort="low", parallel_tool_calls=False,
        tools=TOOLS, tool_choice="none", prompt_cache_retention="in_memory")
    assert answer.choices[0].message.content is not None
    streamed = list(sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, stream=True,
                                                stream_options={"include_usage": True, "include_obfuscation": False}))
    assert streamed[-1].usage.completion_tokens == records()[-1].completion_tokens
    counts_agree()


def test_it_answers_the_deprecated_functions_with_function_call(sdk):
    answer = sdk.chat.completions.create(model=MODEL, messages=ASK, functions=[WEATHER["function"]],
                                         function_call={"name": "get_weather"}, max_tokens=300, seed=1)
    message = answer.choices[0].message
    assert message.function_call.name == "get_weather" and not message.tool_calls
    assert json.loads(message.function_call.arguments)["city"] in ("Paris", "Rome")
    assert errors("CreateChatCompletionResponse", answer.model_dump(exclude_unset=True)) == []
    counts_agree()


def test_it_follows_a_json_schema(sdk):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    answer = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=200, seed=4, response_format={
        "type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}})
    assert json.loads(answer.choices[0].message.content)["answer"] in ("yes", "no")
    counts_agree()


def test_it_keeps_a_prompt_cache_key_on_one_host(sdk, hosts):
    for key in ("thread-a", "thread-b", "thread-c", "thread-d"):
        for _ in range(3):
            sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1, prompt_cache_key=key)
    by_key = [{r.host_id for r in records()[i:i + 3]} for i in range(0, 12, 3)]
    assert all(len(hosts_of_key) == 1 for hosts_of_key in by_key)


def test_it_refuses_what_it_cannot_serve_in_openai_terms(sdk):
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=image)
    assert refused.value.code == "unsupported_modality" and "accepts text only" in refused.value.message
    assert refused.value.param == "messages[0].content[1].type"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=ASK, web_search_options={})
    assert refused.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=ASK, extra_body={"upstream_url": "http://evil"})
    assert refused.value.code == "unknown_parameter"
    assert records() == []
