"""Health checks: a real one-token completion to every approved host, not only ``/health``.

A host becomes unhealthy after ``HEALTH_FAILURES_TO_UNHEALTHY`` failures in a
row and healthy again after ``HEALTH_SUCCESSES_TO_HEALTHY`` successes in a
row; the router only sends requests to healthy hosts.
"""
from __future__ import annotations

import json
import logging

import urllib3
from flask import current_app
from sqlalchemy import select, text

from app.extensions import db
from app.models import CatalogModel, Host, HostModel

log = logging.getLogger(__name__)

PROBE_TIMEOUT = urllib3.Timeout(connect=3, read=30)
_pool = urllib3.PoolManager(retries=False)

RECORD_SQL = text("""
    UPDATE hosts SET
        consecutive_successes = CASE WHEN :ok THEN consecutive_successes + 1 ELSE 0 END,
        consecutive_failures = CASE WHEN :ok THEN 0 ELSE consecutive_failures + 1 END,
        healthy = CASE
            WHEN :ok AND consecutive_successes + 1 >= :to_healthy THEN true
            WHEN NOT :ok AND consecutive_failures + 1 >= :to_unhealthy THEN false
            ELSE healthy END,
        last_checked_at = now(),
        last_check_error = :error
    WHERE id = :host
    RETURNING healthy
""")


def probe(api_base: str, model: str, kind: str = "chat") -> str | None:
    """None when the host answered a one-token completion (an embedding model: one embedding) correctly, else what
    went wrong."""
    if kind == "embedding":
        path, body = "embeddings", {"model": model, "input": "ping"}
    else:
        path = "chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1, "temperature": 0}
    try:
        response = _pool.request("POST", f"{api_base.rstrip('/')}/v1/{path}", body=json.dumps(body),
                                 headers={"Content-Type": "application/json"}, timeout=PROBE_TIMEOUT)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return f"unreachable: {type(exc).__name__}"
    if response.status != 200:
        return f"answered {response.status}"
    try:
        data = json.loads(response.data)
        if kind == "embedding":
            assert len(data["data"][0]["embedding"]) > 0
        else:
            data["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError, AssertionError):
        return f"answered something that is not {'an embedding' if kind == 'embedding' else 'a chat completion'}"
    return None


def check_host(host_id: int) -> bool | None:
    """Probe one host and record the result; returns whether it is healthy now (None: nothing to probe)."""
    row = db.session.execute(
        select(Host.api_base, CatalogModel.hf_id, CatalogModel.kind)
        .join(HostModel, HostModel.host_id == Host.id).join(CatalogModel, CatalogModel.id == HostModel.model_id)
        .where(Host.id == host_id, Host.status == "approved", HostModel.enabled, CatalogModel.enabled)
        .order_by(CatalogModel.id).limit(1)).first()
    if row is None or not row.api_base:
        return None
    error = probe(row.api_base, row.hf_id, row.kind)
    config = current_app.config
    healthy = db.session.execute(RECORD_SQL, {
        "ok": error is None, "error": error, "host": host_id,
        "to_healthy": config["HEALTH_SUCCESSES_TO_HEALTHY"], "to_unhealthy": config["HEALTH_FAILURES_TO_UNHEALTHY"],
    }).scalar_one()
    db.session.commit()
    if error:
        log.warning("host %s failed its health check: %s", host_id, error)
    return healthy


def check_hosts() -> dict[int, bool | None]:
    """Probe every approved, enabled host. Returns each host's health after the probe."""
    host_ids = db.session.scalars(select(Host.id).where(Host.status == "approved", Host.enabled)
                                  .order_by(Host.id)).all()
    db.session.commit()
    return {host_id: check_host(host_id) for host_id in host_ids}
