"""Any JSON body, of any shape, under any parameter name the router knows: admission either accepts it (and the
body it would forward is plain JSON) or refuses it with a 400 that names a parameter. Never another exception."""
from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.proxy import admission, embeddings, responses
from app.proxy.errors import ApiError

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=12)
NAMES = sorted(admission.CHAT_PARAMETERS | admission.COMPLETION_PARAMETERS | {"type", "role", "content", "name"})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(sorted(admission.ROLES) + ["x"])},
                                optional={"content": JSON | st.lists(st.fixed_dictionaries(
                                    {"type": st.sampled_from(["text", "refusal", "image_url", "x"])},
                                    optional={"text": JSON, "refusal": JSON}), max_size=3),
                                    "name": JSON, "tool_calls": JSON, "tool_call_id": JSON, "reasoning": JSON})
BODY = st.fixed_dictionaries({"model": st.just("m")}, optional={
    "messages": st.lists(MESSAGE, min_size=0, max_size=4) | JSON, "prompt": JSON}) | st.dictionaries(
    st.sampled_from(NAMES), JSON, max_size=6)
EXTRA = st.dictionaries(st.sampled_from(NAMES), JSON, max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODY, extra=EXTRA, endpoint=st.sampled_from(["chat", "completions"]))
def test_admission_accepts_or_refuses_any_json_body(body, extra, endpoint):
    raw = orjson.dumps({**extra, **body})
    try:
        req = admission.parse(raw, endpoint, max_messages=16, max_choices=4)
    except ApiError as refused:
        assert refused.status == 400 and refused.message and len(refused.message) < 600
        return
    orjson.dumps(req.forward())
    assert req.model == "m"


ITEM = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "x"]),
    "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]), "content": JSON,
    "call_id": JSON, "name": JSON, "arguments": JSON, "output": JSON})
RESPONSE_BODY = st.fixed_dictionaries({"model": st.just("m")}, optional={
    "input": st.lists(ITEM, max_size=4) | JSON, "tools": JSON, "tool_choice": JSON, "text": JSON,
    "instructions": JSON, "reasoning": JSON, "max_output_tokens": JSON})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=RESPONSE_BODY, extra=st.dictionaries(st.sampled_from(sorted(responses.PARAMETERS)), JSON, max_size=3))
def test_a_responses_request_of_any_shape_becomes_a_chat_request_or_a_400(body, extra):
    try:
        chat = responses.to_chat({**extra, **body})
        admission.parse(orjson.dumps(chat), "chat", max_messages=16, max_choices=4)
    except ApiError as refused:
        assert refused.status == 400 and refused.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.sampled_from(sorted(embeddings.PARAMETERS_TABLE) + ["x"]), JSON, max_size=5))
def test_an_embeddings_request_of_any_shape_is_accepted_or_a_400(body):
    try:
        embeddings.parse(orjson.dumps({"model": "m", **body}))
    except ApiError as refused:
        assert refused.status == 400 and refused.message
