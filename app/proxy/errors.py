"""OpenAI's error object, the only error shape ``/v1`` ever answers with."""
from __future__ import annotations

from flask import jsonify

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


def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": param,
                      "code": code}}
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response
