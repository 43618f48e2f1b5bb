"""What the host API accepts, as JSON Schema (draft 2020-12): one schema per request body, every field bounded.

Hosts are strangers' machines: a body with a field not listed here, a number
out of range, a string too long or of the wrong shape is refused before any
service sees it. The same schemas are published in the host API's OpenAPI
document (``/api/hosts/openapi.json``).
"""
from __future__ import annotations

NAME = {"type": "string", "minLength": 1, "maxLength": 80, "pattern": r"^[^\u0000-\u001f\u007f]*$"}
MODEL_ID = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"^[^\u0000-\u001f\u007f\s]+$"}
TEXT = {"type": "string", "maxLength": 4000}
COUNT = {"type": "integer", "minimum": 0, "maximum": 1_000_000}
MIB = {"type": "integer", "minimum": 0, "maximum": 100_000_000}

GPU = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "index": {"type": "integer", "minimum": 0, "maximum": 1024},
        "name": {"type": "string", "maxLength": 200},
        "uuid": {"type": "string", "maxLength": 100},
        "memory_total_mib": MIB,
        "memory_free_mib": MIB,
    },
}

CHECK = {
    "type": "object",
    "required": ["name", "status"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,31}$"},
        "status": {"enum": ["ok", "warn", "fail"]},
        "detail": TEXT,
        "data": {"type": "object", "maxProperties": 64},
    },
    # The GPU check's data is what the platform reads (the VRAM that decides which models fit): its shape is fixed.
    "if": {"properties": {"name": {"const": "gpu"}}},
    "then": {"properties": {"data": {
        "type": "object",
        "properties": {"gpus": {"type": "array", "maxItems": 64, "items": GPU}, "vram_total_mib": MIB},
    }}},
}

HARDWARE = {
    "description": "The report `hostkit check --json` prints.",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ready": {"type": "boolean"},
        "summary": TEXT,
        "checks": {"type": "array", "maxItems": 32, "items": CHECK},
    },
}

REGISTRATION = {
    "type": "object",
    "required": ["enrollment_key", "public_key", "name", "engine_port"],
    "additionalProperties": False,
    "properties": {
        "enrollment_key": {"type": "string", "maxLength": 100},
        "public_key": {"type": "string", "description": "The machine's WireGuard public key (base64, 32 bytes).",
                       "maxLength": 64},
        "name": NAME,
        "engine_port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "hardware": HARDWARE,
        "ssh_host_key": {"type": "string", "maxLength": 4000, "pattern": r"^ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+( .*)?$"},
    },
}

ENGINE_STATES = ["waiting", "starting", "running", "draining", "stopped", "failed"]

HEARTBEAT = {
    "type": "object",
    "required": ["engine"],
    "additionalProperties": False,
    "properties": {
        "engine": {"enum": ENGINE_STATES},
        "engine_kind": {"type": "string", "pattern": r"^[a-z]{1,16}$"},
        "models": {"type": "array", "maxItems": 8, "items": MODEL_ID,
                   "description": "What the engine serves now: only models this host offers."},
        "overlay": {"enum": ["wireguard", "loopback", None]},
        "error": TEXT,
        "queue_depth": COUNT,
        "running": COUNT,
        "max_model_len": {"type": ["integer", "null"], "minimum": 1, "maximum": 10_000_000},
        "tokens_per_second": {"type": "number", "minimum": 0, "maximum": 1_000_000},
    },
}

AVAILABILITY = {
    "type": "object",
    "required": ["available"],
    "additionalProperties": False,
    "properties": {"available": {"type": "boolean"}},
}

MODEL_CHOICE = {
    "type": "object",
    "required": ["model", "enabled"],
    "additionalProperties": False,
    "properties": {"model": MODEL_ID, "enabled": {"type": "boolean"}},
}

SCHEDULE = {
    "type": "object",
    "required": ["schedule"],
    "additionalProperties": False,
    "properties": {
        "schedule": {"type": "string", "maxLength": 2000,
                     "description": "Weekly windows, one per line, such as `mon-fri 22:00-08:00`; empty: always."},
        "timezone": {"type": ["string", "null"], "maxLength": 64},
    },
}
