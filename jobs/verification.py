"""Verification jobs, on their own queue (``verification``) so that a slow reference never delays health checks.

- ``schedule`` (every few seconds): each host whose next canary is due gets one (``run_canary``), at a random
  moment between half and one and a half times ``VERIFY_CANARY_SECONDS`` after the last (sooner while staged, or
  after a failed check); a staged host with no passing benchmark, and any host whose benchmark is older than
  ``VERIFY_BENCHMARK_HOURS``, gets one (``run_benchmark``).
- ``check_sample``: a client answer the request path sampled (``proxy.sampling``).
- ``update_reputation`` (every minute): verified <-> degraded.
- ``calibrate``: an admin's calibration of a model against a host they vouch for.

Each job is safe to run twice: a canary is one more check, a benchmark one more measurement, and each host has at
most one of each queued at a time (their job ids are the host's).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from flask import current_app
from rq.exceptions import DuplicateJobError
from sqlalchemy import select, update

from app.extensions import db
from app.models import Host, HostModel, User, utcnow
from app.proxy.errors import ApiError
from app.shared import quietly
from app.trust import TrustError, calibration, canaries, checks, hardware, reference, reputation, set_state, verifier

from .queues import VERIFY_QUEUE, enqueue

log = logging.getLogger(__name__)

BENCHMARK_RETRY = timedelta(minutes=1)  # after a benchmark the host could not finish


def _checkable():
    """Hosts verification looks at: approved, healthy, serving a chat model, not references, not quarantined."""
    return (select(Host).where(Host.status == "approved", Host.healthy, Host.enabled, Host.api_base.is_not(None),
                               ~Host.reference, Host.trust_state.in_(("staged", "verified", "degraded")))
            .where(Host.id.in_(select(HostModel.host_id).where(HostModel.enabled))))


def _once(func, host_id: int, name: str) -> bool:
    """Queue ``func(host_id)`` unless one is queued already."""
    def put():
        try:
            enqueue(func, host_id, queue_name=VERIFY_QUEUE, job_id=f"{name}-{host_id}", unique=True, result_ttl=0,
                    failure_ttl=60, job_timeout=hardware.BENCHMARK_TIMEOUT + 60)
            return True
        except DuplicateJobError:
            return False
    return quietly(put, False, "queueing verification")


def schedule() -> dict[str, int]:
    """Queue the canaries and benchmarks that are due."""
    config, now = current_app.config, utcnow()
    queued = {"canaries": 0, "benchmarks": 0}
    for host in db.session.scalars(_checkable().order_by(Host.id)).all():
        model = verifier.chat_model(host)
        if model is None:
            if host.trust_state == "staged":  # the checks score generated tokens; embeddings are not checked yet
                set_state(host.id, "verified", "serves embeddings only: held to its health checks and reputation",
                          old=("staged",))
            continue
        latest = checks.latest_benchmark(host.id)
        stale = latest is None or latest.created_at < now - timedelta(hours=config["VERIFY_BENCHMARK_HOURS"])
        retry = latest is not None and not latest.passed and latest.created_at < now - BENCHMARK_RETRY
        if (host.trust_state == "staged" and (latest is None or retry)) or stale:
            queued["benchmarks"] += _once(run_benchmark, host.id, "benchmark")
        if checks.current_calibration(model.id) is None or reference.reference_for(model.id) is None:
            continue  # its checks could only be inconclusive (the Trust page says what is missing)
        if host.next_canary_at is None or host.next_canary_at <= now:
            mean = config["VERIFY_STAGED_CANARY_SECONDS" if host.trust_state == "staged" else "VERIFY_CANARY_SECONDS"]
            host.next_canary_at = now + verifier.next_gap(mean)
            db.session.commit()
            queued["canaries"] += _once(run_canary, host.id, "canary")
    db.session.commit()
    return queued


def run_canary(host_id: int) -> str:
    """Send the host one canary and check its answer; returns the outcome."""
    host = db.session.get(Host, host_id)
    if host is None or host.reference or host.trust_state == "quarantined" or not host.api_base:
        return "skipped"
    model = verifier.chat_model(host)
    if model is None:
        return "skipped"
    try:
        call = verifier.send(host, canaries.request(model.hf_id))
    except ApiError as error:  # the host failed as it would have for a client: health checks deal with that
        log.info("canary to host %s failed: %s", host_id, error.message)
        return "host failed"
    if call.sample is None:
        return "no tokens"  # the engine sent no token ids; the router metered the text instead
    row = checks.check(call.sample)
    return row.outcome if row is not None else "skipped"


def run_benchmark(host_id: int) -> str:
    row = hardware.benchmark(host_id)
    if row is None:
        return "skipped"
    if row.passed:
        checks.decide(host_id)  # a staged host may have been waiting for this
    return "passed" if row.passed else "failed"


def check_sample(sample: dict) -> str:
    row = checks.check(sample)
    return row.outcome if row is not None else "skipped"


def update_reputation() -> dict[str, int]:
    return reputation.update_states()


def calibrate(host_id: int, admin_id: int | None = None, count: int | None = None) -> str:
    admin = db.session.get(User, admin_id) if admin_id else None
    try:
        found = calibration.calibrate(host_id, admin=admin, count=count)
    except TrustError as error:
        log.warning("calibration against host %s failed: %s", host_id, error)
        return f"failed: {error}"
    return f"calibration {found.id}"


def check_now(host_id: int) -> None:
    """Bring the host's next canary forward (an admin's "check now")."""
    db.session.execute(update(Host).where(Host.id == host_id).values(next_canary_at=utcnow()))
    db.session.commit()
