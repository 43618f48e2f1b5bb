"""Money follows trust: a quarantined host's earnings are held; an admin releases them or claws them back, refunding
the clients who paid for its tokens since its last passed check. Every path keeps the ledger's invariants, once,
whatever runs twice, races or dies."""
from __future__ import annotations

import pytest
from sqlalchemy import select, text

from app import trust
from app.catalog import usd
from app.dev.demo import TINY_TEST_MODEL
from app.extensions import db
from app.models import AuditEvent, CatalogModel, LedgerTransfer, UsageRecord, VerificationCheck
from app.money import ledger
from app.money.units import MICRO as USD
from jobs import payouts as payout_job

from ..support.concurrency import at_once
from ..support.factories import give_credits, make_host, make_key, refresh_routes
from ..support.fakehost import FakeHost
from ..support.stripe_helpers import check_ledger
from .test_payouts import onboarded


@pytest.fixture
def engine():
    with FakeHost() as host:
        yield host


@pytest.fixture
def served(people, engine, client):
    """bob's host served alice six requests; it passed a check after the second. Returns (host, alice's key)."""
    host = make_host(people.bob, [TINY_TEST_MODEL], api_base=engine.api_base)
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == TINY_TEST_MODEL))
    model.floor_input_price = model.floor_output_price = 0
    model.reference_input_price = model.reference_output_price = usd("250000")
    model.ceiling_input_price = model.ceiling_output_price = usd("200000")
    model.input_price, model.output_price = usd("5000"), usd("100000")  # a cent an output token
    db.session.commit()
    refresh_routes()
    give_credits(people.alice, "20")
    _, secret = make_key(people.alice)
    for i in range(6):
        response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                               json={"model": TINY_TEST_MODEL, "max_tokens": 10,
                                     "messages": [{"role": "user", "content": f"request {i}"}]})
        assert response.status_code == 200
        if i == 1:
            db.session.add(VerificationCheck(host_id=host.id, model_id=model.id, kind="canary", outcome="passed",
                                             test="greedy", statistic=0.0, threshold=0.01))
            db.session.commit()
    records = db.session.scalars(select(UsageRecord).order_by(UsageRecord.created_at)).all()
    passed_at = db.session.scalar(select(VerificationCheck.created_at))
    assert len(records) == 6 and sum(r.created_at > passed_at for r in records) == 4
    trust.quarantine(host.id, "failed its checks")
    return host


def balances(people) -> dict:
    db.session.rollback()
    return {"alice": ledger.account("client", people.alice).balance, "bob": ledger.account("host", people.bob).balance,
            "fees": ledger.account("platform_fees").balance, "bob owes": ledger.owed(people.bob)}


def refunded_costs(host) -> int:
    passed_at = db.session.scalar(select(VerificationCheck.created_at))
    return sum(r.cost for r in db.session.scalars(select(UsageRecord).where(UsageRecord.host_id == host.id,
                                                                            UsageRecord.created_at > passed_at)))


def test_a_claw_back_refunds_what_clients_paid_since_the_last_passed_check(people, served):
    before = balances(people)
    done = trust.claw_back(people.carol, served.id)
    after = balances(people)
    assert done.requests == 4 and done.refunded == refunded_costs(served) > 0
    assert after["alice"] - before["alice"] == done.refunded
    assert before["bob"] - after["bob"] == done.from_host
    assert before["fees"] - after["fees"] == done.refunded - done.from_host
    assert after["bob owes"] == 0
    check_ledger()
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "host.claw_back"))
    assert event.actor_id == people.carol.id and event.details["requests"] == 4
    # The host stays quarantined; a second claw-back finds nothing left to reverse.
    assert db.session.get(type(served), served.id, populate_existing=True).trust_state == "quarantined"
    assert trust.claw_back(people.carol, served.id).requests == 0
    assert balances(people) == after


def test_two_admins_clawing_back_at_once_refund_once(app, people, served):
    def claw(admin_id):
        with app.app_context():
            from app.models import User

            trust.claw_back(db.session.get(User, admin_id), served.id)
            db.session.remove()

    before = balances(people)
    at_once(claw, [people.carol.id, people.carol.id, people.carol.id])
    assert balances(people)["alice"] - before["alice"] == refunded_costs(served)
    assert db.session.scalar(select(db.func.count()).select_from(LedgerTransfer)
                             .where(LedgerTransfer.kind == "clawback")) == 4
    check_ledger()


def test_a_claw_back_that_dies_half_way_leaves_nothing_and_can_run_again(people, served, monkeypatch):
    before = balances(people)
    real_post = ledger.post
    posted = []

    def post_then_die(*args, **kwargs):
        if len(posted) == 2:
            raise SystemExit("the worker was killed")
        posted.append(args[0])
        return real_post(*args, **kwargs)

    monkeypatch.setattr(ledger, "post", post_then_die)
    with pytest.raises(SystemExit):
        trust.claw_back(people.carol, served.id)
    db.session.rollback()
    assert balances(people) == before  # one transaction: all the requests or none
    check_ledger()
    monkeypatch.setattr(ledger, "post", real_post)
    assert trust.claw_back(people.carol, served.id).requests == 4
    check_ledger()


def test_a_claw_back_the_database_interrupts_changes_nothing(people, served):
    """PostgreSQL ends the claw-back's session mid-way (as a restart would): the refund is all or nothing."""
    before = balances(people)
    killer = db.engine.connect()
    real_post = ledger.post

    def post_then_lose_the_connection(*args, **kwargs):
        found = real_post(*args, **kwargs)
        pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return found

    try:
        ledger.post = post_then_lose_the_connection
        with pytest.raises(Exception):
            trust.claw_back(people.carol, served.id)
    finally:
        ledger.post = real_post
        killer.close()
    db.session.rollback()  # the broken connection is discarded; the next transaction gets another
    assert balances(people) == before
    assert trust.claw_back(people.carol, served.id).requests == 4
    check_ledger()


def test_what_the_owner_was_already_paid_is_owed_back(people, served, standin):
    """The owner was paid out before the quarantine: the refund still reaches the client, and the owner owes it."""
    onboarded(people.bob, standin)
    served.trust_state = "verified"  # paid while it was still trusted
    db.session.commit()
    db.session.execute(text("UPDATE payout_accounts SET threshold = 1"))
    db.session.commit()
    assert payout_job.pay_hosts() == {"paid": 1}
    trust.quarantine(served.id, "failed its checks")
    before = balances(people)
    done = trust.claw_back(people.carol, served.id)
    after = balances(people)
    assert after["alice"] - before["alice"] == done.refunded
    assert done.owed_by_owner > 0 and after["bob owes"] == done.owed_by_owner
    assert after["bob"] >= 0
    check_ledger()


def test_a_quarantined_hosts_owner_is_not_paid_until_an_admin_releases_it(people, served, standin, auth, client):
    onboarded(people.bob, standin)
    db.session.execute(text("UPDATE payout_accounts SET threshold = 1"))
    db.session.commit()
    assert ledger.account("host", people.bob).available > 0
    assert payout_job.pay_hosts() == {}
    auth.login(people.bob)
    assert "held: a machine of yours is quarantined" in client.get("/host").get_data(as_text=True)
    trust.release(people.carol, served.id)
    assert payout_job.pay_hosts() == {"paid": 1}
    check_ledger()


def test_a_host_that_never_passed_a_check_has_everything_it_served_refunded(people, served):
    db.session.execute(text("DELETE FROM verification_checks"))
    db.session.commit()
    assert trust.last_passed_at(served.id) is None
    assert trust.claw_back(people.carol, served.id).requests == 6
    check_ledger()


def test_a_refund_pays_off_what_the_client_owes_first(people, served):
    """A client who owes the platform (a dispute outran its balance) gets its debt paid before its balance grows."""
    ledger.post("test-debt", "dispute", [(ledger.account_id("stripe"), 3 * USD),
                                         (ledger.account_id("receivable", people.alice), -3 * USD)])
    db.session.commit()
    done = trust.claw_back(people.carol, served.id)
    assert ledger.owed(people.alice) == max(3 * USD - done.refunded, 0)
    check_ledger()
