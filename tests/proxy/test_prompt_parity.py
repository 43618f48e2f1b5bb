"""The router counts a chat prompt exactly as vLLM renders and tokenizes it, for chat templates of every kind: ours
(content as a string, a developer role, tools), one that loops over content parts and has no developer role, and
one in Llama 3.1's manner (tools as indented JSON, ``{% generation %}`` marks, the template's own refusals). Each
case is rendered by a real engine (``/tokenize``, with the template sent along) and by the router's ``Meter``."""
from __future__ import annotations

import json

import pytest
import urllib3

from app.proxy import admission
from app.proxy.metering import Meter
from hostkit.local.models import TOOLS_CHAT_TEMPLATE

from .conftest import MODEL

pytestmark = pytest.mark.vllm

PARTS_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}[{{ part['text'] }}]{% endif %}{% endfor %}"
    "{% endif %}{% if message.tool_calls %}{% for call in message.tool_calls %}"
    "CALL {{ call.function.name }} {{ call.function.arguments | tojson }}{% endfor %}{% endif %}"
    "{% if message.name %} ({{ message.name }}){% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA_STYLE_TEMPLATE = (
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = 'You are helpful.' %}{%- endif %}"
    "<|im_start|>system\n{{ system }}{%- if tools %}\nTools:\n{%- for t in tools %}\n{{ t | tojson(indent=4) }}"
    "{%- endfor %}{%- endif %}<|im_end|>\n"
    "{%- for message in messages %}{%- if message['role'] not in ['user', 'assistant', 'tool'] %}"
    "{{- raise_exception('Only user, assistant and tool roles are supported after the system message.') }}"
    "{%- endif %}<|im_start|>{{ message['role'] }}\n{%- if message['role'] == 'assistant' %}{% generation %}"
    "{{- message['content'] }}{%- for call in message.tool_calls or [] %}{{ call.function | tojson }}{%- endfor %}"
    "{% endgeneration %}{%- else %}{{- message['content'] }}{%- endif %}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
TEMPLATES = {"ours": TOOLS_CHAT_TEMPLATE, "parts": PARTS_TEMPLATE, "llama-style": LLAMA_STYLE_TEMPLATE}
TOOLS = [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather — in °C.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "noop", "strict": True}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":  \"Paris\"}"}}
CASES = {
    "plain": {"messages": [{"role": "user", "content": "Hi <b>&</b> 'there'"}]},
    "parts": {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                           {"role": "user", "name": "alice",
                            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]},
    "developers": {"messages": [{"role": "developer", "content": "First."}, {"role": "user", "content": "Hi"},
                                {"role": "developer", "content": [{"type": "text", "text": "Second."}]},
                                {"role": "user", "content": "Again"}]},
    "agent turn": {"messages": [{"role": "system", "content": "You call tools."},
                                {"role": "user", "content": "Weather?"},
                                {"role": "assistant", "content": None, "tool_calls": [CALL, {
                                    "id": "c2", "type": "function", "function": {"name": "noop", "arguments": ""}}]},
                                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "21"}]},
                                {"role": "tool", "tool_call_id": "c2", "content": "done", "name": "noop"},
                                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No more."}]},
                                {"role": "user", "content": "Ok"}], "tools": TOOLS},
    "continue": {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi the"}],
                 "continue_final_message": True, "add_generation_prompt": False},
    "a role the template refuses": {"messages": [{"role": "user", "content": "a"},
                                                 {"role": "function", "name": "f", "content": "x"}]},
    "template kwargs": {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"flavour": "mint"},
                        "reasoning_effort": "low"},
}


@pytest.fixture(scope="module")
def tokenizer_folder(engines, tmp_path_factory):
    """tiny-chat's tokenizer, once per template, as the router's TOKENIZERS_DIR holds it."""
    running, model_dir = engines
    root = tmp_path_factory.mktemp("tokenizers")
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    for name, template in TEMPLATES.items():
        folder = root / name
        folder.mkdir()
        (folder / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
        (folder / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": template}))
    return root, running[0]


def engine_count(engine, template: str, body: dict) -> int | str:
    request = {"model": MODEL, "chat_template": template, **body}
    answer = urllib3.request("POST", f"{engine.root_url}/tokenize", json=request, timeout=30)
    data = answer.json()
    return data["count"] if answer.status == 200 else data.get("error", {}).get("message", str(data))


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("case", CASES)
def test_the_router_counts_the_prompt_the_engine_renders(tokenizer_folder, template, case):
    root, engine = tokenizer_folder
    raw = json.dumps({"model": MODEL, "max_tokens": 1, **CASES[case]}).encode()
    req = admission.parse(raw, "chat", max_messages=64, max_choices=1)
    body = {key: value for key, value in CASES[case].items() if key not in ("messages", "tools")}
    body |= {"messages": req.messages} | ({"tools": req.tools} if req.tools else {})
    expected = engine_count(engine, TEMPLATES[template], body)
    tokenizer = Meter(root).for_model(template)
    try:
        counted = req.count_prompt(tokenizer)
    except Exception as error:  # the template refused: the engine must refuse too
        assert isinstance(expected, str), f"the router refused ({error}) what the engine counted ({expected})"
        return
    assert counted == expected
