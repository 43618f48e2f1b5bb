"""The JSON API hostkit talks to: register a machine, read its own state, send heartbeats."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from .. import hosts

bp = Blueprint("hostapi", __name__, url_prefix="/api/hosts")


@bp.errorhandler(hosts.HostError)
def host_error(error: hosts.HostError):
    return jsonify(error=str(error)), error.status


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise hosts.HostError("the request body must be a JSON object")
    return body


def _host_state(host) -> dict:
    return {"id": host.id, "name": host.name, "status": host.status, "peer_id": host.peer_id,
            "overlay_address": str(host.overlay_address) if host.overlay_address else None,
            "engine_port": host.engine_port, "enabled": host.enabled, "available": host.available,
            "models": [offer.model.hf_id for offer in host.offers if offer.enabled]}


@bp.post("/register")
def register():
    body = _json_body()
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
    host = hosts.record_heartbeat(_authenticated(), _json_body())
    return jsonify(host=_host_state(host))
