"""Money on the request path: the hold at admission, the settlement at the end, in PostgreSQL functions.

``gs_hold`` reserves a request's worst-case cost (and refuses a revoked key,
whatever the key cache says); ``gs_finish`` records the usage and moves the
money, once per request id; ``gs_release`` gives back a hold that will never
be settled. Each is one statement in its own transaction, called with named
arguments.
"""
from __future__ import annotations

from ..money.units import cost_of
from .errors import ApiError

HOLD_SQL = """SELECT granted, amount, refusal FROM gs_hold(
    p_request => %(request_id)s, p_user => %(user_id)s, p_key => %(key_id)s, p_prompt_cost => %(prompt_cost)s,
    p_output_price => %(output_price)s, p_max_tokens => %(max_tokens)s, p_cap => %(cap)s,
    p_ttl_seconds => %(ttl_seconds)s)"""

FINISH_SQL = """SELECT gs_finish(
    p_request => %(request_id)s, p_endpoint => %(endpoint)s, p_status => %(status)s, p_stream => %(stream)s,
    p_http_status => %(http_status)s::smallint, p_prompt_tokens => %(prompt_tokens)s,
    p_completion_tokens => %(completion_tokens)s, p_host_prompt_tokens => %(host_prompt_tokens)s,
    p_host_completion_tokens => %(host_completion_tokens)s, p_cost => %(cost)s, p_fee_bps => %(fee_bps)s,
    p_latency_ms => %(latency_ms)s, p_ttft_ms => %(ttft_ms)s, p_host => %(host_id)s, p_user => %(user_id)s,
    p_key => %(key_id)s, p_model => %(model_id)s, p_input_price => %(input_price)s,
    p_output_price => %(output_price)s)"""

RELEASE_SQL = "SELECT gs_release(p_request => %(request_id)s)"


def settlement(request: dict, *, status: str, http_status: int, completion_tokens: int, host_id: int | None,
               latency_ms: int, ttft_ms: int | None = None, host_usage: dict | None = None) -> dict:
    """Every argument of ``gs_finish`` for one request. ``request`` is what admission knew (the journal's
    header): ids, endpoint, stream, prompt tokens, prices and fee. Nothing delivered on a failed request is
    nothing owed."""
    claim = host_usage or {}
    cost = 0 if status != "ok" and not completion_tokens else cost_of(
        request["prompt_tokens"], completion_tokens, request["input_price"], request["output_price"])
    return {
        "request_id": request["request_id"], "endpoint": request["endpoint"], "status": status,
        "stream": request["stream"], "http_status": http_status, "prompt_tokens": request["prompt_tokens"],
        "completion_tokens": completion_tokens, "host_prompt_tokens": _count(claim.get("prompt_tokens")),
        "host_completion_tokens": _count(claim.get("completion_tokens")), "cost": cost,
        "fee_bps": request["fee_bps"], "latency_ms": latency_ms, "ttft_ms": ttft_ms, "host_id": host_id,
        "user_id": request["user_id"], "key_id": request["key_id"], "model_id": request["model_id"],
        "input_price": request["input_price"], "output_price": request["output_price"],
    }


def _count(value) -> int | None:
    """A host's token count as the usage record keeps it: a plausible integer, else nothing."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def refusal_error(refusal: str, headers: dict) -> ApiError:
    """The client's error for a hold ``gs_hold`` refused."""
    if refusal == "revoked":
        return ApiError(401, "Incorrect API key provided. Create or check your keys on the API keys page.",
                        code="invalid_api_key", headers=headers)
    if refusal == "spend_limit":
        return ApiError(402, "This API key has reached its spend limit. Raise it or use another key.",
                        code="spend_limit_reached", headers=headers)
    if refusal == "receivable":
        return ApiError(402, "This account owes money after a refund or dispute. Settle it on the billing page to "
                             "send requests again.", code="payment_owed", headers=headers)
    return ApiError(402, "Your credit balance is too low for this request. Add credits on the billing page.",
                    code="insufficient_credits", headers=headers)
