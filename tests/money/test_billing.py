"""The billing page: buying credits through the Stripe stand-in, receipts, warnings, and 402 while a client owes."""
from __future__ import annotations

import openai
import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Purchase
from app.money import purchases
from app.money.units import MICRO as USD

from ..proxy.test_chat_proxy import MODEL, price
from ..support import factories
from ..support.fakehost import FakeHost
from ..support.stripe_helpers import available, check_ledger, owed, start


def test_it_says_how_to_enable_payments_when_stripe_is_not_configured(app, people, auth, client):
    assert not app.config["STRIPE_SECRET_KEY"]
    auth.login(people.alice)
    html = client.get("/billing").get_data(as_text=True)
    assert "Payments are not enabled" in html and "STRIPE_SECRET_KEY" in html and "admin can grant" in html
    response = client.post("/billing/checkout", data={"dollars": "20", "csrf_token": auth.token("/billing")})
    assert response.status_code == 400 and db.session.scalar(select(Purchase)) is None


def test_it_is_for_clients_only(people, auth, client):
    auth.login(people.bob)
    assert client.get("/billing").status_code == 403


def test_it_starts_a_checkout_session_and_sends_the_client_to_it(people, auth, client, standin):
    auth.login(people.alice)
    response = client.post("/billing/checkout", data={"dollars": "20", "csrf_token": auth.token("/billing")})
    assert response.status_code == 303
    [session] = standin.sessions.values()
    assert response.headers["Location"] == session["url"]
    assert (session["amount_total"], session["currency"], session["mode"]) == (2000, "usd", "payment")
    assert session["client_reference_id"] == str(people.alice.id)
    assert session["success_url"].endswith(f"/billing/success?session_id={session['id']}")
    purchase = db.session.scalar(select(Purchase))
    assert (purchase.session_id, purchase.amount, purchase.status) == (session["id"], 20 * USD, "open")
    # The redirect back credits nothing: only the webhook does.
    page = client.get(f"/billing/success?session_id={session['id']}")
    assert page.status_code == 200 and "Credits appear when Stripe confirms" in page.get_data(as_text=True)
    assert available(people.alice) == 0


@pytest.mark.parametrize("dollars", ["4", "1001", "-5", "ten"])
def test_it_refuses_amounts_outside_the_limits(people, auth, client, standin, dollars):
    auth.login(people.alice)
    response = client.post("/billing/checkout", data={"dollars": dollars, "csrf_token": auth.token("/billing")})
    assert response.status_code == 400 and standin.sessions == {}


def test_it_polls_the_purchase_until_stripe_decides(people, auth, client, standin):
    auth.login(people.alice)
    session_id = start(people.alice, 5)
    purchase = purchases.get_purchase(people.alice, session_id=session_id)
    url = f"/billing/purchases/{purchase.id}"
    assert client.get(url, headers={"HX-Request": "true"}).status_code == 200
    standin.pay(session_id)
    done = client.get(url, headers={"HX-Request": "true"})
    assert done.status_code == 286 and "Stripe confirmed" in done.get_data(as_text=True)
    receipt = client.get(url).get_data(as_text=True)
    assert session_id in receipt and standin.sessions[session_id]["payment_intent"] in receipt


def test_it_shows_no_one_elses_purchase(people, auth, client, standin):
    session_id = start(people.alice, 5)
    purchase = purchases.get_purchase(people.alice, session_id=session_id)
    auth.login(people.mallory)
    assert client.get(f"/billing/purchases/{purchase.id}").status_code == 404
    assert client.get(f"/billing/success?session_id={session_id}").status_code == 404


def test_it_warns_when_the_balance_is_low(people, auth, client, standin):
    auth.login(people.alice)
    assert "balance is low" in client.get("/billing").get_data(as_text=True)
    factories.give_credits(people.alice, "10")
    assert "balance is low" not in client.get("/billing").get_data(as_text=True)


def test_a_client_owing_after_a_dispute_gets_402_until_it_pays(people, auth, client, standin, sdk):
    standin.autodeliver = False
    session_id = start(people.alice, 5)
    standin.deliver(standin.pay(session_id))
    _, secret = factories.make_key(people.alice)
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10)
    with FakeHost() as host:
        factories.make_host(people.bob, [MODEL], api_base=host.api_base)
        price("100")
        sdk(secret).chat.completions.create(**ask)
        standin.deliver(standin.dispute(session_id, send=False))
        assert owed(people.alice) > 0 and available(people.alice) == 0
        check_ledger()
        factories.give_credits(people.alice, "0.0001")  # less than the debt: still owing
        with pytest.raises(openai.APIStatusError) as error:
            sdk(secret).chat.completions.create(**ask)
        assert error.value.status_code == 402
        assert error.value.body["code"] == "payment_owed" and "owes money" in error.value.body["message"]
        auth.login(people.alice)
        assert "you owe" in client.get("/billing").get_data(as_text=True)
        standin.deliver(standin.pay(start(people.alice, 5)))  # a new purchase pays the debt first
        assert owed(people.alice) == 0 and available(people.alice) > 0
        sdk(secret).chat.completions.create(**ask)
    check_ledger()


def test_a_client_buys_credits_through_the_stand_in_in_a_browser(people, page, standin):
    from playwright.sync_api import expect

    page.goto("/login?next=/billing")
    page.fill("input[name=email]", people.alice.email)
    page.fill("input[name=password]", factories.PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url("**/billing")
    page.get_by_role("button", name="Buy $20").click()
    expect(page.locator("#amount")).to_have_text("$20.00 USD")  # the stand-in's hosted checkout page
    page.get_by_role("button", name="Pay with card 4242 4242 4242 4242").click()
    page.wait_for_url("**/billing/success?session_id=*")
    expect(page.locator("#purchase-status")).to_contain_text("Stripe confirmed the payment")
    page.goto("/billing")
    expect(page.locator("#available")).to_have_text("$20.00")
    expect(page.locator("table")).to_contain_text("paid")
    assert [status for _, status in standin.deliveries] == [200]
    check_ledger()


def test_a_declined_card_or_a_cancel_credits_nothing(people, page, standin):
    from playwright.sync_api import expect

    page.goto("/login?next=/billing")
    page.fill("input[name=email]", people.alice.email)
    page.fill("input[name=password]", factories.PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url("**/billing")
    page.fill("#custom-amount input[name=dollars]", "7")
    page.get_by_role("button", name="Buy", exact=True).click()
    expect(page.locator("#amount")).to_have_text("$7.00 USD")
    page.get_by_role("button", name="Pay with a card that is declined").click()
    expect(page.get_by_role("alert")).to_contain_text("declined")
    page.get_by_role("link", name="Cancel and go back").click()
    page.wait_for_url("**/billing?cancelled=1")
    expect(page.locator(".flash.info")).to_contain_text("nothing was charged")
    assert standin.deliveries == [] and available(people.alice) == 0


def test_the_stand_in_runs_as_the_process_make_run_starts(tmp_path):
    """``make run`` starts ``python -m app.dev.stripe_standin``; the stripe library talks to it like to Stripe."""
    import subprocess
    import sys
    import time
    import urllib.request

    import stripe

    from app import ROOT
    from hostkit.local.engine import free_port

    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "STRIPE_STANDIN_API_KEY": "sk_test_child",
           "STRIPE_STANDIN_WEBHOOK_SECRET": "whsec_x"}
    command = [sys.executable, "-m", "app.dev.stripe_standin", "--port", str(port), "--webhook-url",
               "http://127.0.0.1:9/stripe/webhook", "--state", str(tmp_path / "standin.json")]
    child = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stripe_client = stripe.StripeClient("sk_test_child", base_addresses={"api": f"http://127.0.0.1:{port}"})
        for _ in range(100):
            try:
                session = stripe_client.v1.checkout.sessions.create(params={
                    "mode": "payment", "success_url": "http://app.test/ok", "cancel_url": "http://app.test/no",
                    "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 700,
                                                                  "product_data": {"name": "credits"}}}]})
                break
            except stripe.APIConnectionError:
                time.sleep(0.1)
        assert stripe_client.v1.checkout.sessions.retrieve(session.id).amount_total == 700
        with urllib.request.urlopen(session.url, timeout=5) as page:
            assert "$7.00 USD" in page.read().decode()
        with pytest.raises(stripe.AuthenticationError):
            stripe.StripeClient("sk_test_wrong", base_addresses={"api": f"http://127.0.0.1:{port}"},
                                max_network_retries=0).v1.checkout.sessions.retrieve(session.id)
    finally:
        child.terminate()
        child.wait(timeout=10)
    # Restarted on its state file, it still knows the session (make run keeps one across runs).
    child = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                assert stripe_client.v1.checkout.sessions.retrieve(session.id).amount_total == 700
                break
            except stripe.APIConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("the restarted stand-in did not answer")
    finally:
        child.terminate()
        child.wait(timeout=10)
