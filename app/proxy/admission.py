"""Reading a completion request: strict JSON, known parameters only, every size bounded.

Anything the router does not know is refused with OpenAI's wording, so a
field meant to steer the router (an upstream URL, a host id) can never reach
a host or be honoured.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from ..echo import shown
from .errors import ApiError

COMMON_PARAMETERS = {
    "model", "stream", "stream_options", "max_tokens", "n", "temperature", "top_p", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "user",
    # vLLM's sampling parameters
    "top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
    "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
    "truncate_prompt_tokens", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar",
}
CHAT_PARAMETERS = COMMON_PARAMETERS | {
    "messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "chat_template_kwargs", "add_generation_prompt", "continue_final_message",
    "store", "metadata", "service_tier", "reasoning_effort",
}
COMPLETION_PARAMETERS = COMMON_PARAMETERS | {"prompt", "echo", "suffix", "best_of"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_PROMPTS = 64
MAX_MODEL_NAME = 256
MAX_TOOLS = 128  # OpenAI's own limit
MAX_TOOL_BYTES = 64 * 1024  # one tool's definition, as JSON
MAX_TOOL_NAME = 64
MAX_LOGIT_BIAS = 300
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy completions endpoint


@dataclass
class CompletionRequest:
    endpoint: str  # "chat" or "completions"
    body: dict
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None  # what the client asked for, per choice
    n: int


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _integer(body: dict, name: str, minimum: int, maximum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer.", name, "invalid_type")
    if not minimum <= value <= maximum:
        raise _bad(f"'{name}' must be between {minimum} and {maximum}; got {value}.", name, "invalid_value")
    return value


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be a boolean.", name, "invalid_type")
    return value


def parse_json(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("The request body is not valid UTF-8.", code="invalid_encoding") from None
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"We could not parse the JSON body of your request: {exc.msg} at position {exc.pos}.",
                   code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", code="invalid_json")
    return body


def _check_messages(messages, max_messages: int) -> None:
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array.", "messages", "invalid_type")
    if len(messages) > max_messages:
        raise _bad(f"'messages' has {len(messages)} items; at most {max_messages} are allowed.", "messages",
                   "array_above_max_length")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"'messages[{i}]' must be an object.", f"messages[{i}]", "invalid_type")
        if message.get("role") not in ROLES:
            raise _bad(f"'messages[{i}].role' must be one of {', '.join(sorted(ROLES))}.", f"messages[{i}].role",
                       "invalid_value")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _bad(f"'messages[{i}].content' must be a string or an array of parts.",
                       f"messages[{i}].content", "invalid_type")


def _check_tools(tools) -> None:
    """At most ``MAX_TOOLS`` function tools, each a bounded definition with a plain name."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array of tools.", "tools", "invalid_type")
    if len(tools) > MAX_TOOLS:
        raise _bad(f"'tools' has {len(tools)} items; at most {MAX_TOOLS} are allowed.", "tools",
                   "array_above_max_length")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise _bad(f"'tools[{i}]' must be an object with type 'function' and a 'function'.", f"tools[{i}]",
                       "invalid_value")
        name = function.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_TOOL_NAME or not all(
                c.isascii() and (c.isalnum() or c in "_-") for c in name):
            raise _bad(f"'tools[{i}].function.name' must be 1 to {MAX_TOOL_NAME} letters, digits, '_' or '-'.",
                       f"tools[{i}].function.name", "invalid_value")
        if len(orjson.dumps(tool)) > MAX_TOOL_BYTES:
            raise _bad(f"'tools[{i}]' is larger than {MAX_TOOL_BYTES // 1024} KiB.", f"tools[{i}]", "invalid_value")


def _check_prompt(prompt) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and 0 < len(prompt) <= MAX_PROMPTS and all(isinstance(p, str) for p in prompt):
        if len(prompt) > 1:
            raise _bad("Send one prompt per request.", "prompt", "invalid_value")
        return
    raise _bad("'prompt' must be a string.", "prompt", "invalid_type")


def _check_stop(stop) -> None:
    if stop is None or isinstance(stop, str) and len(stop) <= MAX_STOP_LENGTH:
        return
    if isinstance(stop, list) and len(stop) <= MAX_STOP_SEQUENCES and all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in stop):
        return
    raise _bad(f"'stop' must be a string or up to {MAX_STOP_SEQUENCES} strings of at most {MAX_STOP_LENGTH} "
               "characters.", "stop", "invalid_value")


def parse(raw: bytes, endpoint: str, *, max_messages: int, max_choices: int) -> CompletionRequest:
    """Validate a request body; raise ApiError(400) with the parameter at fault."""
    body = parse_json(raw)
    allowed = CHAT_PARAMETERS if endpoint == "chat" else COMPLETION_PARAMETERS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("You must provide a model parameter.", "model", "missing_required_parameter")
    if len(model) > MAX_MODEL_NAME:
        raise _bad(f"'model' is longer than {MAX_MODEL_NAME} characters: '{shown(model)}'.", "model", "invalid_value")
    _check_tools(body.get("tools"))
    bias = body.get("logit_bias")
    if bias is not None and (not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS):
        raise _bad(f"'logit_bias' must be an object of at most {MAX_LOGIT_BIAS} token ids.", "logit_bias",
                   "invalid_value")
    if endpoint == "chat":
        _check_messages(body.get("messages"), max_messages)
    else:
        if "prompt" not in body:
            raise _bad("You must provide a prompt parameter.", "prompt", "missing_required_parameter")
        _check_prompt(body["prompt"])
        if body.get("best_of") not in (None, 1):
            raise _bad("'best_of' is not supported; use 'n'.", "best_of", "unsupported_value")
    _check_stop(body.get("stop"))
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
            raise _bad("'stream_options' may only contain 'include_usage'.", "stream_options", "invalid_value")
    n = _integer(body, "n", 1, max_choices) or 1
    max_tokens = _integer(body, "max_completion_tokens", 1, 10_000_000)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 10_000_000)
    if max_tokens is None and endpoint == "completions":
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _bad(f"'{name}' must be a number.", name, "invalid_type")
    include_usage = bool(options and options.get("include_usage"))
    return CompletionRequest(endpoint=endpoint, body=body, model=model, stream=stream,
                             include_usage=include_usage, max_tokens=max_tokens, n=n)
