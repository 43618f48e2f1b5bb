"""The JSON API hostkit talks to, authenticated by the host token issued at registration.

Register a machine; read its own state; fetch its overlay configuration; send
heartbeats (the answer carries what the dashboard asks of it); go up or down;
choose the models it offers and its weekly schedule.
"""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from .. import hosts, overlay_hub, schedule

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
            "serving_now": hosts.serving_now(host), "schedule": schedule.format_windows(host.schedule or []),
            "timezone": host.timezone, "healthy": host.healthy, "heartbeat": host.heartbeat or {},
            "last_heartbeat_at": host.last_heartbeat_at.isoformat() if host.last_heartbeat_at else None,
            "models": [offer.model.hf_id for offer in host.offers if offer.enabled]}


REGISTRATION_FIELDS = {"enrollment_key", "public_key", "name", "engine_port", "hardware", "ssh_host_key"}


@bp.post("/register")
def register():
    body = _json_body()
    if {"api_base", "engine_address", "engine_url"} & body.keys():
        raise hosts.HostError("the router dials a host's engine only at the overlay address it assigns at approval; "
                              "a registration cannot name an engine address")
    if unknown := sorted(body.keys() - REGISTRATION_FIELDS):
        raise hosts.HostError(f"unknown field {unknown[0]!r}: a registration has "
                              f"{', '.join(sorted(REGISTRATION_FIELDS))}")
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


@bp.get("/overlay")
def overlay():
    host = _authenticated()
    if host.status != "approved":
        raise hosts.HostError(f"this host is {host.status}: it joins the overlay once an admin approves it",
                              status=409)
    return jsonify(overlay=overlay_hub.config_for(host))


@bp.post("/availability")
def availability():
    host = hosts.set_available(_authenticated(), _json_body().get("available"))
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
    body = _json_body()
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise hosts.HostError("enabled must be true or false")
    hosts.set_model(host.owner, host, body.get("model"), enabled)
    return jsonify(host=_host_state(host))


@bp.put("/schedule")
def set_schedule():
    host = _authenticated()
    body = _json_body()
    windows = body.get("schedule", "")
    if not isinstance(windows, str):
        raise hosts.HostError("schedule must be text: one window per line, e.g. mon-fri 22:00-08:00")
    hosts.set_schedule(host.owner, host, windows, body.get("timezone") or host.timezone)
    return jsonify(host=_host_state(host))
