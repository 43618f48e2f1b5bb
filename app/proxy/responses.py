"""OpenAI's Responses API (``POST /v1/responses``) for text and function tools, streamed or not, on the chat path.

A Responses request is translated here into a chat completion request, which then goes the whole way every chat
request goes: admission (``admission.parse``, so its messages and tools are checked and rebuilt, and its prompt
counted exactly as the engine renders it), the hold, routing, the engine's ``/v1/chat/completions``, metering from
the engine's token ids, and settlement. The answer is rebuilt as a ``response`` object, or as Responses stream
events, from the chat answer the router has already normalised. Nothing is stored: ``previous_response_id`` and
``conversation`` are refused, and a client sends the whole conversation as ``input``, as it does with ``store:
false`` at OpenAI.
"""
from __future__ import annotations

import time
import uuid

import orjson

from ..echo import shown
from .admission import HONOURED, IGNORED, PASSED, REFUSED
from .errors import invalid

PARAMETERS_TABLE = {
    "model": (HONOURED, "picks the offer, its price and its hosts"),
    "input": (HONOURED, "a string, or message, function_call and function_call_output items (text only)"),
    "instructions": (HONOURED, "the conversation's first (system) message"),
    "tools": (HONOURED, "function tools; other tool types are refused"),
    "tool_choice": (PASSED, "`none`, `auto`, `required` or a named function"),
    "parallel_tool_calls": (PASSED, "to the engine"),
    "max_output_tokens": (HONOURED, "as chat's `max_tokens`"),
    "temperature": (PASSED, "to the engine"),
    "top_p": (PASSED, "to the engine"),
    "top_logprobs": (PASSED, "to the engine"),
    "text": (PASSED, "`format` (`text`, `json_object`, `json_schema`) as chat's `response_format`; `verbosity` is "
                     "ignored"),
    "reasoning": (PASSED, "`effort` as chat's `reasoning_effort`; `summary` is ignored"),
    "stream": (HONOURED, "Responses stream events"),
    "stream_options": (IGNORED, "`include_obfuscation`"),
    "user": (HONOURED, "sticky routing, as on chat"),
    "safety_identifier": (HONOURED, "sticky routing, as on chat"),
    "prompt_cache_key": (HONOURED, "sticky routing, as on chat"),
    "metadata": (IGNORED, "echoed in the response"),
    "store": (IGNORED, "nothing is stored"),
    "service_tier": (IGNORED, "one tier"),
    "include": (IGNORED, "no extra output is produced"),
    "truncation": (IGNORED, "`disabled`: a prompt longer than the context is refused"),
    "max_tool_calls": (IGNORED, "the engine's own limit applies"),
    "prompt_cache_retention": (IGNORED, "as on chat"),
    "prompt_cache_options": (IGNORED, "as on chat"),
    "previous_response_id": (REFUSED, "responses are not stored: send the whole conversation as `input`"),
    "conversation": (REFUSED, "conversations are not stored: send the whole conversation as `input`"),
    "prompt": (REFUSED, "no stored prompt templates"),
    "background": (REFUSED, "responses run in the foreground only (false is accepted)"),
    "moderation": (REFUSED, "no moderation is run"),
    "context_management": (REFUSED, "no server-side context management"),
}
PARAMETERS = set(PARAMETERS_TABLE)
INPUT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
MEDIA_PARTS = {"input_image": "an image", "input_file": "a file", "input_audio": "audio"}
ROLES = ("user", "system", "developer", "assistant")
OMITTED_WHEN_NONE = {"user", "max_output_tokens", "completed_at", "previous_response_id", "usage"}



def _parts(content, where: str) -> list[dict] | str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"'{where}' must be a string or an array of content parts.", where, "invalid_type")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in MEDIA_PARTS:
            raise invalid(f"'{where}[{j}]' is {MEDIA_PARTS[kind]} ('{kind}'), but the models here accept text only: "
                          "send parts of type 'input_text'.", f"{where}[{j}].type", "unsupported_modality")
        if kind not in INPUT_PARTS or not isinstance(part.get(INPUT_PARTS[kind]), str):
            raise invalid(f"'{where}[{j}]' must be an 'input_text' part with a 'text'.", f"{where}[{j}]")
        field = INPUT_PARTS[kind]
        parts.append({"type": "refusal" if kind == "refusal" else "text", field: part[field]})
    return parts


def _messages(body: dict) -> list[dict]:
    """The chat messages of ``instructions`` and ``input``."""
    messages: list[dict] = []
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise invalid("'instructions' must be a string.", "instructions", "invalid_type")
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise invalid("'input' must be a string or a non-empty array of items.", "input", "missing_required_parameter")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object.", where, "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ROLES:
                raise invalid(f"'{where}.role' must be one of {', '.join(ROLES)}.", f"{where}.role")
            messages.append({"role": item["role"], "content": _parts(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # the calls of one answer, in one message
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _parts(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
        elif kind == "reasoning":
            continue  # an earlier answer's reasoning: the chat templates here take none back
        else:
            raise invalid(f"'{where}.type' is '{shown(str(kind), 40)}'; the items served are message, function_call "
                          "and function_call_output.", f"{where}.type", "unsupported_value")
    return messages


def _tools(tools) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise invalid("'tools' must be an array of tools.", "tools", "invalid_type")
    chat = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise invalid(f"'tools[{i}].type' is '{shown(str(kind), 40)}'; only 'function' tools are served.",
                          f"tools[{i}].type", "unsupported_value")
        chat.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    return chat


def _tool_choice(choice):
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _response_format(text) -> dict | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise invalid("'text.format.type' must be text, json_object or json_schema.", "text.format")
    if fmt["type"] == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                        if k in fmt}}
    return {"type": fmt["type"]}


def to_chat(body: dict) -> dict:
    """The chat completion request a Responses request stands for (raises ApiError(400) naming the field)."""
    if unknown := sorted(set(body) - PARAMETERS):
        raise invalid(f"Unrecognized request argument supplied: {shown(unknown[0], 64)}", shown(unknown[0], 64),
                      "unknown_parameter")
    for name, (how, why) in PARAMETERS_TABLE.items():
        if how == REFUSED and body.get(name) not in (None, False):
            raise invalid(f"'{name}' is not supported: {why}.", name, "unsupported_parameter")
    chat = {"model": body.get("model"), "messages": _messages(body)}
    for name in ("temperature", "top_p", "parallel_tool_calls", "stream", "user", "safety_identifier",
                 "prompt_cache_key", "metadata"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if (tools := _tools(body.get("tools"))) is not None:
        chat["tools"] = tools
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("top_logprobs") is not None:
        chat["logprobs"], chat["top_logprobs"] = True, body["top_logprobs"]
    if (response_format := _response_format(body.get("text"))) is not None:
        chat["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    return chat


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Presenter:
    """One Responses request's answer, whole or as stream events, from the normalised chat answer."""

    def __init__(self, body: dict, response_id: str, created: int, model: str):
        self.body, self.id, self.created, self.model = body, response_id, created, model
        self.sequence = 0
        self.output: list[dict] = []  # the items, as they stand
        self.open: dict | None = None  # the item being streamed
        self.calls: dict[int, dict] = {}  # chat tool call index -> its function_call item
        self.finish: str | None = None

    # The response object ------------------------------------------------------------------------------------
    def response(self, status: str, usage: dict | None = None) -> dict:
        tools = self.body.get("tools") or []
        text = self.body.get("text") if isinstance(self.body.get("text"), dict) else {}
        incomplete = status == "incomplete"
        response = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
            "error": None, "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": self.body.get("instructions"), "max_output_tokens": self.body.get("max_output_tokens"),
            "model": self.model, "output": self.output,
            "parallel_tool_calls": self.body.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": {"effort": (self.body.get("reasoning") or {}).get("effort"),
                                                        "summary": None},
            "store": False, "temperature": self.body.get("temperature", 1.0), "top_p": self.body.get("top_p", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": self.body.get("tool_choice", "auto"), "tools": tools, "truncation": "disabled",
            "metadata": self.body.get("metadata") or {}, "user": self.body.get("user"), "usage": usage,
        }
        # OpenAI's schema allows these out, not null.
        return {k: v for k, v in response.items() if v is not None or k not in OMITTED_WHEN_NONE}

    @staticmethod
    def usage(counted: dict) -> dict:
        return {"input_tokens": counted["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": counted["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": counted["total_tokens"], "cost": counted.get("cost", 0)}

    def whole(self, chat: dict) -> dict:
        """The ``response`` object of a whole chat answer (its usage already the router's count, with cost)."""
        choice = chat["choices"][0] if chat["choices"] else {"message": {"content": ""}, "finish_reason": "stop"}
        message, state = choice["message"], "incomplete" if choice["finish_reason"] == "length" else "completed"
        if message.get("content") or message.get("refusal") or not message.get("tool_calls"):
            self.output.append(self._message_item(message.get("content") or "", state, message.get("refusal")))
        for call in message.get("tool_calls", []):
            self.output.append({"type": "function_call", "id": _id("fc"), "call_id": call["id"],
                                "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                                "status": state})
        return self.response(state, self.usage(chat["usage"]))

    @staticmethod
    def _message_item(text: str, status: str, refusal: str | None = None) -> dict:
        content = [{"type": "refusal", "refusal": refusal}] if refusal else [
            {"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"type": "message", "id": _id("msg"), "status": status, "role": "assistant", "content": content}

    # Stream events -------------------------------------------------------------------------------------------
    def _event(self, kind: str, **fields) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def start(self) -> list[bytes]:
        created = self.response("in_progress")
        return [self._event("response.created", response=created),
                self._event("response.in_progress", response=self.response("in_progress"))]

    def chunk(self, chunk: dict) -> list[bytes]:
        """Events for one normalised chat chunk (choice 0: the Responses API has one answer)."""
        events: list[bytes] = []
        for choice in chunk["choices"]:
            if choice["index"] != 0:
                continue
            delta = choice["delta"]
            if delta.get("content"):
                if self.open is None or self.open["type"] != "message":
                    events += self._close() + self._open_message()
                self.open["content"][0]["text"] += delta["content"]
                events.append(self._event("response.output_text.delta", item_id=self.open["id"],
                                          output_index=len(self.output) - 1, content_index=0, delta=delta["content"],
                                          logprobs=[]))
            for call in delta.get("tool_calls", []):
                item = self.calls.get(call["index"])
                if item is None:
                    events += self._close()
                    item = self.calls[call["index"]] = {
                        "type": "function_call", "id": _id("fc"), "call_id": call.get("id") or _id("call"),
                        "name": call["function"].get("name", ""), "arguments": "", "status": "in_progress"}
                    self.open = item
                    events += self._added(item)
                fragment = call["function"].get("arguments", "")
                if fragment:
                    item["arguments"] += fragment
                    events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                              output_index=self.output.index(item), delta=fragment))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def _open_message(self) -> list[bytes]:
        self.open = self._message_item("", "in_progress")
        self.open["content"] = []
        events = self._added(self.open)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self.open["content"].append(part)
        return events + [self._event("response.content_part.added", item_id=self.open["id"],
                                     output_index=len(self.output) - 1, content_index=0, part=part)]

    def _added(self, item: dict) -> list[bytes]:
        self.output.append(item)
        return [self._event("response.output_item.added", output_index=len(self.output) - 1, item=item)]

    def _close(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        status = "incomplete" if self.finish == "length" else "completed"
        item["status"] = status
        index = self.output.index(item)
        if item["type"] == "message":
            part = item["content"][0]
            events = [self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=part["text"], logprobs=[]),
                      self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=part)]
        else:
            events = [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=item["arguments"])]
        return events + [self._event("response.output_item.done", output_index=index, item=item)]

    def end(self, counted: dict) -> list[bytes]:
        """The last events: open items done, then ``response.completed`` (or ``incomplete``) with usage. An answer
        with nothing in it is one empty message, as a whole response has."""
        events = [] if self.output else self._open_message()
        events += self._close()
        for item in self.output:
            if item["status"] == "in_progress":
                item["status"] = "completed"
        state = "incomplete" if self.finish == "length" else "completed"
        return events + [self._event(f"response.{state}", response=self.response(state, self.usage(counted)))]

    def error(self, message: str, code: str) -> bytes:
        return self._event("error", code=code, message=message, param=None)
