"""The OpenAPI 3.1 document of ``/v1``: what the router really accepts and answers, served at
``/v1/openapi.json``.

Request bodies list every parameter the router takes (``admission.py``) and
refuse any other; sizes carry the router's own bounds. Responses are what
``normalise.py`` rebuilds from a host's answer, and OpenAI's error object for
every status the router can answer with. The tests fuzz the running app
against this document (schemathesis).
"""
from __future__ import annotations

from flask import current_app

from . import admission, embeddings, responses

ERROR_STATUSES = {
    "400": "The request is malformed or refused (its `param` names the field at fault).",
    "401": "No API key, or one that is unknown or revoked.",
    "402": "The balance, the key's spend limit or a debt stops the request.",
    "403": "The key may not use this model.",
    "404": "No such model (or not for this key).",
    "405": "The method is not allowed here.",
    "413": "The body is larger than the router accepts.",
    "429": "The key's requests or tokens per minute are used up; `Retry-After` says when to retry.",
    "502": "The host failed before answering.",
    "503": "No host serves the model now, or the service is briefly unavailable; `Retry-After` says when to retry.",
    "504": "The host did not answer in time.",
}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}

NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": ["boolean", "null"]}
STOP = {"anyOf": [{"type": "string", "maxLength": admission.MAX_STOP_LENGTH},
                  {"type": "array", "maxItems": admission.MAX_STOP_SEQUENCES,
                   "items": {"type": "string", "minLength": 1, "maxLength": admission.MAX_STOP_LENGTH}},
                  {"type": "null"}]}
TOOL = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {"type": {"const": "function"}, "function": {
        "type": "object", "required": ["name"], "properties": {"name": {"type": "string",
                                                                         "pattern": "^[A-Za-z0-9_.-]{1,64}$"}}}},
}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": sorted(admission.ROLES)},
        "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
    },
}
OPTIONAL_NUMBER = {"type": ["number", "null"]}


def known() -> dict[str, dict]:
    """The parameters the router itself checks, as it checks them. The others (vLLM's own sampling parameters,
    ``user``, ``metadata`` ...) it passes on or ignores as they come: the document says nothing of their
    types."""
    tokens = {"type": ["integer", "null"], "minimum": 1, "maximum": 10_000_000}
    return {
        "model": {"type": "string", "minLength": 1, "maxLength": admission.MAX_MODEL_NAME,
                  "examples": ["gpushare/tiny-chat"]},
        "stream": BOOLEAN,
        "stream_options": {"type": ["object", "null"], "additionalProperties": False,
                           "properties": {"include_usage": {}, "include_obfuscation": {},
                                          "continuous_usage_stats": {}},
                           "description": "Only with `stream: true`."},
        "max_tokens": tokens, "max_completion_tokens": tokens,
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": current_app.config["MAX_CHOICES"]},
        "temperature": OPTIONAL_NUMBER, "top_p": OPTIONAL_NUMBER, "presence_penalty": OPTIONAL_NUMBER,
        "frequency_penalty": OPTIONAL_NUMBER,
        "stop": STOP,
        "logit_bias": {"type": ["object", "null"], "maxProperties": admission.MAX_LOGIT_BIAS},
        "messages": {"type": "array", "minItems": 1, "maxItems": current_app.config["MAX_MESSAGES"],
                     "items": MESSAGE},
        "tools": {"type": ["array", "null"], "maxItems": admission.MAX_TOOLS, "items": TOOL},
        "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "maxItems": 1,
                                                  "items": {"type": "string"}}]},
        "best_of": {"anyOf": [{"const": 1}, {"type": "null"}], "description": "Use `n` instead."},
    }


def _request(parameters, required: list[str], types: dict | None = None) -> dict:
    """A request body of exactly ``parameters``, typed as ``types`` says (by default, as chat's and completions'
    are: ``known()``)."""
    types = known() if types is None else types
    return {"type": "object", "required": required, "additionalProperties": False,
            "properties": {name: types.get(name, {}) for name in sorted(parameters)}}


USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
         "properties": {"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER,
                        "cost": {"type": "number", "minimum": 0,
                                 "description": "What the request was charged, in US dollars."}}}
FINISH = {"type": ["string", "null"]}
OPTIONAL_OBJECT = {"type": ["object", "null"]}


def _answer(kind: str, choice: dict, required: list[str]) -> dict:
    """A whole answer: ``kind`` is its ``object``, ``choice`` what each choice holds besides its index, finish
    reason and logprobs."""
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": kind}, "created": INTEGER, "model": {"type": "string"},
            "usage": USAGE,
            "choices": {"type": "array", "items": {
                "type": "object", "required": ["index", *required, "finish_reason"],
                "properties": {"index": INTEGER, "finish_reason": FINISH, "logprobs": OPTIONAL_OBJECT, **choice}}},
        },
    }


CHAT_COMPLETION = _answer("chat.completion", {"message": {
    "type": "object", "required": ["role", "content"],
    "properties": {"role": {"const": "assistant"}, "content": {"type": ["string", "null"]},
                   "refusal": {"type": ["string", "null"]}, "tool_calls": {"type": "array"}}}}, ["message"])
COMPLETION = _answer("text_completion", {"text": {"type": "string"}}, ["text"])
PRICE = {"type": "string", "pattern": r"^\d+\.\d+$"}
MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by", "context_length", "pricing"],
    "properties": {
        "id": {"type": "string"}, "object": {"const": "model"}, "created": INTEGER, "owned_by": {"type": "string"},
        "context_length": INTEGER,
        "supported_parameters": {"type": "array", "items": {"type": "string"}},
        "pricing": {"type": "object", "properties": {
            "currency": {"const": "USD"}, "input_per_million_tokens": PRICE, "output_per_million_tokens": PRICE,
            "reference_input_per_million_tokens": PRICE, "reference_output_per_million_tokens": PRICE}},
    },
}
NULLABLE_INTEGER = {"type": ["integer", "null"]}
RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string"}, "object": {"const": "response"}, "created_at": INTEGER,
        "status": {"enum": ["completed", "incomplete", "in_progress"]}, "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object", "required": ["type"],
                                              "properties": {"type": {"enum": ["message", "function_call"]}}}},
        "usage": {"type": "object", "properties": {"input_tokens": INTEGER, "output_tokens": INTEGER,
                                                   "total_tokens": INTEGER, "cost": {"type": "number"}}},
    },
}
EMBEDDING_LIST = {
    "type": "object", "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"}, "model": {"type": "string"},
        "data": {"type": "array", "items": {
            "type": "object", "required": ["object", "index", "embedding"],
            "properties": {"object": {"const": "embedding"}, "index": INTEGER,
                           "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                                   {"type": "string"}]}}}},
        "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
                  "properties": {"prompt_tokens": INTEGER, "total_tokens": INTEGER, "cost": {"type": "number"}}},
    },
}
MODEL_NAME = {"type": "string", "minLength": 1, "maxLength": admission.MAX_MODEL_NAME}
EMBEDDING_REQUEST = _request(embeddings.PARAMETERS_TABLE, ["model", "input"], {
    "model": MODEL_NAME, "encoding_format": {"enum": ["float", "base64", None]},
    "input": {"anyOf": [{"type": "string", "minLength": 1},
                        {"type": "array", "minItems": 1, "maxItems": embeddings.MAX_INPUTS}]}})
RESPONSE_REQUEST = _request(responses.PARAMETERS, ["model", "input"], {
    "model": MODEL_NAME, "stream": BOOLEAN,
    "input": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "object"}}]},
    "max_output_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 10_000_000}})
GENERATION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "endpoint", "status", "usage", "host_usage", "latency_ms"],
    "properties": {
        "id": {"type": "string"}, "object": {"const": "generation"}, "created": INTEGER, "model": {"type": "string"},
        "endpoint": {"type": "string"}, "stream": {"type": "boolean"}, "status": {"type": "string"},
        "http_status": INTEGER, "usage": USAGE,
        "host_usage": {"type": "object", "description": "What the host claimed; the bill is the router's count.",
                       "properties": {"prompt_tokens": NULLABLE_INTEGER, "completion_tokens": NULLABLE_INTEGER}},
        "latency_ms": INTEGER, "time_to_first_token_ms": NULLABLE_INTEGER,
        "host": {"type": ["object", "null"], "properties": {"peer_id": {"type": ["string", "null"]},
                                                            "region": {"type": ["string", "null"]}}},
    },
}
SSE = {"text/event-stream": {"schema": {"type": "string",
                                        "description": "Server-sent events: chunks, then `data: [DONE]`; a "
                                                       "failure after the first byte is an `error` event."}}}


def _errors(*statuses: str) -> dict:
    return {status: {"description": ERROR_STATUSES[status], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for status in statuses}


def _completion(summary: str, body: str, answer: str) -> dict:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}},
        "responses": {"200": {"description": "The answer, whole or streamed.", "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{answer}"}}, **SSE}},
            **_errors("400", "401", "402", "403", "404", "405", "413", "429", "502", "503", "504")},
    }}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpushare OpenAI-compatible API", "version": "1",
                 "description": "Open models on hosts' GPUs, through the OpenAI API. Authenticate with "
                                "`Authorization: Bearer <API key>`."},
        "servers": [{"url": "/v1"}],
        "security": [{"apiKey": []}],
        "paths": {
            "/models": {"get": {"summary": "Models at least one healthy host serves, with their prices",
                                "responses": {"200": {"description": "The models.", "content": {
                                    "application/json": {"schema": {
                                        "type": "object", "required": ["object", "data"],
                                        "properties": {"object": {"const": "list"}, "data": {
                                            "type": "array", "items": {"$ref": "#/components/schemas/Model"}}}}}}},
                                    **_errors("401", "405", "503")}}},
            "/models/{model}": {"get": {
                "summary": "One model",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The model.", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Model"}}}}, **_errors("401", "404", "405", "503")}}},
            "/generations/{id}": {"get": {
                "summary": "One request's record (by its response id), for the owner of the key that made it",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The record.", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Generation"}}}},
                    **_errors("401", "404", "405", "503")}}},
            "/embeddings": {"post": {
                "summary": "Embeddings of text (or token ids) from an embedding model",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}}},
                "responses": {"200": {"description": "One vector per input.", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/EmbeddingList"}}}},
                    **_errors("400", "401", "402", "403", "404", "405", "413", "429", "502", "503", "504")}}},
            "/responses": _completion("A response (OpenAI's Responses API: text and function tools)",
                                      "ResponseRequest", "Response"),
            "/chat/completions": _completion("A chat completion", "ChatCompletionRequest", "ChatCompletion"),
            "/completions": _completion("A text completion", "CompletionRequest", "Completion"),
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": ERROR, "Model": MODEL, "Generation": GENERATION, "ChatCompletion": CHAT_COMPLETION,
                "Completion": COMPLETION, "Response": RESPONSE, "ResponseRequest": RESPONSE_REQUEST,
                "EmbeddingList": EMBEDDING_LIST, "EmbeddingRequest": EMBEDDING_REQUEST,
                "ChatCompletionRequest": _request(admission.CHAT_PARAMETERS, ["model", "messages"]),
                "CompletionRequest": _request(admission.COMPLETION_PARAMETERS, ["model", "prompt"]),
            },
        },
    }
