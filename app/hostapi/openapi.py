"""The OpenAPI 3.1 document of the host API, served at ``/api/hosts/openapi.json``.

Request bodies are the schemas the API checks (``schemas.py``), so the
document and the checks cannot drift apart. The tests fuzz the running app
against it (schemathesis).
"""
from __future__ import annotations

from ..hosts import NOT_SERVING
from ..models import Host
from . import schemas

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
WHY = {
    "400": "The body is not valid JSON, or not of the documented shape; `error` says what is wrong.",
    "401": "An unknown host token (or enrollment key): run `hostkit register` again.",
    "404": "No such model in the catalog.",
    "405": "The method is not allowed here.",
    "409": "Not now: the host's state does not allow it (not approved, a model it does not offer, a key already "
           "registered).",
    "413": "The body is larger than the API accepts.",
    "503": "The service is briefly unavailable; `Retry-After` says when to retry.",
}

HOST_STATE = {
    "type": "object",
    "required": ["id", "name", "status", "enabled", "available", "serving", "reason", "in_schedule", "healthy",
                 "models"],
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "status": {"enum": list(Host.STATUSES)},
        "peer_id": {"type": ["string", "null"]}, "overlay_address": {"type": ["string", "null"]},
        "engine_port": {"type": ["integer", "null"]}, "enabled": {"type": "boolean"},
        "available": {"type": "boolean"},
        # The platform's one answer to "does this host get requests now?", and the first reason when it does not.
        "serving": {"type": "boolean"},
        "reason": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"enum": list(NOT_SERVING)},
                           "message": {"type": "string"}}}]},
        "in_schedule": {"type": "boolean"}, "schedule": {"type": "string"},
        "timezone": {"type": "string"}, "healthy": {"type": "boolean"}, "heartbeat": {"type": "object"},
        "last_heartbeat_at": {"type": ["string", "null"]},
        "models": {"type": "array", "items": {"type": "string"}},
        # How the engine is to serve each model: vLLM's tool-call and reasoning parsers (null: none).
        "parsers": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"tool_call_parser": {"type": ["string", "null"]},
                                             "reasoning_parser": {"type": ["string", "null"]}}}},
        # What verification says of the host, and whether it is a reference engine (it then serves in full
        # precision: ``engine_dtype`` float32; null: the model's own dtype).
        "trust": {"type": "object", "required": ["state", "reason"],
                  "properties": {"state": {"enum": list(Host.TRUST_STATES)}, "reason": {"type": "string"}}},
        "reference": {"type": "boolean"},
        "engine_dtype": {"enum": ["float32", None]},
    },
}
HOST = {"type": "object", "required": ["host"], "properties": {"host": {"$ref": "#/components/schemas/HostState"}}}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: str) -> dict:
    return {status: {"description": WHY[status], "content": _json({"$ref": "#/components/schemas/Error"})}
            for status in (*statuses, "405", "503")}


def _operation(summary: str, answer: dict, *errors: str, body: str | None = None, status: str = "200",
               public: bool = False) -> dict:
    operation = {"summary": summary,
                 "responses": {status: {"description": "Done.", "content": _json(answer)}, **_errors(*errors)}}
    if body:
        operation["requestBody"] = {"required": True,
                                    "content": _json({"$ref": f"#/components/schemas/{body}"})}
    if public:
        operation["security"] = []
    return operation


def document() -> dict:
    host = {"$ref": "#/components/schemas/Host"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpushare host API", "version": "1",
                 "description": "What `hostkit` talks to. Authenticate with `Authorization: Bearer <host token>` "
                                "(from `hostkit register`)."},
        "servers": [{"url": "/api/hosts"}],
        "security": [{"hostToken": []}],
        "paths": {
            "/register": {"post": _operation(
                "Register a machine with an enrollment key; the host token is shown once",
                {"type": "object", "required": ["host", "token"],
                 "properties": {"host": {"$ref": "#/components/schemas/HostState"}, "token": {"type": "string"}}},
                "400", "401", "409", "413", body="Registration", status="201", public=True)},
            "/me": {"get": _operation("This host's state", host, "401")},
            "/heartbeat": {"post": _operation("Report the engine's state; the answer says what is asked of the host",
                                              host, "400", "401", "409", "413", body="Heartbeat")},
            "/overlay": {"get": _operation("This host's overlay configuration (approved hosts)", {
                "type": "object", "required": ["overlay"], "properties": {"overlay": {"type": "object"}}},
                "401", "409")},
            "/availability": {"post": _operation("Go up or down (`hostkit up` / `hostkit down`)", host,
                                                 "400", "401", "413", body="Availability")},
            "/models": {
                "get": _operation("The catalog's models, and which this host offers and fits", {
                    "type": "object", "required": ["models"],
                    "properties": {"models": {"type": "array", "items": {"type": "object"}},
                                   "vram_mib": {"type": ["integer", "null"]}}}, "401"),
                "post": _operation("Offer a model, or stop offering it", host, "400", "401", "404", "413",
                                   body="ModelChoice"),
            },
            "/schedule": {"put": _operation("Set the weekly serving windows", host, "400", "401", "413",
                                            body="Schedule")},
        },
        "components": {
            "securitySchemes": {"hostToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR, "HostState": HOST_STATE, "Host": HOST,
                        "Registration": schemas.REGISTRATION, "Heartbeat": schemas.HEARTBEAT,
                        "Availability": schemas.AVAILABILITY, "ModelChoice": schemas.MODEL_CHOICE,
                        "Schedule": schemas.SCHEDULE},
        },
    }
