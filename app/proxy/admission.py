"""Reading a completion request: strict JSON, known parameters only, every size bounded.

Anything the router does not know is refused with OpenAI's wording, so a
field meant to steer the router (an upstream URL, a host id) can never reach
a host or be honoured.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import orjson

from ..echo import shown
from . import messages
from .errors import ApiError

# Every parameter of OpenAI's chat and completions requests, and vLLM's own, by what the router does with it. Any
# other field is refused: nothing in a body can steer the router. The README's parameter table is this one.
PASSED, HONOURED, IGNORED, REFUSED = "passed", "honoured", "ignored", "refused"
SAMPLING = {name: (PASSED, "to the engine") for name in (
    "temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "stop", "n", "logprobs", "logit_bias")}
VLLM_SAMPLING = {name: (PASSED, "vLLM's sampling parameter, to the engine") for name in (
    "top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
    "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output", "truncate_prompt_tokens",
    "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")}
ROUTED = {
    "model": (HONOURED, "picks the offer, its price and its hosts"),
    "stream": (HONOURED, "the answer is relayed as server-sent events"),
    "stream_options": (HONOURED, "`include_usage` adds the usage chunk (with `cost`); `include_obfuscation` and "
                                 "`continuous_usage_stats` are ignored"),
    "max_tokens": (HONOURED, "bounds the hold; the engine is sent what the balance covers"),
    "user": (HONOURED, "sticky routing when there is no `prompt_cache_key` or `safety_identifier`"),
}
CHAT_PARAMETERS_TABLE = SAMPLING | VLLM_SAMPLING | ROUTED | {
    "messages": (HONOURED, "checked and rebuilt (text parts, tool calls, tool results); counted as the engine "
                           "renders them"),
    "tools": (HONOURED, "function tools, checked and rebuilt; refused for a model without a tool-call parser"),
    "tool_choice": (PASSED, "`none`, `auto`, `required` or a named function"),
    "parallel_tool_calls": (PASSED, "to the engine"),
    "response_format": (PASSED, "`text`, `json_object` or `json_schema` (structured outputs)"),
    "top_logprobs": (PASSED, "to the engine"),
    "reasoning_effort": (PASSED, "to the chat template (models with a reasoning parser)"),
    "max_completion_tokens": (HONOURED, "as `max_tokens`"),
    "prompt_cache_key": (HONOURED, "sticky routing: the same key goes to the same healthy host (its prefix cache)"),
    "safety_identifier": (HONOURED, "sticky routing when there is no `prompt_cache_key`"),
    "functions": (HONOURED, "deprecated: sent as `tools`, answered as `function_call`"),
    "function_call": (HONOURED, "deprecated: sent as `tool_choice`"),
    "store": (IGNORED, "nothing is stored for distillation or evals"),
    "metadata": (IGNORED, "accepted (at most 16 string pairs)"),
    "service_tier": (IGNORED, "one tier"),
    "modalities": (IGNORED, "text only: `[\"text\"]`; audio is refused"),
    "prediction": (IGNORED, "a speed hint; the engines do not take predicted outputs"),
    "verbosity": (IGNORED, "no model on sale takes it"),
    "prompt_cache_retention": (IGNORED, "hosts keep their prefix caches as long as their memory allows"),
    "prompt_cache_options": (IGNORED, "as `prompt_cache_retention`"),
    "audio": (REFUSED, "audio output: text-only models (null is accepted)"),
    "web_search_options": (REFUSED, "no web search (null is accepted)"),
    "moderation": (REFUSED, "no moderation is run (null is accepted)"),
    "chat_template_kwargs": (PASSED, "vLLM's: plain values for the chat template; counted as rendered"),
    "add_generation_prompt": (PASSED, "vLLM's: counted as rendered"),
    "continue_final_message": (PASSED, "vLLM's: counted as rendered"),
}
COMPLETION_PARAMETERS_TABLE = SAMPLING | VLLM_SAMPLING | ROUTED | {
    "prompt": (HONOURED, "one string (or an array of one)"),
    "echo": (PASSED, "the prompt is sent back before the completion; only the completion is billed"),
    "best_of": (HONOURED, "1 only; use `n`"),
    "suffix": (REFUSED, "the engines do not complete between a prefix and a suffix (null is accepted)"),
}
CHAT_PARAMETERS = set(CHAT_PARAMETERS_TABLE)
VLLM_ONLY = set(VLLM_SAMPLING) | {"chat_template_kwargs", "add_generation_prompt", "continue_final_message"}
TOOL_PARAMETERS = {"tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"}


@cache
def supported_parameters(tools: bool) -> tuple[str, ...]:
    """OpenAI's chat parameters that have an effect on a model (OpenRouter's ``supported_parameters``)."""
    return tuple(sorted(name for name, (how, _) in CHAT_PARAMETERS_TABLE.items()
                        if how in (PASSED, HONOURED) and name not in VLLM_ONLY
                        and (tools or name not in TOOL_PARAMETERS)))
COMPLETION_PARAMETERS = set(COMPLETION_PARAMETERS_TABLE)
# Forwarded to the engine as they came (after their checks); the rest are rebuilt or set by the router.
FORWARDED = {"chat": {name for name, (how, _) in CHAT_PARAMETERS_TABLE.items() if how == PASSED},
             "completions": {name for name, (how, _) in COMPLETION_PARAMETERS_TABLE.items() if how == PASSED}}
ROLES = set(messages.ROLE_FIELDS)
STICKY_KEYS = ("prompt_cache_key", "safety_identifier", "user")
MAX_STICKY_KEY = 512
MAX_METADATA = 16
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_PROMPTS = 64
MAX_MODEL_NAME = 256
MAX_TOOLS = messages.MAX_TOOLS
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
    messages: list[dict] | None = None  # rebuilt (chat)
    tools: list[dict] | None = None  # rebuilt (chat)
    inputs: list | None = None  # one per vector: strings or token ids (embeddings)
    sticky: str | None = None  # the key that keeps a client's requests on one host
    functions: bool = False  # the deprecated ``functions`` (``tools`` holds them): calls answered as ``function_call``
    responses: dict | None = None  # a Responses API request (``responses.to_chat`` made this one of it)

    @property
    def surface(self) -> str:
        """The API the client called: ``chat``, ``completions`` or ``responses``."""
        return "responses" if self.responses is not None else self.endpoint

    def forward(self) -> dict:
        """The body the engine is sent, before the router's own settings (model, tokens, usage)."""
        body = {name: value for name, value in self.body.items() if name in FORWARDED[self.endpoint]}
        if self.endpoint == "chat":
            body["messages"] = self.messages
            if self.tools:
                body["tools"] = self.tools
            if self.functions and (choice := _function_call_as_tool_choice(self.body)) is not None:
                body["tool_choice"] = choice
        else:
            body["prompt"] = self.body["prompt"]
        return body

    def count_prompt(self, tokenizer) -> int:
        """The prompt as the engine renders and counts it, with the model's ``tokenizer`` (``metering``)."""
        return self.prompt(tokenizer)[0]

    def prompt(self, tokenizer) -> tuple[int, list[int] | None]:
        """The prompt's token count as the engine renders it, and its token ids (None where the model has no
        tokenizer files and the count is an estimate). The engine keeps the last ``truncate_prompt_tokens``."""
        body = self.body
        if self.endpoint == "chat":
            options = dict(add_generation_prompt=body.get("add_generation_prompt", True),
                           continue_final_message=bool(body.get("continue_final_message")),
                           template_kwargs=body.get("chat_template_kwargs"),
                           reasoning_effort=body.get("reasoning_effort"))
            ids = tokenizer.encode_chat(self.messages, self.tools, **options)
            count = len(ids) if ids is not None else tokenizer.count_chat(self.messages, self.tools, **options)
        else:
            prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
            ids = tokenizer.encode_prompt(prompt)
            count = len(ids) if ids is not None else tokenizer.count_prompt(prompt)
        truncate = body.get("truncate_prompt_tokens")
        if isinstance(truncate, int) and truncate > 0:
            count, ids = min(count, truncate), ids if ids is None else ids[-truncate:]
        return count, ids


def _function_call_as_tool_choice(body: dict):
    """The deprecated ``function_call`` as ``tool_choice`` (None: the engine's default)."""
    choice = body.get("function_call")
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice if choice in ("none", "auto") else None


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


def _refuse_unless_null(body: dict, endpoint: str) -> None:
    table = CHAT_PARAMETERS_TABLE if endpoint == "chat" else COMPLETION_PARAMETERS_TABLE
    for name, (how, why) in table.items():
        if how == REFUSED and body.get(name) is not None:
            raise _bad(f"'{name}' is not supported: {why.split(' (')[0]}.", name, "unsupported_parameter")
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise _bad("'modalities' may only be [\"text\"]: the models here read and write text only.", "modalities",
                   "unsupported_parameter")


def _sticky_key(body: dict) -> str | None:
    """The key that keeps a client's requests on one host: the first of ``STICKY_KEYS`` given."""
    for name in STICKY_KEYS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_STICKY_KEY:
            raise _bad(f"'{name}' must be a string of at most {MAX_STICKY_KEY} characters.", name, "invalid_value")
    for name in STICKY_KEYS:
        if body.get(name):
            return f"{name}:{body[name]}"
    return None


def _check_functions(body: dict) -> list[dict] | None:
    """The deprecated ``functions``/``function_call``, checked; returns the ``tools`` they become (None: none)."""
    functions = body.get("functions")
    if functions is None:
        if body.get("function_call") is not None:
            raise _bad("'function_call' needs 'functions'.", "function_call")
        return None
    if body.get("tools") is not None:
        raise _bad("Send 'tools' or the deprecated 'functions', not both.", "functions")
    if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
        raise _bad("'functions' must be an array of function definitions.", "functions", "invalid_type")
    tools = messages.check_tools([{"type": "function", "function": f} for f in functions])
    choice = body.get("function_call")
    if isinstance(choice, dict):
        if not any(f.get("name") == choice.get("name") for f in functions):
            raise _bad("'function_call' names a function that is not in 'functions'.", "function_call")
    elif choice not in (None, "none", "auto"):
        raise _bad("'function_call' must be 'none', 'auto' or {\"name\": ...}.", "function_call")
    # Sent as plain function tools: a ``strict`` on a deprecated function is checked, not passed on.
    return [{**tool, "function": {k: v for k, v in tool["function"].items() if k != "strict"}} for tool in tools]


def _check_stream_options(options, stream: bool) -> bool:
    """Whether the client asked for the usage chunk."""
    if options is None:
        return False
    if not stream:
        raise _bad("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    known = {"include_usage", "include_obfuscation", "continuous_usage_stats"}
    if not isinstance(options, dict) or set(options) - known:
        raise _bad(f"'stream_options' may contain only {', '.join(sorted(known))}.", "stream_options",
                   "invalid_value")
    if any(not isinstance(value, bool) for value in options.values() if value is not None):
        raise _bad("'stream_options' values must be booleans.", "stream_options", "invalid_type")
    return bool(options.get("include_usage"))


def parse(raw: bytes, endpoint: str, *, max_messages: int, max_choices: int) -> CompletionRequest:
    """Validate a request body; raise ApiError(400) with the parameter at fault."""
    return check(parse_json(raw), endpoint, max_messages=max_messages, max_choices=max_choices)


def check(body: dict, endpoint: str, *, max_messages: int, max_choices: int) -> CompletionRequest:
    """``parse`` for a body already read as JSON (a Responses request, translated)."""
    allowed = CHAT_PARAMETERS if endpoint == "chat" else COMPLETION_PARAMETERS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {shown(unknown[0], 64)}", shown(unknown[0], 64),
                   "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("You must provide a model parameter.", "model", "missing_required_parameter")
    if len(model) > MAX_MODEL_NAME:
        raise _bad(f"'model' is longer than {MAX_MODEL_NAME} characters: '{shown(model)}'.", "model", "invalid_value")
    _refuse_unless_null(body, endpoint)
    bias = body.get("logit_bias")
    if bias is not None and (not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS):
        raise _bad(f"'logit_bias' must be an object of at most {MAX_LOGIT_BIAS} token ids.", "logit_bias",
                   "invalid_value")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > MAX_METADATA or not all(
            isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items())):
        raise _bad(f"'metadata' must be at most {MAX_METADATA} string pairs (keys up to 64 characters, values up "
                   "to 512).", "metadata")
    rebuilt_messages = tools = None
    functions = False
    if endpoint == "chat":
        rebuilt_messages = messages.check_messages(body.get("messages"), max_messages, shown(model, 64))
        tools = messages.check_tools(body.get("tools"))
        messages.check_tool_choice(body.get("tool_choice"), tools)
        if body.get("parallel_tool_calls") is not None:
            _boolean(body, "parallel_tool_calls")
        messages.check_template_kwargs(body.get("chat_template_kwargs"))
        if (legacy := _check_functions(body)) is not None:
            tools, functions = legacy, True
    else:
        if "prompt" not in body:
            raise _bad("You must provide a prompt parameter.", "prompt", "missing_required_parameter")
        _check_prompt(body["prompt"])
        if body.get("best_of") not in (None, 1):
            raise _bad("'best_of' is not supported; use 'n'.", "best_of", "unsupported_value")
    _check_stop(body.get("stop"))
    stream = _boolean(body, "stream")
    include_usage = _check_stream_options(body.get("stream_options"), stream)
    n = _integer(body, "n", 1, max_choices) or 1
    max_tokens = _integer(body, "max_completion_tokens", 1, 10_000_000)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 10_000_000)
    if max_tokens is None and endpoint == "completions":
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    _integer(body, "truncate_prompt_tokens", 1, 10_000_000)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _bad(f"'{name}' must be a number.", name, "invalid_type")
    return CompletionRequest(endpoint=endpoint, body=body, model=model, stream=stream, include_usage=include_usage,
                             max_tokens=max_tokens, n=n, messages=rebuilt_messages, tools=tools,
                             sticky=_sticky_key(body), functions=functions)
