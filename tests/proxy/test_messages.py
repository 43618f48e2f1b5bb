"""Messages as agents send them, checked and rebuilt (``app/proxy/messages.py``): what passes, what is dropped, and
what is refused with the field at fault."""
from __future__ import annotations

import pytest

from app.proxy import messages
from app.proxy.errors import ApiError

CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize("message, rebuilt", [
    ({"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "21"},
     {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "21"}),
    ({"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None, "audio": None,
      "function_call": None, "annotations": []},
     {"role": "assistant", "content": None, "tool_calls": [CALL]}),
    ({"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}],
      "name": None, "extra": None},
     {"role": "user", "content": [{"type": "text", "text": "a"}]}),
    ({"role": "assistant", "content": "ok", "reasoning_content": "because"},
     {"role": "assistant", "content": "ok", "reasoning": "because"}),
])
def test_it_keeps_what_templates_read_and_drops_the_rest(message, rebuilt):
    assert messages.check_messages([message], 8, "m") == [rebuilt]


@pytest.mark.parametrize("message, param, code", [
    ({"role": "user", "content": "a", "extra": 1}, "messages[0].extra", "unknown_parameter"),
    ({"role": "assistant", "content": "a", "audio": {"id": "audio_1"}}, "messages[0].audio",
     "unsupported_modality"),
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]},
     "messages[0].content[0].type", "unsupported_modality"),
    ({"role": "tool", "content": "21"}, "messages[0].tool_call_id", "missing_required_parameter"),
    ({"role": "user", "content": None}, "messages[0].content", "missing_required_parameter"),
    ({"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {"name": "x y"}}]},
     "messages[0].tool_calls[0].function.name", "invalid_value"),
])
def test_it_refuses_what_no_model_here_takes_naming_the_field(message, param, code):
    with pytest.raises(ApiError) as refused:
        messages.check_messages([message], 8, "m")
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, param, code)
