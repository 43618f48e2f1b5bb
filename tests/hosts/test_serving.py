"""One serving rule: ``hosts.serving(host)`` says whether a host gets requests now and why not; the routing table
(SQL, for speed), the host dashboard, the host API and hostkit all give the same answer."""
import itertools
from datetime import datetime, timezone

from sqlalchemy import select

from app import hosts
from app.extensions import db
from app.models import Host
from app.proxy.gateway import gateway

from ..support import hostkit
from ..support.factories import make_host, refresh_routes, seed_catalog
from .test_host_registration import enrollment_key

MODEL = "gpushare/tiny-chat"
# Open all day three days from now: closed today, whatever the clock says.
CLOSED = [{"days": [(datetime.now(timezone.utc).weekday() + 3) % 7], "start": 0, "end": 24 * 60}]
# A schedule that was stored before it was validated: unreadable, so never inside.
UNREADABLE = [{"days": "mon", "start": "noon"}]


def test_the_routing_table_routes_exactly_the_hosts_that_serving_says_serve(people):
    """Every combination of the rule's inputs: the routing table's SQL and ``serving()`` agree on each host."""
    owner = people.bob
    combinations = itertools.product(["pending", "approved", "rejected", "suspended"], [True, False], [True, False],
                                     [None, CLOSED, UNREADABLE], [True, False], [True, False], [True, False])
    # Verification's inputs (trust state, reference) against a host that is otherwise serving, and one that is not.
    trusted = [(status, True, True, None, True, True, healthy, trust, reference)
               for status, healthy, trust, reference in itertools.product(
                   ["approved", "suspended"], [True, False], Host.TRUST_STATES, [False, True])]
    made = []
    for i, (status, enabled, available, windows, model_chosen, address, healthy, trust, reference) in enumerate(
            [(*combination, "verified", False) for combination in combinations] + trusted):
        host = make_host(owner, [MODEL], name=f"h{i}", status=status, enabled=enabled, healthy=healthy,
                         trust_state=trust, reference=reference)
        host.available, host.schedule, host.timezone = available, windows or [], "UTC"
        host.api_base = f"http://127.0.0.1:{9000 + i}" if address else None
        host.offers[0].enabled = model_chosen
        made.append(host.id)
    db.session.commit()
    refresh_routes()

    offer = gateway().routing.model(MODEL)
    routed = [route.host_id for route in gateway().routing.candidates(offer, 1)]
    answers = {host.id: hosts.serving(host) for host in db.session.scalars(select(Host).where(Host.id.in_(made)))}
    assert set(routed) == {host_id for host_id, answer in answers.items() if answer.ok}
    # Approved, enabled, switched on, no windows, a model, an address, healthy, not a reference: verified (twice)
    # and degraded, which comes last, as a fallback.
    assert len(routed) == 3 and answers[routed[-1]].code == "degraded"
    codes = {answer.code for answer in answers.values()}
    assert codes == {"serving", "degraded", *hosts.NOT_SERVING}


def test_the_first_reason_is_the_one_given(people):
    host = make_host(people.bob, [MODEL], status="suspended", enabled=False, healthy=False)
    assert hosts.serving(host) == hosts.Serving(False, "suspended", "an admin suspended it")
    host.status = "approved"
    assert hosts.serving(host).why == "disabled on the dashboard"
    host.enabled = True
    assert hosts.serving(host).code == "unhealthy"
    host.healthy = True
    assert hosts.serving(host).ok


def test_hostkit_tells_a_disabled_or_suspended_host_the_truth(client, auth, people, live_server, tmp_path):
    """``hostkit schedule show`` once said "Serving now." for a host inside its windows but disabled or suspended."""
    state = tmp_path / "hostkit"
    key = enrollment_key(client, auth, people.bob)
    assert hostkit("register", "--router", live_server, "--invite", key, "--name", "rig",
                   "--state-dir", str(state)).returncode == 0
    host = db.session.scalar(select(Host))
    admin = people.carol
    hosts.change_status(admin, host.id, "approve")
    seed_catalog()
    hosts.set_model(people.bob, host, MODEL, True)
    host.healthy, host.trust_state = True, "verified"
    db.session.commit()

    def shown(*command):
        done = hostkit(*command, "--state-dir", str(state))
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "Inside its windows now; serving." in shown("schedule", "show")
    assert "rig: approved, serving" in shown("status")

    hosts.set_enabled(people.bob, host, False)
    assert "Inside its windows now; not serving: disabled on the dashboard." in shown("schedule", "show")
    assert "rig: approved, not serving: disabled on the dashboard" in shown("status")

    hosts.set_enabled(people.bob, host, True)
    hosts.change_status(admin, host.id, "suspend")
    assert "Inside its windows now; not serving: an admin suspended it." in shown("schedule", "show")
    assert "rig: suspended, not serving: an admin suspended it" in shown("status")
