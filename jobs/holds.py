"""The sweeper: holds whose request never finished (a router process died) go back to the client."""
from __future__ import annotations

import logging

from app import ledger

log = logging.getLogger(__name__)


def void_expired() -> int:
    """Void every expired open hold. Returns how many; running it twice voids nothing twice."""
    voided = ledger.void_expired_holds()
    if voided:
        log.info("voided %d expired holds", voided)
    return voided
