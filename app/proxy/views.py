"""The OpenAI-compatible API under ``/v1``, authenticated by API key."""
from __future__ import annotations

from flask import Blueprint, g, request
from sqlalchemy.exc import SQLAlchemyError

from ..accounts import api_keys
from ..echo import shown
from ..extensions import db
from ..money.units import format_usd, usd_of
from . import admission, embeddings
from . import openapi as openapi_document
from .errors import ApiError, openai_error
from .gateway import DatabaseUnavailable, complete, gateway, unavailable
from .routing import RoutingUnavailable

KEY_ACTIVE_SQL = "SELECT 1 FROM api_keys WHERE id = %(key_id)s AND revoked_at IS NULL"

bp = Blueprint("proxy", __name__, url_prefix="/v1")

OWNED_BY = "gpushare"


@bp.errorhandler(ApiError)
def handle_api_error(error: ApiError):
    return openai_error(error.status, error.message, code=error.code, param=error.param, headers=error.headers)


@bp.errorhandler(RoutingUnavailable)
@bp.errorhandler(DatabaseUnavailable)
@bp.errorhandler(SQLAlchemyError)
def handle_database_away(error):
    db.session.rollback()
    return handle_api_error(unavailable())


@bp.get("/openapi.json")
def openapi():
    """This API's OpenAPI document (public, like OpenAI's own)."""
    return openapi_document.document()


@bp.before_request
def authenticate_key():
    if request.endpoint == "proxy.openapi":
        return
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                       code="missing_api_key")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "The Authorization header must be 'Bearer YOUR_KEY'.", code="invalid_api_key")
    key = api_keys.authenticate(secret.strip())
    # The request path uses its own short transactions: a session must not hold a pooled connection
    # for the length of a stream. Rollback ends the key lookup's read and gives the connection back.
    db.session.rollback()
    if key is None:
        # Never echo the key: a client's logs end up in bug reports.
        raise ApiError(401, "Incorrect API key provided. Create or check your keys on the API keys page.",
                       code="invalid_api_key")
    g.api_key = key


def _model_object(offer) -> dict:
    """OpenAI's model object, plus what a marketplace client chooses by: the context, the price now and the
    closed-model price it undercuts."""
    prices = {"input": offer.input_price, "output": offer.output_price,
              "reference_input": offer.reference_input_price, "reference_output": offer.reference_output_price}
    return {"id": offer.hf_id, "object": "model", "created": offer.created, "owned_by": OWNED_BY,
            "context_length": offer.context_length, "kind": offer.kind,
            "supported_parameters": embeddings.SUPPORTED_PARAMETERS if offer.kind == "embedding"
            else admission.supported_parameters(offer.tools),
            "pricing": {"currency": "USD"} | {f"{name}_per_million_tokens": format_usd(micro)[1:]
                                              for name, micro in prices.items()}}


def _check_not_revoked() -> None:
    """The key cache may be stale after a Redis outage; spending is checked by ``gs_hold``, and the cheap
    model listing asks PostgreSQL here (trusting the cache only while the database is away)."""
    try:
        active = gateway().sql(KEY_ACTIVE_SQL, {"key_id": g.api_key.id})
    except DatabaseUnavailable:
        return
    if active is None:
        raise ApiError(401, "Incorrect API key provided. Create or check your keys on the API keys page.",
                       code="invalid_api_key")


@bp.get("/models")
def list_models():
    """Models that at least one healthy host serves and this key may use."""
    _check_not_revoked()
    offers = [m for m in gateway().routing.served_models() if g.api_key.allows(m.hf_id)]
    return {"object": "list", "data": [_model_object(m) for m in offers]}


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    _check_not_revoked()
    for offer in gateway().routing.served_models():
        if offer.hf_id == model_id and g.api_key.allows(model_id):
            return _model_object(offer)
    raise ApiError(404, f"The model '{shown(model_id)}' does not exist or you do not have access to it.",
                   code="model_not_found", param="model")


GENERATION_SQL = """
    SELECT u.request_id, u.endpoint, u.stream, u.status, u.http_status, u.prompt_tokens, u.completion_tokens,
           u.host_prompt_tokens, u.host_completion_tokens, u.cost, u.latency_ms, u.ttft_ms, u.created_at,
           m.hf_id, h.peer_id, h.timezone
    FROM usage_records u JOIN models m ON m.id = u.model_id LEFT JOIN hosts h ON h.id = u.host_id
    WHERE u.request_id = %(request_id)s AND u.user_id = %(user_id)s
"""
RESPONSE_ID_PREFIXES = ("chatcmpl-", "cmpl-", "resp_", "embd-")


@bp.get("/generations/<generation_id>")
def generation(generation_id: str):
    """One request's record, by its response id, for the owner of the key that made it: tokens by the router's
    count and the host's claim, cost, status, timings and the host that served it."""
    request_id = next((generation_id.removeprefix(p) for p in RESPONSE_ID_PREFIXES if generation_id.startswith(p)),
                      generation_id)
    row = gateway().sql(GENERATION_SQL, {"request_id": request_id[:64], "user_id": g.api_key.user_id})
    if row is None:
        raise ApiError(404, f"No generation '{shown(generation_id, 80)}' was made with this account's keys (a "
                            "request is listed once it is settled).", param="id", code="generation_not_found")
    (request_id, endpoint, stream, status, http_status, prompt, completion, host_prompt, host_completion, cost,
     latency, ttft, created, model, peer_id, timezone) = row
    return {"id": generation_id, "object": "generation", "created": int(created.timestamp()), "model": model,
            "endpoint": endpoint, "stream": stream, "status": status, "http_status": http_status,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "cost": usd_of(cost)},
            "host_usage": {"prompt_tokens": host_prompt, "completion_tokens": host_completion},
            "latency_ms": latency, "time_to_first_token_ms": ttft,
            "host": {"peer_id": peer_id, "region": timezone} if peer_id or timezone else None}


@bp.post("/chat/completions")
def chat_completions():
    return complete("chat")


@bp.post("/completions")
def completions():
    return complete("completions")


@bp.post("/embeddings")
def create_embeddings():
    """Embeddings from a model the catalog sells as one (vLLM's pooling runner on its hosts)."""
    return complete("embeddings")


@bp.post("/responses")
def create_response():
    """OpenAI's Responses API, for text and function tools, on the chat path (``responses``)."""
    return complete("responses")
