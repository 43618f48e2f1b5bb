"""OpenAI's error object, the only error shape ``/v1`` ever answers with."""
from __future__ import annotations

from flask import jsonify

from ..echo import shown

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """Raised anywhere under ``/v1``; rendered as OpenAI's error JSON with ``status``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def invalid(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    """A 400 for a request body, naming the parameter at fault and why, in OpenAI's codes."""
    return ApiError(400, message, param=param, code=code)


def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": param,
                      "code": code}}
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


# What /v1 serves: an unknown path or method under /v1 is told so, in these words.
SERVED = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses", "POST /v1/embeddings",
          "GET /v1/models",
          "GET /v1/models/{model}", "GET /v1/generations/{id}")


def route_error(status: int, method: str, path: str, headers: dict | None = None):
    """404 and 405 under /v1: OpenAI's error object, with a code that says the endpoint or method is not served and a
    message that names what is."""
    if status == 404:
        return openai_error(404, f"{shown(path, 80)} is not an endpoint of this API. It serves {', '.join(SERVED)}.",
                            code="unsupported_endpoint", headers=headers)
    if status == 405:
        allowed = [line for line in SERVED if _matches(line.split()[1], path)]
        return openai_error(405, f"{method} is not served at {shown(path, 80)}. It serves "
                                 f"{', '.join(allowed or SERVED)}.", code="method_not_allowed", headers=headers)
    return None


def _matches(pattern: str, path: str) -> bool:
    want, got = pattern.strip("/").split("/"), path.strip("/").split("/")
    return (len(want) == len(got) or want[-1].startswith("{") and len(got) >= len(want)) and all(
        w.startswith("{") or w == g for w, g in zip(want, got))
