"""Third-party clients as their users run them, against the app on a real HTTP server with real vLLM hosts: the
official Node SDK (from npm, pinned, run by this machine's Node), LangChain's ``ChatOpenAI`` and the LiteLLM SDK.
Each does chat, streaming, text parts, tools (named, required, auto, streamed), an agent loop, structured output
and the error classes; every body and chunk is checked against OpenAI's schema, and the router's token counts
against the engine's."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..support.engines import EMBEDDING_MODEL
from ..support.factories import give_credits, make_key, make_user
from ..support.openapi import errors
from .conftest import MODEL, records
from .test_tools_vllm import counts_agree

pytestmark = pytest.mark.vllm

NODE_OPENAI = "7.59.0"  # the official SDK on npm
AGENT_SCRIPT = Path(__file__).parent / "clients" / "agent.mjs"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"]}}}
ASK = "What is the weather in Paris?"


@pytest.fixture
def served(live_server, hosts, embedding_host, people):
    """The app over HTTP, both tiny-chat engines as its hosts, and a key with credits: (base URL, key)."""
    give_credits(people.alice, "5")
    _, secret = make_key(people.alice)
    return f"{live_server}/v1", secret


@pytest.fixture
def refusing(people):
    """Keys the router refuses, one per error class a balance, a key's limits and its allowlist give."""
    from app.extensions import db

    broke = make_user("broke@example.com")
    _, no_credit = make_key(broke)
    _, spend_limit = make_key(people.alice, "capped", spend_limit=1)
    _, not_allowed = make_key(people.alice, "embeddings only", allowed_models=[EMBEDDING_MODEL])
    row, rate_limited = make_key(people.alice, "slow")
    row.requests_per_minute = 1
    db.session.commit()
    return {"no_credit": no_credit, "spend_limit": spend_limit, "not_allowed": not_allowed,
            "rate_limited": rate_limited}


REFUSALS = {"no_credit": (402, "insufficient_credits"), "spend_limit": (402, "spend_limit_reached"),
            "not_allowed": (403, "model_not_allowed"), "rate_limited": (429, "rate_limit_exceeded")}


@pytest.fixture(scope="session")
def node_openai():
    """A folder with the official ``openai`` package installed from npm (kept between runs)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("these tests need Node.js and npm (the nodejs package)", pytrace=False)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpushare-tests"
    folder = cache / f"node-openai-{NODE_OPENAI}"
    if not (folder / "node_modules" / "openai" / "package.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(folder), f"openai@{NODE_OPENAI}", "--no-audit",
                               "--no-fund", "--loglevel=error"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"npm could not install openai@{NODE_OPENAI}: {done.stderr[-2000:]}", pytrace=False)
    return node, folder


def chat_errors(body: dict) -> list:
    return errors("CreateChatCompletionResponse", body)


def chunk_errors(chunks: list[dict]) -> list:
    return [e for chunk in chunks for e in errors("CreateChatCompletionStreamResponse", chunk)]


def test_the_node_sdk_runs_an_agent(served, node_openai, refusing):
    base, key = served
    node, folder = node_openai
    script = folder / AGENT_SCRIPT.name  # ES modules find "openai" in the node_modules beside them
    shutil.copyfile(AGENT_SCRIPT, script)
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OPENAI_BASE_URL": base, "OPENAI_API_KEY": key, "MODEL": MODEL,
                                                    "EMBEDDING_MODEL": EMBEDDING_MODEL,
                                                    "REFUSED_KEYS": json.dumps(refusing)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    bodies = [out["chat"], out["text_parts"], out["named"], *out["required"], out["auto"], out["final"],
              out["structured"]]
    assert [chat_errors(body) for body in bodies] == [[]] * len(bodies)
    assert chunk_errors(out["stream"] + out["streamed_tools"]) == []
    assert out["stream"][-1]["usage"]["cost"] > 0
    [call] = out["named"]["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"])["city"]
    assert any(body["choices"][0]["finish_reason"] == "tool_calls" for body in out["required"])
    streamed = [c for chunk in out["streamed_tools"] if chunk["choices"]
                for c in chunk["choices"][0]["delta"].get("tool_calls", [])]
    assert streamed[0]["id"] and json.loads("".join(c["function"].get("arguments", "") for c in streamed))
    assert out["final"]["choices"][0]["message"]["content"]
    assert json.loads(out["structured"]["choices"][0]["message"]["content"])["answer"] in ("yes", "no")
    assert {name: (e["status"], e["code"]) for name, e in out["errors"].items()} == {
        "not_found": (404, "model_not_found"), "bad_key": (401, "invalid_api_key"),
        "image": (400, "unsupported_modality"), "too_long": (400, "context_length_exceeded"),
        "unknown": (400, "unknown_parameter"), "endpoint": (404, "unsupported_endpoint"), **REFUSALS}
    assert errors("Response", out["response"]) == [] and out["response_text"]
    assert [item["type"] for item in out["response_tool"]["output"]] == ["function_call"]
    assert [e for event in out["response_events"] for e in errors("ResponseStreamEvent", event)] == []
    assert out["response_events"][-1]["response"]["usage"]["cost"] > 0
    assert errors("CreateEmbeddingResponse", out["embeddings"]) == []
    assert [len(d["embedding"]) for d in out["embeddings"]["data"]] == [384, 384]
    assert len(out["embeddings_default"]["data"][0]["embedding"]) == 384  # the SDK decoded base64
    assert len(records()) == 18  # the answered requests (the slow key's first one too): no error was billed
    counts_agree()


def test_langchain_chat_openai_runs_an_agent(served, refusing):
    import openai
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    base, key = served
    # Greedy where text is asserted: tiny-chat's eos is as likely as a character, so sampled text may be empty.
    llm = ChatOpenAI(model=MODEL, base_url=base, api_key=key, max_retries=0, max_tokens=5, temperature=0)
    assert isinstance(llm.invoke(ASK).content, str)
    assert "".join(chunk.content for chunk in llm.stream(ASK))
    blocks = llm.invoke([SystemMessage("Be brief."),
                         HumanMessage(content=[{"type": "text", "text": "Weather"}, {"type": "text", "text": "?"}])])
    assert isinstance(blocks.content, str)
    tools = ChatOpenAI(model=MODEL, base_url=base, api_key=key, max_retries=0, max_tokens=300, seed=1)
    asked = [HumanMessage(ASK)]
    called = tools.bind_tools([WEATHER], tool_choice="get_weather").invoke(asked)
    [call] = called.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "Rome")
    required = tools.bind_tools([WEATHER], tool_choice="required").invoke(asked)
    assert required.tool_calls or required.response_metadata["finish_reason"] == "length"
    streamed = None
    for chunk in tools.bind_tools([WEATHER], tool_choice="get_weather").stream(asked):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls[0]["name"] == "get_weather"
    final = llm.bind_tools([WEATHER]).invoke(asked + [called, ToolMessage("21 C", tool_call_id=call["id"])])
    assert isinstance(final.content, str)
    verdict = {"title": "Verdict", "type": "object", "additionalProperties": False, "required": ["answer"],
               "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}}}
    structured = ChatOpenAI(model=MODEL, base_url=base, api_key=key, max_retries=0, max_tokens=200, seed=4)
    assert structured.with_structured_output(verdict, method="json_schema").invoke(ASK)["answer"] in ("yes", "no")
    responses = ChatOpenAI(model=MODEL, base_url=base, api_key=key, max_retries=0, max_tokens=300,
                           use_responses_api=True)
    assert responses.bind(temperature=0).invoke(ASK).text
    [via_responses] = responses.bind_tools([WEATHER], tool_choice="get_weather").invoke(asked).tool_calls
    assert via_responses["name"] == "get_weather" and via_responses["args"]["city"] in ("Paris", "Rome")
    vectors = OpenAIEmbeddings(model=EMBEDDING_MODEL, base_url=base, api_key=key, max_retries=0,
                               check_embedding_ctx_length=False)  # its own check downloads tiktoken's tables
    assert [len(v) for v in vectors.embed_documents(["Paris", "Rome"])] == [384, 384]
    assert len(vectors.embed_query("Oslo")) == 384
    with pytest.raises(openai.NotFoundError):
        ChatOpenAI(model="no/such-model", base_url=base, api_key=key, max_retries=0).invoke(ASK)
    with pytest.raises(openai.AuthenticationError):
        ChatOpenAI(model=MODEL, base_url=base, api_key="gpsk_wrong", max_retries=0).invoke(ASK)
    ChatOpenAI(model=MODEL, base_url=base, api_key=refusing["rate_limited"], max_retries=0, max_tokens=1).invoke(ASK)
    for name, (status, code) in REFUSALS.items():
        with pytest.raises(openai.APIStatusError) as refused:
            ChatOpenAI(model=MODEL, base_url=base, api_key=refusing[name], max_retries=0, max_tokens=5).invoke(ASK)
        assert (refused.value.status_code, refused.value.code) == (status, code)
    counts_agree()


@pytest.fixture
def litellm(monkeypatch):
    """The LiteLLM SDK with its model cost map read from its own package (it fetches one from GitHub by default)."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning",
                            "ignore::UserWarning")
def test_litellm_runs_an_agent(served, litellm, refusing):
    base, key = served
    model = f"openai/{MODEL}"
    common = {"model": model, "api_base": base, "api_key": key, "num_retries": 0}
    asked = [{"role": "user", "content": ASK}]
    answer = litellm.completion(messages=asked, max_tokens=5, **common)
    assert isinstance(answer.choices[0].message.content, str) and answer.usage.completion_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in litellm.completion(
        messages=asked, max_tokens=5, stream=True, temperature=0, **common) if c.choices)
    assert text
    parts = litellm.completion(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                               max_tokens=3, **common)
    assert parts.choices[0].message.content is not None
    named = {"type": "function", "function": {"name": "get_weather"}}
    called = litellm.completion(messages=asked, tools=[WEATHER], tool_choice=named, max_tokens=300, seed=1, **common)
    [call] = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    history = asked + [called.choices[0].message.model_dump(exclude_none=True),
                       {"role": "tool", "tool_call_id": call.id, "content": "21 C"}]
    final = litellm.completion(messages=history, tools=[WEATHER], max_tokens=5, **common)
    assert final.choices[0].message.content is not None
    streamed = [c for c in litellm.completion(messages=asked, tools=[WEATHER], tool_choice=named, max_tokens=300,
                                              seed=2, stream=True, **common) if c.choices]
    deltas = [t for c in streamed for t in c.choices[0].delta.tool_calls or []]
    assert deltas and json.loads("".join(t.function.arguments or "" for t in deltas))["city"]
    vectors = litellm.embedding(model=f"openai/{EMBEDDING_MODEL}", input=["Paris", "Rome"], api_base=base,
                                api_key=key)
    assert [len(v["embedding"]) for v in vectors.data] == [384, 384] and vectors.usage.prompt_tokens > 0
    response = litellm.responses(input=ASK, max_output_tokens=5, **common)
    assert response.output and response.usage.output_tokens > 0
    required = litellm.completion(messages=asked, tools=[WEATHER], tool_choice="required", max_tokens=300, seed=0,
                                  **common)
    assert required.choices[0].finish_reason in ("tool_calls", "length")
    verdict = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
               "required": ["answer"], "additionalProperties": False}
    structured = litellm.completion(messages=asked, max_tokens=200, seed=4, response_format={
        "type": "json_schema", "json_schema": {"name": "verdict", "schema": verdict, "strict": True}}, **common)
    assert json.loads(structured.choices[0].message.content)["answer"] in ("yes", "no")
    litellm.completion(messages=asked, max_tokens=1, **{**common, "api_key": refusing["rate_limited"]})
    errors_by_status = {402: litellm.APIError, 403: litellm.APIError, 429: litellm.RateLimitError}
    for name, (status, _) in REFUSALS.items():
        with pytest.raises(errors_by_status[status]) as refused:
            litellm.completion(messages=asked, max_tokens=5, **{**common, "api_key": refusing[name]})
        assert refused.value.status_code == status
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(messages=asked, **{**common, "model": "openai/no/such-model"})
    with pytest.raises(litellm.BadRequestError):
        litellm.completion(messages=asked, max_tokens=100_000, **common)
    counts_agree()
