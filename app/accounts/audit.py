"""The append-only audit log: every admin action and key change adds one row."""
from __future__ import annotations

from flask import has_request_context, request

from ..extensions import db
from ..models import AuditEvent, User


def record(actor: User | None, action: str, target_type: str, target_id: object = None, **details) -> AuditEvent:
    """Add an audit row to the current transaction; it commits with the change it describes."""
    event = AuditEvent(
        actor_id=actor.id if actor is not None else None,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        details=details,
        ip_address=request.remote_addr if has_request_context() else None,
    )
    db.session.add(event)
    return event
