"""The money simulation's trust steps: hosts pass checks, are quarantined, released, or clawed back from."""
from __future__ import annotations

from app import trust
from app.extensions import db
from app.models import Host, VerificationCheck

from ..support.factories import refresh_routes


def hosts_in(state: str, world) -> list[int]:
    db.session.rollback()
    return [host_id for host_id in world.hosts
            if db.session.get(Host, host_id, populate_existing=True).trust_state == state]


def check_passed(world) -> str:
    """A host passes a verification check: what it serves from now on is what a claw-back would refund."""
    host_id = world.pick(hosts_in("verified", world))
    if host_id is None:
        return "no verified host to check"
    host = db.session.get(Host, host_id)
    db.session.add(VerificationCheck(host_id=host_id, model_id=host.offers[0].model_id, kind="canary",
                                     outcome="passed", test="greedy", statistic=0.0, threshold=0.01))
    db.session.commit()
    return f"host {host_id} passed a check"


def quarantine(world) -> str:
    host_id = world.pick(hosts_in("verified", world))
    if host_id is None:
        return "no verified host to quarantine"
    trust.quarantine(host_id, "failed its checks in the simulation")
    refresh_routes()
    return f"host {host_id} quarantined: its owner's payouts are held"


def claw_back(world) -> str:
    host_id = world.pick(hosts_in("quarantined", world))
    if host_id is None:
        return "no quarantined host to claw back from"
    done = trust.claw_back(world.admin, host_id)
    return f"clawed back {done.refunded} from host {host_id} ({done.requests} requests, {done.owed_by_owner} owed)"


def release(world) -> str:
    host_id = world.pick(hosts_in("quarantined", world))
    if host_id is None:
        return "no quarantined host to release"
    trust.release(world.admin, host_id)
    refresh_routes()
    return f"host {host_id} released"




def release_all(world) -> None:
    """Every quarantine decided, before the final accounting: the hosts are released."""
    for host_id in hosts_in("quarantined", world):
        trust.release(world.admin, host_id)
