"""The whole request path with the official OpenAI SDK against two real vLLM hosts (tiny-chat, CPU build).

The model's text is noise: the tests assert on structure and token counts,
never on words. tiny-chat is built so that the router's own count (the text
re-tokenized) equals vLLM's, so exact equality is asserted.
"""
from __future__ import annotations

import openai
import pytest

from app.money import ledger

from ..support.openapi import errors
from .conftest import MODEL, records

pytestmark = pytest.mark.vllm


@pytest.fixture
def sdk(engine_sdk):
    """The SDK pointed at the app, with both tiny-chat engines as its hosts (conftest.py)."""
    return engine_sdk

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def test_it_chats_through_the_sdk_and_bills_the_hosts_exact_count(sdk, people):
    answer = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=20,
                                         extra_body={"min_tokens": 20})
    assert answer.object == "chat.completion" and len(answer.choices[0].message.content) == 20
    assert answer.usage.completion_tokens == 20 and answer.usage.prompt_tokens > 5
    [row] = records()
    assert (row.prompt_tokens, row.completion_tokens) == (row.host_prompt_tokens, row.host_completion_tokens)
    assert row.cost > 0 and ledger.invariants() == []


def test_it_streams_chat_with_usage_on_request(sdk):
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, stream=True,
                                              stream_options={"include_usage": True},
                                              extra_body={"min_tokens": 12}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) == 12 and chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    for chunk in chunks:
        assert errors("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True)) == []
    [row] = records()
    assert row.stream and row.completion_tokens == row.host_completion_tokens == 12 and row.ttft_ms is not None


def test_it_counts_the_end_of_sequence_token_like_the_host(sdk):
    for seed in range(3):
        answer = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=400, seed=seed)
        assert answer.choices[0].finish_reason in ("stop", "length")
    assert all(r.completion_tokens == r.host_completion_tokens for r in records())


def test_it_serves_legacy_completions_streaming_and_not(sdk):
    whole = sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                   extra_body={"min_tokens": 8})
    parts = list(sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True,
                                        extra_body={"min_tokens": 8}))
    assert len(whole.choices[0].text) == 8 and whole.usage.completion_tokens == 8
    assert len("".join(p.choices[0].text for p in parts if p.choices)) == 8
    assert all(r.prompt_tokens == r.host_prompt_tokens for r in records())


def test_it_passes_sampling_parameters_through(sdk):
    one = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, seed=7, temperature=1)
    two = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, seed=7, temperature=1)
    assert one.choices[0].message.content == two.choices[0].message.content
    probs = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, logprobs=True, top_logprobs=2)
    assert len(probs.choices[0].logprobs.content) >= 1 and len(probs.choices[0].logprobs.content[0].top_logprobs) == 2
    assert errors("CreateChatCompletionResponse", probs.model_dump(exclude_unset=True)) == []


def test_it_spreads_requests_over_both_hosts(sdk, hosts):
    for _ in range(4):
        sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    assert {r.host_id for r in records()} == set(hosts)


def test_it_lists_the_model_and_maps_errors_to_sdk_exceptions(sdk, app, people):
    assert [m.id for m in sdk.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no/such-model", messages=ASK)
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5000)
    with pytest.raises(openai.AuthenticationError):
        sdk.with_options(api_key="gpsk_wrong").models.list()
