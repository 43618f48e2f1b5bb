"""What a client receives, rebuilt from what the host sent, field by field, to OpenAI's published schema.

Engines add fields of their own, send ``null`` where the schema allows none,
and report usage the router does not bill by. Only the fields below pass, and
``usage`` is always the router's own count.
"""
from __future__ import annotations

CHAT_FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
COMPLETION_FINISH_REASONS = {"stop", "length", "content_filter"}
# vLLM ends a choice with these when it did not finish it: ``abort`` as it shuts down mid-request, ``error`` on an
# internal failure. Such a choice is the host failing, never an answer.
ABANDONED_REASONS = {"abort", "error"}


def abandoned(upstream: dict) -> bool:
    """Whether the host gave up on any choice of this response or chunk."""
    return any(isinstance(choice, dict) and choice.get("finish_reason") in ABANDONED_REASONS
               for choice in upstream.get("choices") or [])


def _finish(reason, allowed: set[str], *, final: bool = True):
    if reason is None and not final:
        return None
    if reason in allowed:
        return reason
    return "stop" if final else None


def _string_or_none(value):
    return value if isinstance(value, str) else None


def _tool_calls(calls, *, chunk: bool) -> list[dict] | None:
    if not isinstance(calls, list) or not calls:
        return None
    cleaned = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        item: dict = {}
        if chunk:
            item["index"] = call.get("index", i) if isinstance(call.get("index", i), int) else i
        if isinstance(call.get("id"), str):
            item["id"] = call["id"]
        if chunk and "id" not in item and not function:
            continue
        item["type"] = "function"
        fn = {}
        if isinstance(function.get("name"), str):
            fn["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            fn["arguments"] = function["arguments"]
        if not chunk:
            fn.setdefault("name", "")
            fn.setdefault("arguments", "")
            item.setdefault("id", f"call_{i}")
        item["function"] = fn
        cleaned.append(item)
    return cleaned or None


def _logprobs(value):
    return value if isinstance(value, dict) else None


def _chat_logprobs(value):
    """Chat logprobs carry both ``content`` and ``refusal`` lists (or null); engines often leave one out."""
    if not isinstance(value, dict):
        return None
    return {part: value[part] if isinstance(value.get(part), list) else None for part in ("content", "refusal")}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(upstream: dict, *, response_id: str, created: int, model: str, counted: dict) -> dict:
    choices = []
    for i, choice in enumerate(upstream.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        source = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        message = {"role": "assistant", "content": _string_or_none(source.get("content")),
                   "refusal": _string_or_none(source.get("refusal"))}
        calls = _tool_calls(source.get("tool_calls"), chunk=False)
        if calls:
            message["tool_calls"] = calls
            message["content"] = message["content"] or None  # OpenAI's: no text beside the calls is null
        choices.append({"index": choice.get("index", i) if isinstance(choice.get("index"), int) else i,
                        "message": message, "logprobs": _chat_logprobs(choice.get("logprobs")),
                        "finish_reason": _finish(choice.get("finish_reason"), CHAT_FINISH_REASONS)})
    return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": counted}


def completion_response(upstream: dict, *, response_id: str, created: int, model: str, counted: dict) -> dict:
    choices = []
    for i, choice in enumerate(upstream.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        choices.append({"index": choice.get("index", i) if isinstance(choice.get("index"), int) else i,
                        "text": _string_or_none(choice.get("text")) or "",
                        "logprobs": _logprobs(choice.get("logprobs")),
                        "finish_reason": _finish(choice.get("finish_reason"), COMPLETION_FINISH_REASONS)})
    return {"id": response_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": counted}


def chat_chunk(upstream: dict, *, response_id: str, created: int, model: str) -> tuple[dict, list[tuple[int, str]]]:
    """A stream chunk, and the (choice index, text) it delivers."""
    choices, texts = [], []
    for i, choice in enumerate(upstream.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", i) if isinstance(choice.get("index"), int) else i
        source = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        delta: dict = {}
        if source.get("role") == "assistant":
            delta["role"] = "assistant"
        content = _string_or_none(source.get("content"))
        if content is not None:
            delta["content"] = content
            texts.append((index, content))
        refusal = _string_or_none(source.get("refusal"))
        if refusal is not None:
            delta["refusal"] = refusal
        calls = _tool_calls(source.get("tool_calls"), chunk=True)
        if calls:
            delta["tool_calls"] = calls
            texts += [(index, c["function"].get("arguments", "")) for c in calls]
        choices.append({"index": index, "delta": delta, "logprobs": _chat_logprobs(choice.get("logprobs")),
                        "finish_reason": _finish(choice.get("finish_reason"), CHAT_FINISH_REASONS, final=False)})
    return ({"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": choices}, texts)


def completion_chunk(upstream: dict, *, response_id: str, created: int,
                     model: str) -> tuple[dict, list[tuple[int, str]]]:
    choices, texts = [], []
    for i, choice in enumerate(upstream.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", i) if isinstance(choice.get("index"), int) else i
        text = _string_or_none(choice.get("text")) or ""
        texts.append((index, text))
        choices.append({"index": index, "text": text, "logprobs": _logprobs(choice.get("logprobs")),
                        "finish_reason": _finish(choice.get("finish_reason"), COMPLETION_FINISH_REASONS,
                                                 final=False)})
    return ({"id": response_id, "object": "text_completion", "created": created, "model": model,
             "choices": choices}, texts)


def visible(chunk: dict) -> bool:
    """Whether a chunk gives the client anything: engines send empty pieces while their parsers hold text back."""
    return any(choice.get("delta") or choice.get("text") or choice.get("finish_reason") or choice.get("logprobs")
               for choice in chunk["choices"])


def legacy_functions(answer: dict, functions: bool) -> None:
    """For a request that used the deprecated ``functions``: the first tool call as ``function_call`` (a whole
    message or a chunk's delta), and ``function_call`` as the finish reason."""
    if not functions:
        return
    for choice in answer["choices"]:
        holder = choice.get("message") or choice.get("delta") or {}
        calls = holder.pop("tool_calls", None)
        if calls:
            holder["function_call"] = {k: v for k, v in calls[0]["function"].items() if k in ("name", "arguments")}
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "function_call"


def usage_chunk(endpoint: str, *, response_id: str, created: int, model: str, counted: dict) -> dict:
    return {"id": response_id, "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
            "created": created, "model": model, "choices": [], "usage": counted}
