"""POST /stripe/webhook: signatures and timestamps, duplicates, order, async payments, refunds and disputes."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest
from sqlalchemy import func, select

from app.dev.stripe_standin import sign
from app.extensions import db
from app.models import Purchase, StripeEvent
from app.money.units import MICRO as USD

from ..support.concurrency import at_once
from ..support.stripe_helpers import OLD_WEBHOOK_SECRET, WEBHOOK_SECRET, available, check_ledger, owed, start


def post(live_server, body: bytes | str, headers: dict) -> tuple[int, dict]:
    body = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(f"{live_server}/stripe/webhook", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def nothing_stored() -> bool:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(StripeEvent)) == 0


@pytest.fixture
def held(standin):
    """The stand-in with automatic delivery off: the test delivers each event itself."""
    standin.autodeliver = False
    return standin


def paid_event(standin, user, dollars: int = 20) -> dict:
    session_id = start(user, dollars)
    return standin.pay(session_id)


def test_it_credits_a_paid_session_once(people, standin):
    session_id = start(people.alice, 20)
    standin.pay(session_id)
    assert available(people.alice) == 20 * USD
    assert standin.deliveries[-1][1] == 200
    purchase = db.session.scalar(select(Purchase))
    assert (purchase.status, purchase.payment_intent_id) == ("paid", standin.sessions[session_id]["payment_intent"])
    check_ledger()


def test_it_rejects_a_reserialised_body(people, held, live_server):
    event = paid_event(held, people.alice)
    payload = json.dumps(event)
    status, body = post(live_server, json.dumps(event, indent=2), {"Stripe-Signature": sign(payload, WEBHOOK_SECRET)})
    assert status == 400 and body["error"] == "no valid signature"
    assert available(people.alice) == 0 and nothing_stored()
    check_ledger()


@pytest.mark.parametrize("age, status", [(301, 400), (10, 200), (-3600, 400), (-10, 200)])
def test_it_accepts_only_fresh_timestamps_in_both_directions(people, held, age, status):
    event = paid_event(held, people.alice)
    assert held.deliver(event, timestamp=int(time.time()) - age) == status
    assert available(people.alice) == (20 * USD if status == 200 else 0)
    check_ledger()


def test_it_rejects_a_missing_header_or_a_wrong_secret_and_changes_nothing(people, held, live_server):
    event = paid_event(held, people.alice)
    payload = json.dumps(event)
    assert post(live_server, payload, {})[0] == 400
    assert post(live_server, payload, {"Stripe-Signature": "garbage"})[0] == 400
    assert held.deliver(event, secret="whsec_someone_else") == 400
    assert available(people.alice) == 0 and nothing_stored()
    check_ledger()


def test_it_accepts_the_previous_secret_while_it_is_rotated_out(app, people, held, live_server):
    event = paid_event(held, people.alice)
    assert held.deliver(event, secret=OLD_WEBHOOK_SECRET) == 400
    app.config["STRIPE_WEBHOOK_SECRET_PREVIOUS"] = OLD_WEBHOOK_SECRET
    payload = json.dumps(event)
    # During a rotation Stripe signs with both secrets: any matching v1 entry will do.
    t = int(time.time())
    header = sign(payload, "whsec_wrong", t) + "," + sign(payload, OLD_WEBHOOK_SECRET, t).split(",")[1]
    assert post(live_server, payload, {"Stripe-Signature": header})[0] == 200
    assert available(people.alice) == 20 * USD
    check_ledger()


def test_it_credits_once_when_the_same_event_arrives_twice_at_once(people, held):
    event = paid_event(held, people.alice)
    at_once(held.deliver, [event, event])
    assert sorted(status for _, status in held.deliveries) == [200, 200]
    assert available(people.alice) == 20 * USD
    check_ledger()


def test_it_credits_once_when_completion_and_a_late_async_success_race(people, held):
    session_id = start(people.alice, 5)
    completed = held.pay(session_id, asynchronous=True)
    succeeded = held.settle(session_id)
    at_once(held.deliver, [completed, succeeded, succeeded])
    assert available(people.alice) == 5 * USD
    check_ledger()


def test_it_waits_for_the_async_payment_before_crediting(people, held):
    session_id = start(people.alice, 50)
    assert held.deliver(held.pay(session_id, asynchronous=True)) == 200
    assert available(people.alice) == 0
    assert db.session.scalar(select(Purchase.status)) == "processing"
    db.session.rollback()
    assert held.deliver(held.settle(session_id)) == 200
    assert available(people.alice) == 50 * USD
    check_ledger()


def test_it_marks_a_failed_async_payment_and_credits_nothing(people, held):
    session_id = start(people.alice, 50)
    held.deliver(held.pay(session_id, asynchronous=True))
    held.deliver(held.settle(session_id, succeeded=False))
    db.session.rollback()
    assert db.session.scalar(select(Purchase.status)) == "failed"
    assert available(people.alice) == 0
    check_ledger()


@pytest.mark.parametrize("order", ["in order", "refund first", "refund first, all twice"])
def test_a_refund_before_its_payment_ends_at_the_same_balance(people, held, order):
    keep = held.pay(start(people.alice, 5))
    session_id = start(people.alice, 20)
    paid = held.pay(session_id)
    partial = held.refund(session_id, 500, send=False)
    rest = held.refund(session_id, send=False)
    events = {"in order": [keep, paid, partial, rest], "refund first": [rest, partial, keep, paid],
              "refund first, all twice": [rest, partial, rest, keep, paid, partial, paid, keep]}[order]
    for event in events:
        assert held.deliver(event) == 200
    assert available(people.alice) == 5 * USD and owed(people.alice) == 0
    check_ledger()


def test_a_dispute_after_spending_puts_the_shortfall_on_a_receivable(people, held):
    from app.money import ledger

    session_id = start(people.alice, 20)
    held.deliver(held.pay(session_id))
    ledger.post("spend", "usage", [(ledger.account_id("client", people.alice), -15 * USD),
                                   (ledger.account_id("platform_fees"), 15 * USD)])
    db.session.commit()
    dispute = held.dispute(session_id, send=False)
    held.deliver(dispute)
    held.deliver(dispute)
    assert available(people.alice) == 0 and owed(people.alice) == 15 * USD
    check_ledger()
    # The next purchase pays the debt first.
    held.deliver(held.pay(start(people.alice, 20)))
    assert available(people.alice) == 5 * USD and owed(people.alice) == 0
    check_ledger()


@pytest.mark.parametrize("order", ["in order", "won first", "won first, all twice"])
def test_a_won_dispute_gives_the_money_back_in_any_order(people, held, order):
    session_id = start(people.alice, 20)
    paid = held.pay(session_id)
    created = held.dispute(session_id, 1500, send=False)
    won = held.win_dispute(created["data"]["object"]["id"], send=False)
    events = {"in order": [paid, created, won], "won first": [won, created, paid],
              "won first, all twice": [won, paid, won, created, paid, created]}[order]
    for event in events:
        assert held.deliver(event) == 200
    assert available(people.alice) == 20 * USD and owed(people.alice) == 0
    db.session.rollback()
    assert db.session.scalar(select(Purchase.disputed)) == 0
    check_ledger()


def test_a_won_dispute_pays_the_debt_it_caused_first(people, held):
    from app.money import ledger

    session_id = start(people.alice, 20)
    held.deliver(held.pay(session_id))
    ledger.post("spend", "usage", [(ledger.account_id("client", people.alice), -15 * USD),
                                   (ledger.account_id("platform_fees"), 15 * USD)])
    db.session.commit()
    created = held.dispute(session_id, send=False)
    held.deliver(created)
    assert owed(people.alice) == 15 * USD
    won = held.win_dispute(created["data"]["object"]["id"], send=False)
    at_once(held.deliver, [won, won])
    assert available(people.alice) == 5 * USD and owed(people.alice) == 0
    check_ledger()


def test_it_ignores_events_it_does_not_handle_but_remembers_them(people, held):
    event = held.event("customer.created", {"id": "cus_test_1", "object": "customer"})
    assert held.deliver(event) == 200
    assert not nothing_stored()
    check_ledger()
