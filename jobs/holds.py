"""The sweeper: holds whose request will never finish go back to the client, or are settled.

Two kinds: requests whose router process died on this machine, or whose
settlement waited for the database (the request journal, settled from what
the client was sent), and holds past their request's deadline with nothing
to settle them (a machine lost with its journal), which are voided.
"""
from __future__ import annotations

import logging

from app.money import ledger
from app.proxy.gateway import gateway

log = logging.getLogger(__name__)


def void_expired() -> dict[str, int]:
    """Settle the journal, then void every expired open hold. Returns how many of each; running it twice
    changes nothing twice."""
    settled = gateway().drain()
    voided = ledger.void_expired_holds()
    if settled or voided:
        log.info("settled %d requests from the journal, voided %d expired holds", settled, voided)
    return {"settled": settled, "voided": voided}
