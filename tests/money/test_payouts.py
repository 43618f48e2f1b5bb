"""Host payouts through Stripe Connect, against the local Stripe stand-in."""
from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import select, text

from app.extensions import db
from app.models import Payout, PayoutAccount
from app.money import connect, ledger, payouts
from app.money.stripe import client as stripe_client
from app.money.units import MICRO as USD
from app.money.units import MICRO_PER_CENT as CENT
from jobs import payouts as payout_job

from ..support.concurrency import at_once
from ..support.stripe_helpers import check_ledger


def earn(owner, micro: int) -> None:
    """Earnings land on the owner's host account (as settlement would put them there)."""
    ledger.post(f"test-earnings:{uuid.uuid4()}", "usage",
                [(ledger.account_id("grants"), -micro), (ledger.account_id("host", owner), micro)])
    db.session.commit()


def onboarded(owner, standin, *, ready: bool = True) -> PayoutAccount:
    """An Express account for ``owner``, onboarded through the stand-in when ``ready``."""
    connect.onboarding_link(owner, refresh_url="http://app.test/r", return_url="http://app.test/done")
    account = connect.payout_account(owner)
    if ready:
        standin.onboard(account.stripe_account_id)
        connect.refresh_account(owner)
    return account


def host_available(owner) -> int:
    db.session.rollback()
    return ledger.account("host", owner).available


def all_payouts() -> list[Payout]:
    db.session.rollback()
    return db.session.scalars(select(Payout).order_by(Payout.id).execution_options(populate_existing=True)).all()


def due_now() -> None:
    """Let every waiting payout (a lease, a back-off) be tried again: the fake clock moves on."""
    db.session.execute(text("UPDATE payouts SET next_attempt_at = now() - interval '1 second'"))
    db.session.commit()


def test_it_pays_an_owner_whose_earnings_reached_the_threshold(people, standin):
    account = onboarded(people.bob, standin)
    earn(people.bob, 12 * USD + 34 * CENT + 5678)
    assert payout_job.pay_hosts() == {"paid": 1}
    [transfer] = standin.transfers.values()
    assert (transfer["amount"], transfer["currency"], transfer["destination"]) == (1234, "usd",
                                                                                     account.stripe_account_id)
    [payout] = all_payouts()
    assert (payout.status, payout.stripe_transfer_id, payout.amount) == ("paid", transfer["id"], 1234 * CENT)
    assert transfer["metadata"]["payout_id"] == str(payout.id)
    assert host_available(people.bob) == 5678  # less than a cent stays owed
    check_ledger()
    assert payout_job.pay_hosts() == {}
    assert len(standin.transfers) == 1


def test_it_pays_nothing_below_the_threshold_or_to_an_account_not_ready(people, standin):
    onboarded(people.bob, standin, ready=False)
    earn(people.bob, 50 * USD)
    assert payout_job.pay_hosts() == {}
    assert standin.transfers == {} and all_payouts() == []
    assert host_available(people.bob) == 50 * USD
    standin.onboard(connect.payout_account(people.bob).stripe_account_id)
    connect.refresh_account(people.bob)
    db.session.execute(text("UPDATE payout_accounts SET threshold = :t"), {"t": 60 * USD})
    db.session.commit()
    assert payout_job.pay_hosts() == {}
    check_ledger()


def test_it_pays_once_when_the_job_dies_between_the_transfer_and_the_database(people, standin, monkeypatch):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    record_paid = payouts.record_paid

    def crash(*args, **kwargs):
        raise SystemExit("worker killed")

    monkeypatch.setattr(payouts, "record_paid", crash)
    with pytest.raises(SystemExit):
        payout_job.pay_hosts()
    db.session.rollback()
    assert len(standin.transfers) == 1
    [payout] = all_payouts()
    assert payout.status == "pending" and host_available(people.bob) == 0
    check_ledger()

    monkeypatch.setattr(payouts, "record_paid", record_paid)
    assert payout_job.pay_hosts() == {}  # the dead run's lease still holds it
    due_now()
    assert payout_job.pay_hosts() == {"paid": 1}
    [transfer] = standin.transfers.values()
    [payout] = all_payouts()
    assert (payout.status, payout.stripe_transfer_id, payout.attempts) == ("paid", transfer["id"], 2)
    check_ledger()


def test_it_finds_the_transfer_by_metadata_once_stripe_forgot_the_key(people, standin, monkeypatch):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    monkeypatch.setattr(payouts, "record_paid", lambda *a, **k: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        payout_job.pay_hosts()
    monkeypatch.undo()
    db.session.rollback()
    standin.forget_keys()
    db.session.execute(text("UPDATE payouts SET created_at = now() - interval '2 days'"))
    db.session.commit()
    due_now()
    assert payout_job.pay_hosts() == {"paid": 1}
    assert len(standin.transfers) == 1
    assert all_payouts()[0].stripe_transfer_id == next(iter(standin.transfers))
    check_ledger()


def test_it_raises_an_alert_and_keeps_the_key_when_stripe_saw_it_with_another_amount(people, standin, caplog):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    payout = payouts.start(people.bob.id)
    key = payout.idempotency_key
    # The key already went to Stripe with other parameters (a bug, or a changed amount).
    client = stripe_client()
    client.v1.transfers.create(params={"amount": 999, "currency": "usd", "destination": payout.destination},
                               options={"idempotency_key": key})
    assert payout_job.pay_hosts() == {"needs_attention": 1}
    [payout] = all_payouts()
    assert (payout.status, payout.idempotency_key) == ("needs_attention", key)
    assert "idempotency" in payout.last_error
    assert any(r.levelname == "ERROR" and key in r.getMessage() for r in caplog.records)
    assert len(standin.transfers) == 1  # only the other request's
    assert host_available(people.bob) == 0  # held until a person looks: it may have been paid
    assert payout_job.pay_hosts() == {}
    assert len(all_payouts()) == 1
    check_ledger()


def test_it_keeps_the_earnings_owed_while_the_platform_balance_is_short(people, standin, app):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    standin.balance = 500
    assert payout_job.pay_hosts() == {"failed": 1}
    [failed] = all_payouts()
    assert failed.status == "failed" and "balance_insufficient" in failed.last_error
    assert host_available(people.bob) == 20 * USD and standin.transfers == {}
    check_ledger()
    assert payout_job.pay_hosts() == {}  # backing off
    standin.balance = 100_000
    due_now()
    assert payout_job.pay_hosts() == {"paid": 1}
    assert [p.status for p in all_payouts()] == ["failed", "paid"]
    assert host_available(people.bob) == 0 and len(standin.transfers) == 1
    check_ledger()


def test_it_stops_retrying_after_the_bound(people, standin, app):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    standin.balance = 0
    for _ in range(app.config["PAYOUT_MAX_ATTEMPTS"]):
        due_now()
        assert payout_job.pay_hosts() == {"failed": 1}
    due_now()
    assert payout_job.pay_hosts() == {}
    assert host_available(people.bob) == 20 * USD
    check_ledger()


def test_an_admin_lets_a_skipped_owner_be_paid_again(people, standin, app, auth, client):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    standin.balance = 0
    for _ in range(app.config["PAYOUT_MAX_ATTEMPTS"]):
        due_now()
        payout_job.pay_hosts()
    auth.login(people.carol)
    page = client.get("/admin/payouts").get_data(as_text=True)
    assert "Owners skipped after repeated failures" in page and people.bob.email in page
    assert "balance_insufficient" in page
    standin.balance = 100_000
    assert payout_job.pay_hosts() == {}  # still skipped: nobody has looked yet
    response = client.post(f"/admin/payouts/owners/{people.bob.id}/resume", data={"csrf_token": auth.token()})
    assert response.status_code == 302
    page = client.get("/admin/payouts").get_data(as_text=True)
    assert "will be tried again" in page and "times in a row." in page
    assert payout_job.pay_hosts() == {"paid": 1}
    assert host_available(people.bob) == 0 and len(standin.transfers) == 1
    assert client.post("/admin/payouts/owners/999999/resume", data={"csrf_token": auth.token()}).status_code == 404
    check_ledger()


def test_a_reversed_transfer_is_owed_to_the_host_again(people, standin, auth, client):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    assert payout_job.pay_hosts() == {"paid": 1}
    [transfer] = standin.transfers.values()
    standin.autodeliver = False
    standin.reverse_transfer(transfer["id"], 500)
    partial = standin.events[-1]
    standin.reverse_transfer(transfer["id"])
    rest = standin.events[-1]
    at_once(standin.deliver, [rest, partial, rest, partial])
    assert all(status == 200 for _, status in standin.deliveries[-4:])
    [payout] = all_payouts()
    assert (payout.status, payout.reversed) == ("paid", 20 * USD)
    assert host_available(people.bob) == 20 * USD
    check_ledger()
    auth.login(people.bob)
    page = client.get("/host").get_data(as_text=True)
    assert "Stripe reversed $20.00 of it" in page
    assert re.search(r"Paid out</dt><dd>\$0\.00", page) and re.search(r"Earned</dt><dd>\$20\.00", page)


def test_a_reversal_of_a_transfer_the_dead_job_never_recorded_still_counts(people, standin, monkeypatch):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)

    def die(payout, transfer_id):
        raise SystemExit("killed")

    monkeypatch.setattr(payouts, "record_paid", die)
    with pytest.raises(SystemExit):
        payout_job.pay_hosts()
    monkeypatch.undo()
    [transfer] = standin.transfers.values()
    assert [p.status for p in all_payouts()] == ["pending"]
    standin.reverse_transfer(transfer["id"], 700)  # delivered to the webhook at once
    [payout] = all_payouts()
    assert (payout.status, payout.stripe_transfer_id, payout.reversed) == ("paid", transfer["id"], 7 * USD)
    connect.set_threshold(people.bob, 5)
    due_now()
    assert payout_job.pay_hosts() == {"paid": 1}  # what came back is paid again, once
    assert len(standin.transfers) == 2 and host_available(people.bob) == 0
    check_ledger()


def test_a_host_sets_its_own_payout_threshold(people, standin, auth, client):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    auth.login(people.bob)
    for bad, message in (("abc", "whole number of dollars"), ("0", "from $1 to $100,000"),
                         ("100001", "from $1 to $100,000")):
        response = client.post("/host/payouts/threshold", data={"threshold": bad, "csrf_token": auth.token()})
        assert response.status_code == 400 and message in response.get_data(as_text=True)
    assert connect.payout_account(people.bob).threshold is None
    response = client.post("/host/payouts/threshold", data={"threshold": "$50", "csrf_token": auth.token()},
                           follow_redirects=True)
    page = response.get_data(as_text=True)
    assert "Payouts now start once $50 is available." in page
    assert "$30.00 more to reach the threshold" in page
    assert payout_job.pay_hosts() == {}
    client.post("/host/payouts/threshold", data={"threshold": "", "csrf_token": auth.token()})
    assert "$20.00 at the next payout run" in client.get("/host").get_data(as_text=True)
    assert payout_job.pay_hosts() == {"paid": 1}


def test_it_makes_one_transfer_when_two_runs_race(people, standin, app):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    results = []

    def run(_):
        with app.app_context():
            results.append(payout_job.pay_hosts())
            db.session.remove()

    at_once(run, range(4))
    assert len(standin.transfers) == 1
    assert [p.status for p in all_payouts()] == ["paid"]
    assert host_available(people.bob) == 0
    check_ledger()


def test_it_walks_a_host_through_onboarding_and_shows_the_state(people, auth, client, standin):
    auth.login(people.bob)
    assert "Not started" in client.get("/host").get_data(as_text=True)
    response = client.post("/host/payouts/setup", data={"csrf_token": auth.token("/host")})
    assert response.status_code == 303
    link = response.headers["Location"]
    [account] = standin.accounts.values()
    assert account["type"] == "express" and link.startswith("http://127.0.0.1:")
    assert "Details needed" in client.get("/host").get_data(as_text=True)
    # The host fills in Stripe's form, which sends them back to the return URL.
    token = link.rsplit("/", 1)[1]
    finish = standin.app.test_client().post(f"/connect/onboarding/{token}")
    assert finish.status_code == 303
    back = finish.headers["Location"]
    assert back.endswith("/host/payouts/return")
    page = client.get(re.sub(r"^https?://[^/]+", "", back))
    assert page.status_code == 200 and "Asking Stripe how your payout account stands" in page.get_data(as_text=True)
    # The page asks with a POST (htmx does it by itself on load).
    check = client.post("/host/payouts/check", data={"csrf_token": auth.token("/host")}, headers={"HX-Request": "true"})
    assert "Payouts are set up: Stripe can pay you." in check.get_data(as_text=True)
    html = client.get("/host").get_data(as_text=True)
    assert "Ready" in html
    assert connect.payout_account(people.bob).payouts_enabled


def test_an_expired_onboarding_link_asks_before_making_anything(people, auth, client, standin):
    auth.login(people.bob)
    page = client.get("/host/payouts/refresh")
    assert page.status_code == 200 and "Continue to Stripe" in page.get_data(as_text=True)
    assert standin.accounts == {} and connect.payout_account(people.bob) is None
    response = client.post("/host/payouts/setup", data={"csrf_token": auth.token("/host")})
    assert response.status_code == 303 and len(standin.accounts) == 1


def test_it_shows_failed_payouts_to_the_host_and_the_admin(people, auth, client, standin):
    onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    standin.balance = 0
    payout_job.pay_hosts()
    auth.login(people.bob)
    html = client.get("/host").get_data(as_text=True)
    assert "balance_insufficient" in html and "$20.00" in html
    auth.logout()
    auth.login(people.carol)
    html = client.get("/admin/payouts").get_data(as_text=True)
    assert "balance_insufficient" in html and "bob@example.com" in html
    auth.logout()
    auth.login(people.bob)
    assert client.get("/admin/payouts").status_code == 403


def test_it_keeps_the_account_state_from_connect_events(people, standin):
    account = onboarded(people.bob, standin, ready=False)
    standin.onboard(account.stripe_account_id)  # account.updated reaches the Connect endpoint
    db.session.rollback()
    assert connect.payout_account(people.bob).payouts_enabled
    [event] = [e for e in standin.events if e["type"] == "account.updated"]
    assert standin.deliver(event, url=standin.connect_webhook_url, secret=standin.connect_webhook_secret) == 200
    assert standin.deliver(event, url=standin.connect_webhook_url, secret="whsec_wrong") == 400
    assert standin.deliver(event, url=standin.webhook_url) == 200  # the payments endpoint ignores it


def test_it_tells_the_host_and_the_admin_when_the_bank_payout_failed(people, auth, client, standin):
    account = onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    assert payout_job.pay_hosts() == {"paid": 1}
    standin.bank_payout(account.stripe_account_id, 2000, failed=True)
    auth.login(people.bob)
    html = client.get("/host").get_data(as_text=True)
    assert "Stripe could not pay your bank" in html and "account_closed" in html
    auth.logout()
    auth.login(people.carol)
    assert "account_closed" in client.get("/admin/payouts").get_data(as_text=True)
    standin.bank_payout(account.stripe_account_id, 2000)
    db.session.rollback()
    assert connect.payout_account(people.bob).bank_payout_error is None
    assert [p.status for p in all_payouts()] == ["paid"]  # our transfer stands; no second one
    check_ledger()


def test_it_gives_the_earnings_back_when_stripe_cannot_pay_the_account(people, standin):
    account = onboarded(people.bob, standin)
    earn(people.bob, 20 * USD)
    standin.accounts[account.stripe_account_id]["capabilities"]["transfers"] = "inactive"  # Stripe disabled it
    assert payout_job.pay_hosts() == {"failed": 1}
    [payout] = all_payouts()
    assert "insufficient_capabilities_for_transfer" in payout.last_error
    assert host_available(people.bob) == 20 * USD and standin.transfers == {}
    check_ledger()
