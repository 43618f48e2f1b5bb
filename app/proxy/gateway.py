"""The request path: admit, hold, route, forward, meter, settle.

One ``Gateway`` per app holds what every request shares: the routing table,
the upstream connection pool, the tokenizers, the rate limiter and the
request journal. A request makes one Redis call for its key (cached), one for
its rate limits, one PostgreSQL call to hold its worst-case cost and one to
record and settle its usage; the ORM is not used here.

Faults, and what the client sees:

- **PostgreSQL away.** Admission answers 503 (OpenAI's error, with
  Retry-After). A request already admitted finishes normally: its settlement
  is spooled to the journal and made when the database is back.
- **Redis away.** The request goes on without it (``app/shared.py``).
- **The host fails.** Before the first byte, another host is tried; after
  it, the stream ends with an error event and what was delivered is charged.
  A choice the host ends with vLLM's ``abort`` or ``error`` (it is shutting
  down, or failed) is a failure, never an answer (``relay``).
- **This process dies.** The journal lets another process settle what the
  client was sent (``journal.py``).

Every failure reaches the client as OpenAI's error object: an HTTP error
before the stream starts, an SSE ``error`` event after.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property

import orjson
import psycopg
from flask import Flask, Response, current_app, g, request, stream_with_context
from jinja2.exceptions import TemplateError
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError

from ..accounts.api_keys import KeyInfo
from ..catalog import pricing
from ..echo import shown
from ..extensions import db
from ..money.units import cost_of
from ..shared import quietly
from . import admission, embeddings, relay, responses, sampling
from .errors import ApiError
from .journal import Entry, Journal
from .metering import Meter
from .ratelimit import Decision, RateLimiter
from .routing import Offer, Route, RoutingTable, RoutingUnavailable
from .settlement import FINISH_SQL, HOLD_SQL, RELEASE_SQL, refusal_error, settlement
from .upstream import HostRefused, Upstream, UpstreamError, host_message

log = logging.getLogger(__name__)

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
NO_HOST_RETRY_AFTER = "10"
UNAVAILABLE_RETRY_AFTER = "5"
HOLD_GRACE_SECONDS = 60  # a hold outlives its request's deadline by this much


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached (down, restarting, or every connection busy for too long)."""


def unavailable() -> ApiError:
    """The answer while PostgreSQL is away: retry shortly."""
    return ApiError(503, "The service is briefly unavailable. Try again in a few seconds.",
                    code="service_unavailable", headers={"Retry-After": UNAVAILABLE_RETRY_AFTER})


class Gateway:
    def __init__(self, app: Flask):
        config = app.config
        self.routing = RoutingTable(db.engine, app.extensions["redis"], config["ROUTING_REFRESH_SECONDS"],
                                    config["ROUTING_STRATEGY"])
        self.upstream = Upstream(config["UPSTREAM_CONNECT_TIMEOUT"], config["UPSTREAM_FIRST_TOKEN_TIMEOUT"],
                                 config["UPSTREAM_CHUNK_TIMEOUT"])
        self.meter = Meter(config["TOKENIZERS_DIR"])
        self.limiter = RateLimiter(app.extensions["redis"])
        self.cache = app.extensions["redis"]
        self.journal = Journal(config["USAGE_SPOOL_DIR"])
        # Refusal counters outlive two pricing windows, so the pricing job always finds the minutes it reads.
        self.refusal_ttl = 2 * config["PRICING_INTERVAL_SECONDS"] + 120
        self.fee_bps = config["PLATFORM_FEE_BPS"]
        self.request_timeout = config["REQUEST_TIMEOUT_SECONDS"]
        self.max_attempts = config["ROUTING_MAX_ATTEMPTS"]
        self.default_rpm = config["RATE_LIMIT_REQUESTS_PER_MINUTE"]
        self.default_tpm = config["RATE_LIMIT_TOKENS_PER_MINUTE"]
        self.max_messages = config["MAX_MESSAGES"]
        self.max_choices = config["MAX_CHOICES"]
        self.sample_rate = config["VERIFY_SAMPLE_BPS"] / 10_000
        # The request path's own connections, in autocommit and never reset on return: one round trip per
        # statement. A fixed number per process: a burst waits its turn (gevent-friendly) instead of opening
        # more connections than PostgreSQL allows.
        self.pool = create_engine(db.engine.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                                  pool_size=config["DATABASE_REQUEST_POOL_SIZE"], max_overflow=0,
                                  pool_timeout=config["DATABASE_POOL_TIMEOUT"], pool_recycle=300)
        self.journal.start_draining(self.drain)

    def close(self) -> None:
        """Give back every connection (at shutdown)."""
        self.pool.dispose()
        self.upstream.pool.clear()

    def sql(self, statement: str, params: dict):
        """One statement, its own transaction, one round trip: the pool's connections are in autocommit.
        Retried once on a connection that died (each statement is idempotent by request id). Raises
        DatabaseUnavailable when PostgreSQL cannot be reached."""
        for attempt in (1, 2):
            try:
                conn = self.pool.raw_connection()
            except (SQLAlchemyError, psycopg.OperationalError) as error:
                raise DatabaseUnavailable(str(error)) from None
            try:
                cursor = conn.cursor()
                cursor.execute(statement, params)
                return cursor.fetchone()
            except psycopg.OperationalError as error:
                conn.invalidate()
                if attempt == 2:
                    raise DatabaseUnavailable(str(error)) from None
            finally:
                conn.close()

    def drain(self) -> int:
        """Settle what the journal holds that can be settled now; 0 while the database is away."""
        try:
            return self.journal.drain(settle=lambda params: self.sql(FINISH_SQL, params),
                                      release=lambda request_id: self.sql(RELEASE_SQL, {"request_id": request_id}),
                                      count=self.count_texts)
        except DatabaseUnavailable:
            return 0

    def count_texts(self, model_id: str, texts: list[str]) -> int:
        tokenizer = self.meter.for_model(model_id)
        return sum(tokenizer.count_text(text) for text in texts)


def gateway() -> Gateway:
    app = current_app._get_current_object()
    found = app.extensions.get("gateway")
    if found is None:
        found = app.extensions["gateway"] = Gateway(app)
    return found


@dataclass
class Call:
    """One completion request on its way through the router."""

    gw: Gateway
    key: KeyInfo
    req: admission.CompletionRequest
    offer: Offer
    prompt_tokens: int
    limits: Decision
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))
    granted: int = 0
    held: int = 0
    charged: int = 0
    fits: int = 0  # the context a host must take: prompt and completion, or the longest input to embed
    route: Route | None = None
    first_token_at: float | None = None
    host_usage: dict | None = None
    settled: bool = False
    entry: Entry | None = None
    completion_tokens: int = 0  # the router's count, once settled
    prompt_ids: list[int] | None = None  # the prompt as the router rendered it (None: counted by estimate)
    sampled: sampling.Sampling | None = None  # set when this answer is kept for verification (``sampling.keep``)
    canary: bool = False  # sent by the verifier (``trust.verifier``): its ``sample`` stays here, not queued
    sample: dict | None = None

    @property
    def response_id(self) -> str:
        prefixes = {"chat": "chatcmpl-", "completions": "cmpl-", "responses": "resp_", "embeddings": "embd-"}
        return prefixes[self.req.surface] + self.request_id

    @property
    def deadline(self) -> float:
        """When this request must be over (monotonic clock)."""
        return self.started + self.gw.request_timeout

    def headers(self) -> dict[str, str]:
        return {**self.limits.headers(), "x-request-id": self.request_id}

    @cached_property
    def record(self) -> dict:
        """What the journal keeps of the request, and what its settlement is made from."""
        return {"request_id": self.request_id, "endpoint": self.req.surface, "stream": self.req.stream,
                "prompt_tokens": self.prompt_tokens, "user_id": self.key.user_id, "key_id": self.key.id,
                "model_id": self.offer.id, "model_hf_id": self.offer.hf_id, "input_price": self.offer.input_price,
                "output_price": self.offer.output_price, "fee_bps": self.gw.fee_bps, "started_at": time.time(),
                "deadline": time.time() + self.gw.request_timeout}

    def hold(self) -> None:
        """Reserve the worst-case cost. The journal entry comes first: a process that dies from here on leaves
        a record another one settles."""
        try:
            self.entry = self.gw.journal.open(self.request_id, self.record)
        except OSError:
            log.exception("the request journal cannot be written; refusing requests that hold money")
            self._refused()
            raise unavailable() from None
        try:
            granted, amount, refusal = self.gw.sql(HOLD_SQL, {
                "request_id": self.request_id, "user_id": self.key.user_id, "key_id": self.key.id,
                "prompt_cost": cost_of(self.prompt_tokens, 0, self.offer.input_price, 0),
                "output_price": self.offer.output_price * self.req.n, "max_tokens": self.req.max_tokens,
                "cap": self.offer.context_length - self.prompt_tokens,
                "ttl_seconds": self.gw.request_timeout + HOLD_GRACE_SECONDS})
        except DatabaseUnavailable:
            self.entry.release()  # the hold may have been made before the connection broke
            self._refused()
            raise unavailable() from None
        if refusal:
            self.entry.remove()
            self._refused()
            raise refusal_error(refusal, {**self.headers(), "x-should-retry": "false"})
        self.granted, self.held = granted, amount

    def _refused(self) -> None:
        self.settled = True
        self.gw.limiter.correct_tokens(self.limits, -self.reserved_tokens)

    @property
    def reserved_tokens(self) -> int:
        return self.prompt_tokens + (self.req.max_tokens or 0) * self.req.n

    def upstream_body(self) -> bytes:
        if self.req.endpoint == "embeddings":
            return embeddings.forward(self.req.body, self.offer.hf_id)
        body = self.req.forward()
        body["model"] = self.offer.hf_id
        body["max_tokens"] = self.granted
        # The generated token ids, which the router decodes and counts itself (``relay``).
        body["return_token_ids"] = True
        if self.req.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # the host's claim, recorded beside our count
        return orjson.dumps(body)

    def finish(self, status: str, http_status: int, completion_tokens: int) -> int:
        """Record usage and settle, exactly once per request; spooled when the database is away. Returns the
        cost charged."""
        if self.settled:
            return self.charged
        self.settled = True
        self.completion_tokens = completion_tokens
        ttft = int((self.first_token_at - self.started) * 1000) if self.first_token_at else None
        params = settlement(self.record, status=status, http_status=http_status,
                            completion_tokens=completion_tokens, host_id=self.route.host_id if self.route else None,
                            latency_ms=int((time.monotonic() - self.started) * 1000), ttft_ms=ttft,
                            host_usage=self.host_usage)
        try:
            self.charged = self.gw.sql(FINISH_SQL, params)[0]
        except DatabaseUnavailable:
            self.entry.spool(params)
            self.charged = min(params["cost"], self.held)
            log.warning("the database is away: request %s's usage is spooled until it is back", self.request_id)
        else:
            self.entry.remove()
        self.gw.limiter.correct_tokens(self.limits, self.prompt_tokens + completion_tokens - self.reserved_tokens)
        return self.charged


def _check_context(limit: int, prompt_tokens: int, req: admission.CompletionRequest, what: str) -> None:
    wanted = req.max_tokens or 1
    if prompt_tokens + wanted > limit:
        raise ApiError(400, f"{what} is {limit} tokens. However, you requested {prompt_tokens + wanted} tokens "
                            f"({prompt_tokens} in the prompt, {wanted} for the completion). Please reduce the length "
                            "of the prompt or the completion.",
                       param="messages" if req.endpoint == "chat" else "prompt", code="context_length_exceeded")


def admit(endpoint: str, key: KeyInfo, raw: bytes) -> Call:
    """Everything before a host is chosen; raises ApiError with the status a client should see."""
    gw = gateway()
    limits = {"max_messages": gw.max_messages, "max_choices": gw.max_choices}
    if endpoint == "responses":  # the Responses API rides the chat path (``responses``)
        responses_body = admission.parse_json(raw)
        req = admission.check(responses.to_chat(responses_body), "chat", **limits)
        req.responses = responses_body
    elif endpoint == "embeddings":
        req = embeddings.parse(raw)
    else:
        req = admission.parse(raw, endpoint, **limits)
    offer = gw.routing.model(req.model)
    if offer is None:
        raise ApiError(404, f"The model '{shown(req.model)}' does not exist or you do not have access to "
                            "it.", param="model", code="model_not_found")
    if not key.allows(offer.hf_id):
        raise ApiError(403, f"This API key is not allowed to use the model '{offer.hf_id}'.", param="model",
                       code="model_not_allowed")
    if (req.tools or req.functions) and not offer.tools:
        raise ApiError(400, f"'{offer.hf_id}' does not call tools: send the request without 'tools', or use a model "
                            "whose /v1/models entry says it supports tools.", param="tools",
                       code="unsupported_parameter")
    if (offer.kind == "embedding") != (req.endpoint == "embeddings"):
        right = "POST /v1/embeddings" if offer.kind == "embedding" else "POST /v1/chat/completions"
        raise ApiError(400, f"'{offer.hf_id}' is {'an embedding' if offer.kind == 'embedding' else 'a chat'} model: "
                            f"call {right}.", param="model", code="unsupported_endpoint")
    prompt_ids = None
    if req.endpoint == "embeddings":
        counts = embeddings.count(gw.meter.for_model(offer.hf_id), req.inputs, offer.context_length)
        prompt_tokens, fits = sum(counts), max(counts)
    else:
        prompt_tokens, prompt_ids = _count_prompt(req, gw.meter.for_model(offer.hf_id))
        _check_context(offer.context_length, prompt_tokens, req, "This model's maximum context length")
        fits = prompt_tokens + (req.max_tokens or 1)
    rpm = key.requests_per_minute or gw.default_rpm
    tpm = key.tokens_per_minute or gw.default_tpm
    limits = gw.limiter.admit(key.id, rpm, tpm, prompt_tokens + (req.max_tokens or 0) * req.n)
    if not limits.allowed:
        what = "requests" if limits.refused_by == "requests" else "tokens"
        raise ApiError(429, f"Rate limit reached for {what} per minute on this API key. Try again in "
                            f"{max(1, round(limits.reset_seconds))}s.", code="rate_limit_exceeded",
                       headers={**limits.headers(), "Retry-After": str(max(1, round(limits.reset_seconds)))})
    return Call(gw=gw, key=key, req=req, offer=offer, prompt_tokens=prompt_tokens, limits=limits, fits=fits,
                prompt_ids=prompt_ids, sampled=sampling.chosen(gw.sample_rate, req.body, prompt_ids, req.max_tokens))


def _count_prompt(req: admission.CompletionRequest, tokenizer) -> tuple[int, list[int] | None]:
    try:
        return req.prompt(tokenizer)
    except Exception as error:  # the template's own refusal (raise_exception), or one it could not render
        reason = f": {shown(str(error), 200)}" if isinstance(error, TemplateError) else "."
        raise ApiError(400, f"The messages could not be rendered with this model's chat template{reason}",
                       param="messages", code="invalid_messages") from None


def complete(endpoint: str):
    """``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses`` and ``/v1/embeddings``."""
    try:
        call = admit(endpoint, g.api_key, request.get_data(cache=False))
        sticky = f"{call.key.user_id}:{call.req.sticky}" if call.req.sticky else None
        candidates = call.gw.routing.candidates(call.offer, call.fits, sticky=sticky)
    except RoutingUnavailable:
        raise unavailable() from None
    if not candidates:
        call.gw.limiter.correct_tokens(call.limits, -call.reserved_tokens)
        longest = call.gw.routing.longest_context(call.offer)
        if longest is not None and call.req.endpoint != "embeddings":  # hosts serve it, none with a context this long
            _check_context(longest, call.prompt_tokens, call.req,
                           "The longest context a host serving this model takes now")
        quietly(lambda: pricing.record_refusal(call.gw.cache, call.offer.id, call.reserved_tokens,
                                               call.gw.refusal_ttl), None, "counting refusals")
        raise ApiError(503, f"No host is serving '{call.offer.hf_id}' right now. Try again shortly.",
                       code="no_host_available", headers={**call.headers(), "Retry-After": NO_HOST_RETRY_AFTER})
    return serve(call, candidates[:call.gw.max_attempts])


def serve(call: Call, candidates: list[Route]):
    """Hold the call's worst-case cost, then forward it to the first of ``candidates`` that answers."""
    call.hold()
    try:
        return _forward(call, candidates)
    except ApiError as error:
        call.finish("failed" if error.status >= 500 else "rejected", error.status, 0)
        error.headers = {**call.headers(), **error.headers}
        raise
    except BaseException:
        call.finish("failed", 500, 0)
        raise


def _forward(call: Call, candidates: list[Route]):
    """Try the candidates in turn until one answers; a non-streamed answer is returned whole, a stream is handed
    to ``relay.stream`` (which then holds the host until it ends)."""
    gw, last_error = call.gw, None
    path, body = PATHS[call.req.endpoint], call.upstream_body()
    for route in candidates:
        call.route = route
        call.entry.host(route.host_id)
        with gw.routing.in_flight(route) as in_flight:
            try:
                response = gw.upstream.open(route.api_base + path, body, stream=call.req.stream)
                if not call.req.stream:
                    return relay.whole(call, gw.upstream.read_json(response))
                events = gw.upstream.events(response)
                first = next(events)  # a failure before the first event may still go to another host
                call.first_token_at = time.monotonic()
                return Response(stream_with_context(relay.stream(call, first, events, in_flight.hand_over())),
                                mimetype="text/event-stream",
                                headers={**call.headers(), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            except HostRefused as refused:
                raise ApiError(400, host_message(refused.body), code="invalid_request") from None
            except UpstreamError as error:
                log.warning("host %s failed request %s: %s", route.host_id, call.request_id, error)
                last_error = error
            except StopIteration:
                last_error = UpstreamError("the host sent an empty stream")
    status = last_error.status if last_error else 502
    raise ApiError(status, "The host serving this model failed. Try again." if status == 502 else
                   "The host serving this model timed out. Try again.",
                   code="host_failed" if status == 502 else "host_timeout")
