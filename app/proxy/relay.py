"""Relaying the host's answer to the client: a whole response, or a stream of Server-Sent Events.

Both rebuild what the client receives field by field (``normalise``), count the completion with the router's
own tokenizer, and settle the request once (``Call.finish``). A stream journals each piece before it is sent,
so that a process killed mid-stream still bills what the client got; after the first byte a failure reaches
the client as OpenAI's error object in an SSE ``error`` event, never as a cut connection.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import orjson
from flask import current_app

from . import normalise
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


def whole(call: Call, data: dict):
    if normalise.abandoned(data):
        raise UpstreamError("the host gave up on the request (its engine is stopping or failed)")
    call.first_token_at = time.monotonic()
    call.host_usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    build = normalise.chat_response if call.req.endpoint == "chat" else normalise.completion_response
    body = build(data, response_id=call.response_id, created=call.created, model=call.offer.hf_id, counted={})
    completion_tokens = count(call, normalise.texts_of_response(call.req.endpoint, body["choices"]))
    completion_tokens += sum(map(_ended_on_eos, data.get("choices") or []))
    body["usage"] = normalise.usage(call.prompt_tokens, completion_tokens)
    call.finish("ok", 200, completion_tokens)
    return current_app.response_class(orjson.dumps(body), mimetype="application/json", headers=call.headers())


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error_event(message: str, code: str, kind: str = "server_error") -> bytes:
    return _sse({"error": {"message": message, "type": kind, "param": None, "code": code}})


class _PastDeadline(Exception):
    pass


def stream(call: Call, first: bytes, events, in_flight: InFlight):
    gw, endpoint = call.gw, call.req.endpoint
    build = normalise.chat_chunk if endpoint == "chat" else normalise.completion_chunk
    delivered: dict[int, list[str]] = {}
    ended_on_eos: set[int] = set()
    status, http_status = "client_closed", 499

    def tokens_delivered() -> int:
        return count(call, ["".join(parts) for parts in delivered.values()]) + len(ended_on_eos)

    try:
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
                # Into the journal first: if this process dies while it sends, what the client got is billed (a
                # piece it never got, at most, too). Counted here once the client took it.
                for index, text in texts:
                    call.entry.delivered(index, text)
                yield _sse(chunk)
                for index, text in texts:
                    delivered.setdefault(index, []).append(text)
            if time.monotonic() > call.deadline:
                raise _PastDeadline()
            try:
                data = next(events)
            except StopIteration:
                break
        completion_tokens = tokens_delivered()
        status, http_status = "ok", 200
        call.finish("ok", 200, completion_tokens)  # durable (or spooled) before the client sees the end
        if call.req.include_usage:
            yield _sse(normalise.usage_chunk(endpoint, response_id=call.response_id, created=call.created,
                                             model=call.offer.hf_id,
                                             counted=normalise.usage(call.prompt_tokens, completion_tokens)))
        yield b"data: [DONE]\n\n"
    except UpstreamError as error:
        status, http_status = "host_failed", error.status
        log.warning("host %s broke stream %s: %s", call.route.host_id, call.request_id, error)
        call.finish(status, http_status, tokens_delivered())
        yield _error_event("The host serving this request failed mid-stream.", "host_failed")
    except _PastDeadline:
        status, http_status = "timed_out", 504
        call.finish(status, http_status, tokens_delivered())
        yield _error_event(f"The request ran longer than the {gw.request_timeout}s allowed.", "timeout")
    except Exception:  # anything else: the client still gets an error event, never a cut connection
        status, http_status = "failed", 500
        log.exception("stream %s failed", call.request_id)
        call.finish(status, http_status, tokens_delivered())
        yield _error_event("The stream failed on our side. What was delivered is charged; try again.",
                           "internal_error")
    finally:
        events.close()  # a client that went away frees the host at once
        in_flight.release()
        if not call.settled:  # the client went away (GeneratorExit)
            call.finish(status, http_status, tokens_delivered())
