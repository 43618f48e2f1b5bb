"""The admin money page: the platform's position from the ledger, and reconciliation with the Stripe stand-in."""
from __future__ import annotations

import html
import re
import uuid

from sqlalchemy import text

from app.extensions import db
from app.money import ledger, reports
from app.money.stripe import client as stripe_client
from app.money.units import MICRO as USD
from jobs import payouts as payout_job

from ..support import factories
from ..support.stripe_helpers import check_ledger, start
from .test_payouts import onboarded

HX = {"HX-Request": "true"}


def serve(client, owner, cost: int, fee: int) -> None:
    """The client is charged for usage on the owner's host, as settlement posts it (client -> host + fee)."""
    ledger.post(f"usage:test-{uuid.uuid4()}", "usage",
                [(ledger.account_id("client", client), -cost), (ledger.account_id("host", owner), cost - fee),
                 (ledger.account_id("platform_fees"), fee)])
    db.session.commit()


def a_month_of_business(people, standin) -> dict:
    """alice buys $20 through Checkout (the webhook credits it), spends $15 on bob's host ($3 of it the platform's
    fee), and the payout job pays bob his $12 by a Stripe transfer."""
    account = onboarded(people.bob, standin)
    session_id = start(people.alice, 20)
    standin.pay(session_id)
    serve(people.alice, people.bob, 15 * USD, 3 * USD)
    assert payout_job.pay_hosts() == {"paid": 1}
    [transfer] = standin.transfers.values()
    return {"session": session_id, "transfer": transfer["id"], "account": account.stripe_account_id}


def reconcile(auth, client) -> str:
    token = auth.token("/admin/money")
    response = client.post("/admin/money/reconcile", headers={**HX, "X-CSRFToken": token})
    assert response.status_code == 200
    return html.unescape(response.get_data(as_text=True))


def words(markup: str) -> str:
    """The text of some HTML, tags gone and spaces squeezed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", markup)).strip()


def mismatch_rows(page: str) -> list[str]:
    table = re.search(r'<table id="mismatches">.*?<tbody>(.*?)</tbody>', page, re.DOTALL)
    assert table, "no mismatch table"
    return [words(row) for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.DOTALL)]


def test_it_shows_fees_the_position_and_paid_payouts_and_agrees_with_stripe(people, auth, client, standin):
    business = a_month_of_business(people, standin)
    auth.login(people.carol)
    page = client.get("/admin/money").get_data(as_text=True)
    assert 'href="/admin/money"' in page  # in the admin navigation
    fees = re.search(r'<dl class="facts" id="fees">(.*?)</dl>', page, re.DOTALL).group(1)
    assert re.findall(r"<dd>(.*?)</dd>", fees) == ["$3.00", "$3.00", "$3.00"]
    position = words(re.search(r'id="position">(.*?)</dl>', page, re.DOTALL).group(1))
    for figure in ("Fees earned $3.00", "Money in through Stripe $20.00", "Money out through Stripe $12.00",
                   "Net at Stripe $8.00", "Payouts in flight $0.00", "Client balances $5.00",
                   "Host earnings owed $0.00"):
        assert figure in position
    paid = re.search(r'<table id="paid-payouts">(.*?)</table>', page, re.DOTALL).group(1)
    assert "bob@example.com" in paid and "$12.00" in paid and business["transfer"] in paid
    assert 'href="/admin/payouts"' in page
    assert "Reconciling with Stripe…" in page and 'hx-post="/admin/money/reconcile"' in page

    result = reconcile(auth, client)
    assert "Ledger and Stripe agree: 1 session, 1 transfer checked." in words(result)
    assert 'id="mismatches"' not in result
    check_ledger()


def test_it_lists_each_disagreement_with_stripe_in_words(people, auth, client, standin):
    business = a_month_of_business(people, standin)
    standin.autodeliver = False  # from here on Stripe's webhooks never arrive
    lost = start(people.alice, 5)
    standin.pay(lost)  # paid at Stripe, never credited
    stray = stripe_client().v1.transfers.create(params={
        "amount": 700, "currency": "usd", "destination": business["account"]})  # made at Stripe, no payout
    db.session.execute(text("UPDATE purchases SET amount = :amount WHERE session_id = :id"),
                       {"amount": 25 * USD, "id": business["session"]})  # our row says $25, Stripe took $20
    db.session.commit()
    standin.refund(business["session"], 300, send=False)  # refunded at Stripe, the event lost
    standin.reverse_transfer(business["transfer"], 200)  # reversed at Stripe, the event lost
    # Another owner's payout is paid here, but its transfer is gone from Stripe.
    onboarded(people.mallory, standin)
    factories.give_credits(people.alice, "10")
    serve(people.alice, people.mallory, 12 * USD + 50 * 10_000, 0)
    assert payout_job.pay_hosts() == {"paid": 1}
    [missing] = [t for t in standin.transfers if t not in (business["transfer"], stray.id)]
    del standin.transfers[missing]

    auth.login(people.carol)
    rows = mismatch_rows(reconcile(auth, client))
    expected = [
        (lost, ("Stripe was paid $5.00 for this Checkout Session but no credits were given here (the purchase is "
               "open): its webhook never arrived or failed.")),
        (stray.id, f"Stripe transferred $7.00 to {business['account']} with no payout here"),
        (business["session"], "Stripe was paid $20.00 but $25.00 was credited here."),
        (business["session"], "Stripe refunded $3.00 but the ledger took back $0.00."),
        (business["transfer"], "Stripe reversed $2.00 of its transfer but the ledger took back $0.00."),
        (missing, "to mallory@example.com is paid here ($12.50), but Stripe has no such transfer."),
    ]
    for ref, words in expected:
        assert any(ref in row and words in row for row in rows), (words, rows)
    assert len(rows) == len(expected)
    check_ledger()  # the ledger's own rules hold: these are disagreements with Stripe, not a broken ledger


def test_it_reports_a_ledger_whose_payouts_in_flight_do_not_add_up(people, auth, client, standin):
    a_month_of_business(people, standin)
    # A payout row that no ledger posting moved aside (as if written by hand).
    db.session.execute(text("INSERT INTO payouts (user_id, amount, destination, idempotency_key) "
                            "VALUES (:user, 1000000, 'acct_x', 'by-hand')"), {"user": people.bob.id})
    db.session.commit()
    auth.login(people.carol)
    rows = mismatch_rows(reconcile(auth, client))
    assert rows == [("Ledger payouts_pending The payouts-in-flight account holds $0.00 but the open payouts add up "
                    "to $1.00.")]


def test_it_is_for_admins_only(people, auth, client):
    assert client.get("/admin/money").status_code == 302  # to the login page
    auth.login(people.alice)
    assert client.get("/admin/money").status_code == 403
    token = auth.token("/keys")
    assert client.post("/admin/money/reconcile", headers={**HX, "X-CSRFToken": token}).status_code == 403
    auth.logout()
    auth.login(people.bob)
    assert client.get("/admin/money").status_code == 403


def test_it_says_reconciliation_needs_stripe_when_no_key_is_set(people, auth, client, app):
    assert not app.config["STRIPE_SECRET_KEY"]
    auth.login(people.carol)
    page = client.get("/admin/money").get_data(as_text=True)
    assert "Reconciliation needs Stripe configured" in page and "STRIPE_SECRET_KEY" in page
    result = words(reconcile(auth, client))
    assert "Reconciliation with Stripe needs Stripe configured" in result
    assert "The ledger's own rules hold." in result and "agree" not in result


def test_it_says_so_when_stripe_cannot_be_reached(people, auth, client, app, monkeypatch):
    from hostkit.local.engine import free_port

    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", "sk_test_nobody_listens")
    monkeypatch.setitem(app.config, "STRIPE_API_BASE", f"http://127.0.0.1:{free_port()}")
    auth.login(people.carol)
    result = reconcile(auth, client)
    assert "Stripe could not be reached" in result and "APIConnectionError" in result
    assert "agree" not in result


def test_it_says_when_the_listing_bound_was_reached(people, auth, client, standin, monkeypatch):
    older, newer = start(people.alice, 5), start(people.alice, 6)
    standin.pay(older)
    standin.pay(newer)
    monkeypatch.setattr(reports, "LIST_BOUND", 1)
    auth.login(people.carol)
    result = words(reconcile(auth, client))
    assert "Stripe holds more than 1 Checkout Sessions: only the newest 1 were compared" in result
    # The older purchase was not listed, but it is older than the newest session: not reported missing.
    assert "Ledger and Stripe agree: 1 session, 0 transfers checked." in result


def test_the_reconcile_button_swaps_in_a_partial_or_renders_the_page_without_htmx(people, auth, client, standin):
    auth.login(people.carol)
    token = auth.token("/admin/money")
    partial = client.post("/admin/money/reconcile", headers={**HX, "X-CSRFToken": token})
    body = partial.get_data(as_text=True)
    assert partial.status_code == 200 and body.lstrip().startswith('<section id="reconcile"')
    assert "<html" not in body and "agree: 0 sessions, 0 transfers checked" in body
    assert "HX-Request" in partial.headers["Vary"]
    full = client.post("/admin/money/reconcile", data={"csrf_token": token})
    page = full.get_data(as_text=True)
    assert full.status_code == 200 and "<html" in page and "Platform position" in page and "agree" in page
    assert client.post("/admin/money/reconcile", headers=HX).status_code == 400  # no CSRF token
