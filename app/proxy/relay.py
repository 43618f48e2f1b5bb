"""Relaying the host's answer to the client: a whole response, or a stream of Server-Sent Events.

Both rebuild what the client receives field by field (``normalise``), count the completion with the router's
own tokenizer, and settle the request once (``Call.finish``). The count is of the text the engine generated, which
the router decodes from the token ids the engine returns (``return_token_ids``) when that text accounts for what
the client received (``ModelTokenizer.count_generated``): so a tool call's syntax, a stop string and the
end-of-sequence token count as the engine counts them, and a host cannot bill for text it did not deliver. Without
such ids the delivered text is counted, plus the end-of-sequence token. A stream journals each piece before it is sent,
so that a process killed mid-stream still bills what the client got; after the first byte a failure reaches
the client as OpenAI's error object in an SSE ``error`` event, never as a cut connection.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from flask import current_app

from ..money.units import usd_of
from . import embeddings, normalise, responses, sampling
from .routing import InFlight
from .upstream import UpstreamError

if TYPE_CHECKING:
    from .gateway import Call

log = logging.getLogger(__name__)


def count(call: Call, texts: list[str]) -> int:
    return call.gw.count_texts(call.offer.hf_id, texts)


def _ended_on_eos(choice) -> bool:
    """The engine stopped on the model's end-of-sequence token, which it generated but leaves out of the text.

    vLLM names the stop string or token id in ``stop_reason`` when one ended the choice; none means eos."""
    return isinstance(choice, dict) and choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None


@dataclass
class Generated:
    """What one choice delivered, and what its host says it generated, for the count."""

    content: list[str] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)  # tool call index -> [name, arguments]
    token_ids: list[int] | None = field(default_factory=list)  # None once a piece came without them
    stop: str | None = None
    ended_on_eos: bool = False
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def add_ids(self, ids) -> None:
        if self.token_ids is not None:
            self.token_ids = self.token_ids + ids if isinstance(ids, list) else None

    def tokens(self, call: Call) -> int:
        tokenizer = call.gw.meter.for_model(call.offer.hf_id)
        content = "".join(self.content)
        if call.req.endpoint == "completions" and call.req.body.get("echo"):
            prompt = call.req.body["prompt"]
            prompt = prompt if isinstance(prompt, str) else prompt[0]
            content = content[len(prompt):] if content.startswith(prompt) else content
        pieces = [content] + [part for name_and_arguments in self.calls.values() for part in name_and_arguments]
        counted = tokenizer.count_generated(self.token_ids, pieces, tool_calls=len(self.calls), stop=self.stop)
        if counted is None:
            arguments = "".join(arguments for _, arguments in self.calls.values())
            counted = tokenizer.count_text(content + arguments) + self.ended_on_eos
        return counted


def _finished(generated: Generated, choice: dict) -> None:
    if choice.get("finish_reason") is None:
        return
    generated.ended_on_eos = _ended_on_eos(choice)
    stop = choice.get("stop_reason")
    generated.stop = stop if isinstance(stop, str) else None
    generated.finish_reason = choice["finish_reason"] if isinstance(choice["finish_reason"], str) else None
    generated.stop_reason = stop if isinstance(stop, (str, int)) and not isinstance(stop, bool) else None


def embedded(call: Call, data: dict):
    """A whole embeddings answer: one vector per input, billed by the router's count of the input."""
    call.first_token_at = time.monotonic()
    call.host_usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    counted = {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
    body = embeddings.response(data, model=call.offer.hf_id, counted=counted)
    if body is None or len(body["data"]) != len(call.req.inputs):
        raise UpstreamError("the host did not send one embedding per input")
    call.finish("ok", 200, 0)
    body["usage"]["cost"] = usd_of(call.charged)
    return current_app.response_class(orjson.dumps(body), mimetype="application/json", headers=call.headers())


def whole(call: Call, data: dict):
    if call.req.endpoint == "embeddings":
        return embedded(call, data)
    if normalise.abandoned(data):
        raise UpstreamError("the host gave up on the request (its engine is stopping or failed)")
    call.first_token_at = time.monotonic()
    call.host_usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    build = normalise.chat_response if call.req.endpoint == "chat" else normalise.completion_response
    body = build(data, response_id=call.response_id, created=call.created, model=call.offer.hf_id, counted={})
    sources = [choice for choice in data.get("choices") or [] if isinstance(choice, dict)]
    completion_tokens = 0
    first = None
    for source, choice in zip(sources, body["choices"]):
        generated = Generated(token_ids=source.get("token_ids") if isinstance(source.get("token_ids"), list)
                              else None)
        _finished(generated, source)
        if call.req.endpoint == "chat":
            message = choice["message"]
            generated.content.append(message["content"] or "")
            generated.calls = {k: [c["function"]["name"], c["function"]["arguments"]]
                               for k, c in enumerate(message.get("tool_calls", []))}
        else:
            generated.content.append(choice["text"])
        completion_tokens += generated.tokens(call)
        first = first or generated
    normalise.legacy_functions(body, call.req.functions)
    body["usage"] = normalise.usage(call.prompt_tokens, completion_tokens)
    call.finish("ok", 200, completion_tokens)
    if first is not None:
        call.sample = sampling.keep(call, first.token_ids, first.finish_reason, first.stop_reason)
    body["usage"]["cost"] = usd_of(call.charged)
    if call.req.responses is not None:
        body = _presenter(call).whole(body)
    return current_app.response_class(orjson.dumps(body), mimetype="application/json", headers=call.headers())


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error_event(message: str, code: str, kind: str = "server_error", presenter=None) -> bytes:
    if presenter is not None:  # the Responses API's own error event
        return presenter.error(message, code)
    return _sse({"error": {"message": message, "type": kind, "param": None, "code": code}})


class _PastDeadline(Exception):
    pass


def _take(generated: dict[int, Generated], upstream: dict, chunk: dict) -> None:
    """Add a chunk's pieces to what each choice generated: the delivered text and tool calls, the host's ids and
    ending. A piece that delivers text without ids leaves the choice to be counted by its text."""
    delivering = set()
    for out in chunk["choices"]:
        choice = generated.setdefault(out["index"], Generated())
        if "text" in out:
            choice.content.append(out["text"])
            if out["text"]:
                delivering.add(out["index"])
            continue
        delta = out["delta"]
        choice.content.append(delta.get("content") or "")
        for call in delta.get("tool_calls", []):
            name_and_arguments = choice.calls.setdefault(call["index"], ["", ""])
            name_and_arguments[0] += call["function"].get("name", "")
            name_and_arguments[1] += call["function"].get("arguments", "")
        if delta.get("content") or delta.get("tool_calls"):
            delivering.add(out["index"])
    for source in upstream["choices"]:
        if isinstance(source, dict):
            index = source.get("index", 0) if isinstance(source.get("index", 0), int) else 0
            choice = generated.setdefault(index, Generated())
            if isinstance(source.get("token_ids"), list) or index in delivering:
                choice.add_ids(source.get("token_ids"))
            _finished(choice, source)


def _presenter(call: Call) -> responses.Presenter:
    return responses.Presenter(call.req.responses, call.response_id, call.created, call.offer.hf_id)


def stream(call: Call, first: bytes, events, in_flight: InFlight):
    gw, endpoint = call.gw, call.req.endpoint
    build = normalise.chat_chunk if endpoint == "chat" else normalise.completion_chunk
    presenter = _presenter(call) if call.req.responses is not None else None
    delivered: dict[int, list[str]] = {}
    generated: dict[int, Generated] = {}
    ended_on_eos: set[int] = set()
    status, http_status = "client_closed", 499

    def tokens_delivered() -> int:
        return count(call, ["".join(parts) for parts in delivered.values()]) + len(ended_on_eos)

    try:
        if presenter is not None:
            yield b"".join(presenter.start())
        data = first
        while True:
            try:
                upstream = orjson.loads(data)
            except ValueError:
                raise UpstreamError("the host sent an event that is not JSON", before_first_byte=False) from None
            if not isinstance(upstream, dict):
                raise UpstreamError("the host sent an event of the wrong shape", before_first_byte=False)
            if "error" in upstream:
                raise UpstreamError("the host reported an error mid-stream", before_first_byte=False)
            if normalise.abandoned(upstream):
                raise UpstreamError("the host gave up on the stream (its engine is stopping or failed)",
                                    before_first_byte=False)
            if isinstance(upstream.get("usage"), dict):
                call.host_usage = upstream["usage"]
            if upstream.get("choices"):
                for index in (c.get("index", 0) for c in upstream["choices"] if _ended_on_eos(c)):
                    if index not in ended_on_eos:
                        ended_on_eos.add(index)
                        call.entry.ended_on_eos(index)
                chunk, texts = build(upstream, response_id=call.response_id, created=call.created,
                                     model=call.offer.hf_id)
                normalise.legacy_functions(chunk, call.req.functions)
                # Into the journal first: if this process dies while it sends, what the client got is billed (a
                # piece it never got, at most, too). Counted here once the client took it.
                for index, text in texts:
                    call.entry.delivered(index, text)
                if presenter is not None:
                    yield b"".join(presenter.chunk(chunk))
                elif normalise.visible(chunk):
                    yield _sse(chunk)
                _take(generated, upstream, chunk)
                for index, text in texts:
                    delivered.setdefault(index, []).append(text)
            if time.monotonic() > call.deadline:
                raise _PastDeadline()
            try:
                data = next(events)
            except StopIteration:
                break
        completion_tokens = sum(choice.tokens(call) for choice in generated.values())
        status, http_status = "ok", 200
        call.finish("ok", 200, completion_tokens)  # durable (or spooled) before the client sees the end
        if 0 in generated:
            call.sample = sampling.keep(call, generated[0].token_ids, generated[0].finish_reason,
                                        generated[0].stop_reason)
        if presenter is not None:
            counted = normalise.usage(call.prompt_tokens, completion_tokens) | {"cost": usd_of(call.charged)}
            yield b"".join(presenter.end(counted))
            return
        if call.req.include_usage:
            counted = normalise.usage(call.prompt_tokens, completion_tokens) | {"cost": usd_of(call.charged)}
            yield _sse(normalise.usage_chunk(endpoint, response_id=call.response_id, created=call.created,
                                             model=call.offer.hf_id, counted=counted))
        yield b"data: [DONE]\n\n"
    except UpstreamError as error:
        status, http_status = "host_failed", error.status
        log.warning("host %s broke stream %s: %s", call.route.host_id, call.request_id, error)
        call.finish(status, http_status, tokens_delivered())
        yield _error_event("The host serving this request failed mid-stream.", "host_failed", presenter=presenter)
    except _PastDeadline:
        status, http_status = "timed_out", 504
        call.finish(status, http_status, tokens_delivered())
        yield _error_event(f"The request ran longer than the {gw.request_timeout}s allowed.", "timeout",
                           presenter=presenter)
    except Exception:  # anything else: the client still gets an error event, never a cut connection
        status, http_status = "failed", 500
        log.exception("stream %s failed", call.request_id)
        call.finish(status, http_status, tokens_delivered())
        yield _error_event("The stream failed on our side. What was delivered is charged; try again.",
                           "internal_error", presenter=presenter)
    finally:
        events.close()  # a client that went away frees the host at once
        in_flight.release()
        if not call.settled:  # the client went away (GeneratorExit)
            call.finish(status, http_status, tokens_delivered())
