"""``POST /v1/embeddings`` with the official SDK against a real vLLM host serving all-MiniLM-L6-v2 (the pooling
runner): held, routed, billed at the model's input price by the router's own count of the input, which equals the
engine's; every answer valid against OpenAI's schema."""
from __future__ import annotations

import math

import openai
import pytest

from ..support.engines import EMBEDDING_MODEL
from ..support.factories import give_credits, make_key
from ..support.openapi import errors
from .conftest import MODEL, records
from .test_tools_vllm import counts_agree

pytestmark = pytest.mark.vllm


@pytest.fixture
def sdk(sdk, app, people, embedding_host):
    """The SDK (base64 vectors by default, as it asks for them) with a key that has credits."""
    give_credits(people.alice, "5")
    _, secret = make_key(people.alice)
    return sdk(secret)


def test_it_embeds_text_and_bills_the_input_by_its_own_count(sdk):
    one = sdk.embeddings.create(model=EMBEDDING_MODEL, input="The weather in Paris is sunny.")
    assert errors("CreateEmbeddingResponse", one.model_dump(exclude_unset=True)) == []
    [vector] = one.data
    assert len(vector.embedding) == 384 and math.isclose(sum(x * x for x in vector.embedding), 1, rel_tol=1e-3)
    many = sdk.embeddings.create(model=EMBEDDING_MODEL, input=["Paris", "Rome is warm today", "Oslo"],
                                 encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2] and many.usage.prompt_tokens == many.usage.total_tokens
    ids = sdk.embeddings.create(model=EMBEDDING_MODEL, input=[101, 3000, 102])
    assert ids.usage.prompt_tokens == 3
    rows = records()
    assert [r.endpoint for r in rows] == ["embeddings"] * 3 and all(r.completion_tokens == 0 for r in rows)
    assert one.usage.cost == rows[0].cost / 1_000_000 and rows[0].cost > 0
    counts_agree()


def test_it_keeps_chat_and_embedding_models_to_their_endpoints(sdk, hosts):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model=MODEL, input="x")
    assert refused.value.code == "unsupported_endpoint" and "/v1/chat/completions" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "x"}])
    assert refused.value.code == "unsupported_endpoint" and "/v1/embeddings" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model=EMBEDDING_MODEL, input=["short", "word " * 300])
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "input[1]"
    assert records() == []
