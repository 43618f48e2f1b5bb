"""The JSON API hostkit talks to, authenticated by the host token issued at registration.

Register a machine; read its own state; fetch its overlay configuration; send
heartbeats (the answer carries what the dashboard asks of it); go up or down;
choose the models it offers and its weekly schedule.

Every body is strict JSON (no NaN, no nesting deeper than orjson's limit, at
most ``MAX_BODY_BYTES``) checked against its schema in ``schemas.py`` before
any service sees it; a refusal is JSON ``{"error": ...}`` with a 4xx.
"""
from __future__ import annotations

import orjson
from flask import Blueprint, g, jsonify, request
from jsonschema import Draft202012Validator

from .. import hosts
from ..echo import shown
from ..hosts import hub as overlay_hub
from ..hosts import schedule
from . import schemas

bp = Blueprint("hostapi", __name__, url_prefix="/api/hosts")

MAX_BODY_BYTES = 256 * 1024
VALIDATORS = {name: Draft202012Validator(getattr(schemas, name)) for name in (
    "REGISTRATION", "HEARTBEAT", "AVAILABILITY", "MODEL_CHOICE", "SCHEDULE")}


@bp.errorhandler(hosts.HostError)
def host_error(error: hosts.HostError):
    return jsonify(error=str(error)), error.status


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _json_body(schema: str) -> dict:
    """The request's JSON object, valid against ``schemas.<schema>``; else a HostError that says why."""
    return _valid(_parsed_body(), schema)


def _parsed_body() -> dict:
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise hosts.HostError(f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB", status=413)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise hosts.HostError(f"the request body is not valid JSON: {shown(str(error), 120)}") from None
    if not isinstance(body, dict):
        raise hosts.HostError("the request body must be a JSON object")
    if _has_nul(body):
        raise hosts.HostError("the request body holds a NUL character, which no field may contain")
    return body


def _valid(body: dict, schema: str) -> dict:
    error = next(VALIDATORS[schema].iter_errors(body), None)
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the body"
        raise hosts.HostError(f"{where}: {shown(error.message, 200)}")
    return body


@bp.get("/openapi.json")
def openapi():
    """This API's OpenAPI document."""
    from .openapi import document

    return document()


def _host_state(host) -> dict:
    serving = hosts.serving(host)
    return {"id": host.id, "name": host.name, "status": host.status, "peer_id": host.peer_id,
            "overlay_address": str(host.overlay_address) if host.overlay_address else None,
            "engine_port": host.engine_port, "enabled": host.enabled, "available": host.available,
            "serving": serving.ok, "reason": None if serving.ok else {"code": serving.code, "message": serving.why},
            "in_schedule": hosts.in_schedule(host), "schedule": schedule.format_windows(host.schedule or []),
            "timezone": host.timezone, "healthy": host.healthy, "heartbeat": host.heartbeat or {},
            "last_heartbeat_at": host.last_heartbeat_at.isoformat() if host.last_heartbeat_at else None,
            "models": [offer.model.hf_id for offer in host.offers if offer.enabled],
            "parsers": {offer.model.hf_id: {"tool_call_parser": offer.model.tool_call_parser,
                                            "reasoning_parser": offer.model.reasoning_parser}
                        for offer in host.offers if offer.enabled},
            "trust": {"state": host.trust_state, "reason": host.trust_reason}, "reference": host.reference,
            # A reference engine scores other hosts' tokens: in full precision, whatever the model ships in.
            "engine_dtype": "float32" if host.reference else None}


ENGINE_ADDRESS_FIELDS = {"api_base", "engine_address", "engine_url"}


@bp.post("/register")
def register():
    body = _parsed_body()
    if ENGINE_ADDRESS_FIELDS & body.keys():
        raise hosts.HostError("the router dials a host's engine only at the overlay address it assigns at approval; "
                              "a registration cannot name an engine address")
    _valid(body, "REGISTRATION")
    host, token = hosts.register(body.get("enrollment_key"), public_key=body.get("public_key"),
                                 name=body.get("name"), engine_port=body.get("engine_port"),
                                 hardware=body.get("hardware", {}), ssh_host_key=body.get("ssh_host_key"))
    return jsonify(host=_host_state(host), token=token), 201


def _authenticated():
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    host = hosts.authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if host is None:
        raise hosts.HostError("unknown host token: run `hostkit register` again", status=401)
    g.host = host
    return host


@bp.get("/me")
def me():
    return jsonify(host=_host_state(_authenticated()))


@bp.post("/heartbeat")
def heartbeat():
    host = _authenticated()
    host = hosts.record_heartbeat(host, _json_body("HEARTBEAT"))
    return jsonify(host=_host_state(host))


@bp.get("/overlay")
def overlay():
    host = _authenticated()
    if host.status != "approved":
        raise hosts.HostError(f"this host is {host.status}: it joins the overlay once an admin approves it",
                              status=409)
    return jsonify(overlay=overlay_hub.config_for(host))


@bp.post("/availability")
def availability():
    host = _authenticated()
    host = hosts.set_available(host, _json_body("AVAILABILITY")["available"])
    return jsonify(host=_host_state(host))


@bp.get("/models")
def models():
    host = _authenticated()
    return jsonify(models=[{"id": model.hf_id, "name": model.display_name, "min_vram_mib": model.min_vram_mib,
                            "offered": offered, "fits": fits} for model, offered, fits in hosts.models_for(host)],
                   vram_mib=hosts.gpu_memory_mib(host))


@bp.post("/models")
def set_model():
    host = _authenticated()
    body = _json_body("MODEL_CHOICE")
    hosts.set_model(host.owner, host, body["model"], body["enabled"])
    return jsonify(host=_host_state(host))


@bp.put("/schedule")
def set_schedule():
    host = _authenticated()
    body = _json_body("SCHEDULE")
    hosts.set_schedule(host.owner, host, body["schedule"], body.get("timezone") or host.timezone)
    return jsonify(host=_host_state(host))
