"""Chat messages and tools: every shape OpenAI accepts, checked and rebuilt, and the conversation a chat template
sees.

The router forwards the messages and tools it rebuilt here, never the client's own bytes, so the engine renders
exactly what the router counted. ``conversation`` turns rebuilt messages into what vLLM hands a model's chat
template (vLLM's ``parse_chat_messages``): text parts joined with newlines for templates that take content as a
string, tool-call arguments parsed into objects, developer messages as system messages where the template has no
developer role.
"""
from __future__ import annotations

import copy

import orjson

from .errors import invalid

# What each role may carry (OpenAI's message types, and ``name`` on a tool result, which OpenAI's own examples long
# sent). ``refusal``, ``function_call`` and ``annotations`` on an assistant message are accepted and dropped: no chat
# template reads them. Any other field is refused, unless it is null (an SDK's dump of an earlier answer).
ROLE_FIELDS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "refusal", "function_call", "annotations", "reasoning",
                  "reasoning_content"},
    "tool": {"role", "content", "tool_call_id", "name"},
    "function": {"role", "content", "name"},
}
# Content part types by role; any other part (an image, audio, a file) is a modality these models do not take.
TEXT_PARTS = {"text"}
ASSISTANT_PARTS = {"text", "refusal"}
MEDIA_PARTS = {"image_url": "an image", "input_audio": "audio", "file": "a file", "video_url": "a video",
               "audio_url": "audio", "input_image": "an image"}
MAX_NAME = 256
MAX_TOOLS = 128  # OpenAI's own limit
MAX_TOOL_BYTES = 64 * 1024  # one tool's definition, as JSON
MAX_TOOL_NAME = 64
TOOL_FIELDS = {"type", "function"}
FUNCTION_FIELDS = {"name", "description", "parameters", "strict"}
TOOL_CHOICES = ("none", "auto", "required")
# The keyword arguments a chat template is rendered with, which ``chat_template_kwargs`` may not replace.
RESERVED_TEMPLATE_KWARGS = {"messages", "tools", "documents", "add_generation_prompt", "chat_template",
                            "continue_final_message", "tokenize", "return_dict", "conversation"}



def _array(value, param: str, maximum: int, shape: str) -> None:
    """``value`` is a non-empty list of at most ``maximum`` items (``shape`` says what it must be)."""
    if not isinstance(value, list) or not value:
        raise invalid(f"'{param}' must be {shape}.", param, "invalid_type")
    if len(value) > maximum:
        raise invalid(f"'{param}' has {len(value)} items; at most {maximum} are allowed.", param,
                      "array_above_max_length")


def _function_name(value, param: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOOL_NAME or not all(
            c.isascii() and (c.isalnum() or c in "_-.") for c in value):
        raise invalid(f"'{param}' must be 1 to {MAX_TOOL_NAME} letters, digits, '_', '-' or '.'.", param)
    return value


def _text_parts(content, param: str, allowed: set[str], model: str) -> list[dict]:
    parts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if isinstance(part, str):  # vLLM takes bare strings as text parts
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(f"'{where}' must be an object with a 'type'.", where, "invalid_type")
        kind = part["type"]
        if kind in MEDIA_PARTS:
            raise invalid(f"'{where}' is {MEDIA_PARTS[kind]} ('{kind}'), but {model} accepts text only: send content "
                          "as a string or as parts of type 'text'.", f"{where}.type", "unsupported_modality")
        if kind not in allowed:
            raise invalid(f"'{where}.type' must be one of {', '.join(sorted(allowed))}.", f"{where}.type")
        field = "refusal" if kind == "refusal" else "text"
        if set(part) - {"type", field, "cache_control"}:
            extra = sorted(set(part) - {"type", field, "cache_control"})[0]
            raise invalid(f"Unrecognized field '{where}.{extra}'.", f"{where}.{extra}", "unknown_parameter")
        if not isinstance(part.get(field), str):
            raise invalid(f"'{where}.{field}' must be a string.", f"{where}.{field}", "invalid_type")
        parts.append({"type": kind, field: part[field]})
    return parts


def _tool_calls(calls, param: str) -> list[dict]:
    if not isinstance(calls, list) or len(calls) > MAX_TOOLS:
        raise invalid(f"'{param}' must be an array of at most {MAX_TOOLS} tool calls.", param, "invalid_type")
    rebuilt = []
    for k, call in enumerate(calls):
        where = f"{param}[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise invalid(f"'{where}' must be an object with type 'function' and a 'function'.", where)
        if not isinstance(call.get("id"), str):
            raise invalid(f"'{where}.id' must be a string.", f"{where}.id", "invalid_type")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            raise invalid(f"'{where}.function.arguments' must be a string of JSON.", f"{where}.function.arguments",
                          "invalid_type")
        rebuilt.append({"id": call["id"], "type": "function",
                        "function": {"name": _function_name(function.get("name"), f"{where}.function.name"),
                                     "arguments": arguments}})
    return rebuilt


def check_messages(messages, max_messages: int, model: str) -> list[dict]:
    """The messages rebuilt from what the client sent: known fields only, text content only. Raises ApiError(400)
    naming the field at fault."""
    _array(messages, "messages", max_messages, "a non-empty array")
    rebuilt = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"'{where}' must be an object.", where, "invalid_type")
        role = message.get("role")
        if role not in ROLE_FIELDS:
            raise invalid(f"'{where}.role' must be one of {', '.join(sorted(ROLE_FIELDS))}.", f"{where}.role")
        if unknown := sorted(name for name in set(message) - ROLE_FIELDS[role] if message[name] is not None):
            if unknown[0] == "audio":
                raise invalid(f"'{where}.audio' refers to an audio answer, but {model} accepts and answers text only.",
                              f"{where}.audio", "unsupported_modality")
            raise invalid(f"Unrecognized field '{where}.{unknown[0]}' in a {role} message.", f"{where}.{unknown[0]}",
                          "unknown_parameter")
        out: dict = {"role": role}
        content = message.get("content")
        if isinstance(content, list):
            content = _text_parts(content, f"{where}.content", ASSISTANT_PARTS if role == "assistant" else TEXT_PARTS,
                                  model)
        elif content is None:
            if role != "assistant":
                raise invalid(f"'{where}.content' is required for a {role} message.", f"{where}.content",
                              "missing_required_parameter")
        elif not isinstance(content, str):
            raise invalid(f"'{where}.content' must be a string or an array of parts.", f"{where}.content",
                          "invalid_type")
        out["content"] = content
        if message.get("name") is not None:
            name = message["name"]
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
                raise invalid(f"'{where}.name' must be a string of 1 to {MAX_NAME} characters.", f"{where}.name")
            out["name"] = name
        if role == "assistant":
            if message.get("tool_calls") is not None:
                out["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
            reasoning = message.get("reasoning", message.get("reasoning_content"))
            if reasoning is not None:
                if not isinstance(reasoning, str):
                    raise invalid(f"'{where}.reasoning' must be a string.", f"{where}.reasoning", "invalid_type")
                out["reasoning"] = reasoning
        if role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise invalid(f"'{where}.tool_call_id' must be the id of the tool call this answers.",
                              f"{where}.tool_call_id", "missing_required_parameter")
            out["tool_call_id"] = message["tool_call_id"]
        rebuilt.append(out)
    return rebuilt


def check_tools(tools) -> list[dict] | None:
    """At most ``MAX_TOOLS`` function tools, each a bounded definition with a plain name, rebuilt."""
    if tools is None:
        return None
    _array(tools, "tools", MAX_TOOLS, "a non-empty array of tools")
    rebuilt = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(tool, dict) and tool.get("type") not in (None, "function"):
            raise invalid(f"'{where}.type' is '{str(tool.get('type'))[:40]}'; only 'function' tools are served.",
                          f"{where}.type", "unsupported_value")
        if not isinstance(function, dict):
            raise invalid(f"'{where}' must be an object with type 'function' and a 'function'.", where)
        if unknown := sorted(set(tool) - TOOL_FIELDS) or sorted(set(function) - FUNCTION_FIELDS):
            raise invalid(f"Unrecognized field '{unknown[0]}' in '{where}'.", where, "unknown_parameter")
        if len(orjson.dumps(tool)) > MAX_TOOL_BYTES:
            raise invalid(f"'{where}' is larger than {MAX_TOOL_BYTES // 1024} KiB.", where)
        description, parameters, strict = (function.get(k) for k in ("description", "parameters", "strict"))
        if description is not None and not isinstance(description, str):
            raise invalid(f"'{where}.function.description' must be a string.", f"{where}.function.description",
                          "invalid_type")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid(f"'{where}.function.parameters' must be a JSON Schema object.",
                          f"{where}.function.parameters", "invalid_type")
        if strict is not None and not isinstance(strict, bool):
            raise invalid(f"'{where}.function.strict' must be a boolean.", f"{where}.function.strict", "invalid_type")
        # The shape vLLM renders (its FunctionDefinition dumped): description and parameters always, strict if set.
        rebuilt_function = {"name": _function_name(function.get("name"), f"{where}.function.name"),
                            "description": description, "parameters": parameters}
        if strict is not None:
            rebuilt_function["strict"] = strict
        rebuilt.append({"type": "function", "function": rebuilt_function})
    return rebuilt


def check_tool_choice(choice, tools: list[dict] | None):
    """``none``, ``auto``, ``required`` or one named function of ``tools``."""
    if choice is None or choice in TOOL_CHOICES:
        if choice in ("auto", "required") and not tools:
            raise invalid(f"'tool_choice' is '{choice}', but no 'tools' were given.", "tool_choice")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not any(tool["function"]["name"] == name for tool in tools or ()):
            raise invalid("'tool_choice' names a function that is not in 'tools'.", "tool_choice.function.name")
        return {"type": "function", "function": {"name": name}}
    raise invalid("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
                  "{\"name\": ...}}.", "tool_choice", "unsupported_value")


def check_template_kwargs(kwargs) -> dict | None:
    """``chat_template_kwargs`` (vLLM's): plain values under names the template is not already rendered with."""
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict) or len(kwargs) > 16 or any(
            not isinstance(k, str) or k in RESERVED_TEMPLATE_KWARGS or not isinstance(v, (str, int, float, bool))
            for k, v in kwargs.items()):
        raise invalid("'chat_template_kwargs' must be an object of at most 16 plain values (strings, numbers, "
                      "booleans), and may not set the template's own arguments.", "chat_template_kwargs")
    return kwargs


def _content(content, string_format: bool):
    """A message's content as vLLM gives it to the template."""
    if content is None:
        content = []
    elif isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if string_format:
        return "\n".join(part.get("text", part.get("refusal", "")) for part in content)
    return [{"type": "text", "text": part.get("text", part.get("refusal", ""))} for part in content]


def conversation(messages: list[dict], *, string_format: bool, developer_role: bool) -> list[dict]:
    """What the chat template is rendered with, from messages rebuilt by ``check_messages``."""
    rendered = []
    for message in messages:
        role = message["role"]
        out: dict = {"role": role, "content": _content(message.get("content"), string_format)}
        if role == "assistant":
            if message.get("tool_calls"):
                calls = copy.deepcopy(message["tool_calls"])
                for call in calls:
                    call["function"]["arguments"] = _arguments(call["function"]["arguments"])
                out["tool_calls"] = calls
            if "reasoning" in message:
                out["reasoning"] = out["reasoning_content"] = message["reasoning"]
        elif role == "tool":
            out["tool_call_id"] = message["tool_call_id"]
            if isinstance(out["content"], list):
                out["content"] = "\n".join(part["text"] for part in out["content"])
        if "name" in message:
            out["name"] = message["name"]
        if role == "developer":
            out["tools"] = None
        rendered.append(out)
    if not developer_role and any(m["role"] == "developer" for m in rendered):
        rendered = _developer_as_system(rendered)
    return rendered


def _arguments(arguments: str) -> dict:
    """Tool-call arguments as templates take them: an object (anything else, or bad JSON, is an empty one)."""
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _developer_as_system(messages: list[dict]) -> list[dict]:
    """Developer messages become system messages, all merged into one at the start (vLLM's
    ``_convert_developer_to_system`` then ``_consolidate_system_messages``)."""
    converted = []
    for message in messages:
        if message["role"] == "developer":
            message = {k: v for k, v in message.items() if k != "tools"} | {"role": "system"}
        converted.append(message)
    systems = [i for i, m in enumerate(converted) if m["role"] == "system"]
    if not systems or systems == [0]:
        return converted
    texts = []
    for i in systems:
        content = converted[i].get("content", "")
        if isinstance(content, list):
            content = "\n".join(part["text"] for part in content if "text" in part)
        if content:
            texts.append(content)
    return [{"role": "system", "content": "\n\n".join(texts)}] + [m for m in converted if m["role"] != "system"]
