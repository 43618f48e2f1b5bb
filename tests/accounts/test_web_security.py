"""Web accounts as a security reviewer expects (OWASP ASVS level 2): throttled logins, sessions that end on the
server, passwords that are hard to guess, a Content-Security-Policy without inline script, nothing secret in a
cache, and no GET that changes anything."""
from __future__ import annotations

import re
import time

import pytest
from flask import url_for
from sqlalchemy import select, text

from app import accounts
from app.extensions import db
from app.models import Purchase, WebSession

from ..conftest import csrf_token
from ..support.factories import PASSWORD, give_credits, make_host, make_key, make_user

MODEL = "gpushare/tiny-chat"


def login(client, email: str, password: str = PASSWORD, address: str = "198.51.100.7"):
    """Log in through the form, from ``address`` (where the client's later requests come from too)."""
    client.environ_base["REMOTE_ADDR"] = address
    token = csrf_token(client, "/login")
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


# Passwords ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("password, says", [
    ("1234567890", "at least 12"),
    ("password123", "at least 12"),
    ("password1234", "harder to guess: This is a very common password"),
    ("123456789012", "harder to guess"),
    ("qwertyuiopas", "harder to guess"),
    ("aaaaaaaaaaaaaaaa", "harder to guess"),
    ("newperson@example.com", "harder to guess"),
])
def test_a_short_common_or_guessable_password_is_refused(client, ctx, password, says):
    response = client.post("/signup", data={"email": "newperson@example.com", "password": password,
                                            "confirm": password, "csrf_token": csrf_token(client, "/signup")})
    assert response.status_code == 400 and says in response.get_data(as_text=True)
    assert accounts.find_user("newperson@example.com") is None


def test_a_long_uncommon_password_is_accepted(client, ctx):
    response = client.post("/signup", data={"email": "newperson@example.com", "password": "plum orbit caravan 7",
                                            "confirm": "plum orbit caravan 7",
                                            "csrf_token": csrf_token(client, "/signup")})
    assert response.status_code == 302 and accounts.find_user("newperson@example.com")


# Login throttling -----------------------------------------------------------------------------------------------

def test_wrong_passwords_for_one_account_are_throttled_then_the_right_one_works_after_the_window(app, client,
                                                                                                 people):
    answers = [login(client, people.alice.email, "not the password, no").status_code for _ in range(5)]
    assert answers == [400] * 5
    refused = login(client, people.alice.email)  # the right password, inside the window
    page = refused.get_data(as_text=True)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 900
    assert "Too many failed logins for this account or from this address. Try again in 15 minutes." in page
    # Another account, from another address, is not affected.
    assert login(client, people.mallory.email, address="203.0.113.9").status_code == 302
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    # After the window, the right password works (the window is made short here).
    app.extensions["redis"].expire(f"throttle:login:account:{_account_hash(people.alice.email)}", 1)
    time.sleep(1.5)
    assert login(client, people.alice.email, address="192.0.2.44").status_code == 302


def test_wrong_passwords_across_accounts_from_one_address_are_throttled(app, client, ctx, monkeypatch):
    monkeypatch.setitem(app.config, "LOGIN_MAX_FAILURES_PER_ADDRESS", 8)
    users = [make_user(f"person{i}@example.com") for i in range(4)]
    answers = [login(client, user.email, "not the password, no", address="192.0.2.1").status_code
               for user in users for _ in range(2)]
    assert answers == [400] * 8  # two tries for each account: none of them is locked
    assert login(client, users[0].email, address="192.0.2.1").status_code == 429
    assert login(client, users[0].email, address="192.0.2.2").status_code == 302


def _account_hash(email: str) -> str:
    import hashlib

    return hashlib.sha256(email.encode()).hexdigest()


# Sessions -------------------------------------------------------------------------------------------------------

def cookie_of(client) -> str:
    return client.get_cookie("session").value


def with_cookie(app, value: str):
    """Another client with a copy of the cookie, from the same address (so only the server can refuse it)."""
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    other.set_cookie("session", value)
    return other


def test_a_cookie_copied_before_logout_opens_nothing_afterwards(app, client, people):
    assert login(client, people.alice.email).status_code == 302
    stolen = cookie_of(client)
    assert with_cookie(app, stolen).get("/keys").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert with_cookie(app, stolen).get("/keys").status_code == 302  # to the login page
    session = db.session.scalar(select(WebSession).where(WebSession.user_id == people.alice.id))
    assert session.ended_at is not None


def test_a_password_change_ends_every_other_session(app, client, people):
    assert login(client, people.alice.email).status_code == 302
    laptop = app.test_client()
    assert login(laptop, people.alice.email, address="192.0.2.9").status_code == 302
    page = client.get("/account").get_data(as_text=True)
    assert page.count("<tr><td>") == 2 and "this browser" in page
    changed = client.post("/account/password", data={"current": PASSWORD, "password": "plum orbit caravan 7",
                                                     "confirm": "plum orbit caravan 7",
                                                     "csrf_token": csrf_token(client, "/account")})
    assert changed.status_code == 302
    assert "Every other session of yours has ended." in client.get("/account").get_data(as_text=True)
    assert client.get("/keys").status_code == 200
    assert laptop.get("/keys").status_code == 302
    assert login(laptop, people.alice.email, "plum orbit caravan 7", address="192.0.2.9").status_code == 302


def test_a_password_change_needs_the_current_password_and_a_good_new_one(client, people):
    login(client, people.alice.email)
    for current, new, says in ((PASSWORD + "x", "plum orbit caravan 7", "Your current password is not right."),
                               (PASSWORD, "password1234", "harder to guess")):
        response = client.post("/account/password", data={"current": current, "password": new, "confirm": new,
                                                          "csrf_token": csrf_token(client, "/account")})
        assert response.status_code == 400 and says in response.get_data(as_text=True)
    assert accounts.authenticate(people.alice.email, PASSWORD) is not None


def test_log_out_everywhere_ends_every_session(app, client, people):
    login(client, people.alice.email)
    laptop = app.test_client()
    login(laptop, people.alice.email, address="192.0.2.9")
    response = client.post("/logout-everywhere", data={"csrf_token": csrf_token(client, "/account")})
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert client.get("/keys").status_code == 302 and laptop.get("/keys").status_code == 302
    assert "Logged out everywhere (2 sessions ended)." in client.get("/login").get_data(as_text=True)


def test_a_session_ends_when_unused_for_too_long(client, people):
    login(client, people.alice.email)
    db.session.execute(text("UPDATE web_sessions SET last_seen_at = now() - interval '13 hours'"))
    db.session.commit()
    assert client.get("/keys").status_code == 302


def test_a_cookie_signed_with_the_users_id_opens_nothing(app, client, people):
    """The cookie carries a session's secret; the old form (the user's id) no longer works."""
    with client.session_transaction() as session:
        session["_user_id"] = str(people.alice.id)
        session["_fresh"] = True
    assert client.get("/keys").status_code == 302


# Headers --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("who, paths", [
    ("alice", ["/keys", "/usage", "/billing", "/account"]),
    ("bob", ["/host", "/account"]),
    ("carol", ["/admin", "/admin/money", "/admin/credits", "/admin/invites", "/admin/hosts", "/admin/people"]),
])
def test_every_page_has_the_policy_and_no_page_with_money_or_secrets_is_cached(client, people, who, paths):
    for path in ("/", "/models", "/login"):
        response = client.get(path)
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    login(client, getattr(people, who).email)
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == "no-store", path
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "'unsafe-inline'" not in policy, path
        html = response.get_data(as_text=True)
        inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html)
        handlers = re.findall(r"<[^>]+\son[a-z]+=", html)
        assert inline == [] and handlers == [], (path, inline, handlers)
    static = client.get("/static/app.css")
    static.close()
    assert static.headers.get("Cache-Control") != "no-store"


def test_htmx_works_under_the_policy_in_a_browser(people, page, live_server):
    """Creating a key (htmx) with the policy on: no violation, nothing broken. (The charts' browser tests in
    test_charts.py fail on any console error, a policy violation included.)"""
    from playwright.sync_api import expect

    give_credits(people.alice, "5")
    violations = []
    page.on("console", lambda message: violations.append(message.text)
            if "Content Security Policy" in message.text or message.type == "error" else None)
    page.goto("/login?next=/keys")
    page.fill("input[name=email]", people.alice.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url("**/keys")
    panel = page.locator("#keys-panel")
    panel.locator("input[name=name]").fill("laptop")
    panel.get_by_role("button", name="Create key").click()
    secret = page.locator("input.secret")
    expect(secret).to_be_visible()
    secret.click()  # selected whole by app.js, not by an inline handler
    assert page.evaluate("document.activeElement.selectionEnd - document.activeElement.selectionStart") > 20
    assert violations == []


# No GET changes state -------------------------------------------------------------------------------------------

def snapshot() -> dict[str, str]:
    """Every table's rows, as a digest."""
    db.session.rollback()
    digests = {}
    for table in db.metadata.sorted_tables:
        digests[table.name] = db.session.execute(
            text(f'SELECT md5(coalesce(string_agg(t::text, \',\' ORDER BY t::text), \'\')) FROM "{table.name}" t')
        ).scalar_one()
    db.session.rollback()
    return digests


def test_no_get_changes_anything(app, client, people, standin):
    """Every GET page, as the person it is for, leaves every table (and Stripe) as it was."""
    give_credits(people.alice, "5")
    key, _ = make_key(people.alice)
    host = make_host(people.bob, [MODEL])
    purchase = Purchase(user_id=people.alice.id, session_id="cs_test_x", amount=5_000_000)
    db.session.add(purchase)
    db.session.commit()
    arguments = {"key_id": key.id, "host_id": host.id, "purchase_id": purchase.id, "model_id": 1,
                 "user_id": people.bob.id, "payout_id": 1, "model_id_path": MODEL}
    who = {"keys": people.alice, "usage": people.alice, "billing": people.alice, "hosts": people.bob,
           "admin": people.carol, "auth": people.alice, "pages": people.alice}
    checked = []
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.split(".")[0]
        if "GET" not in rule.methods or blueprint not in who or rule.endpoint == "static":
            continue
        values = {name: arguments[name] for name in rule.arguments if name in arguments}
        if len(values) != len(rule.arguments):
            continue
        with app.test_request_context():
            path = url_for(rule.endpoint, **values)
        browser = app.test_client()
        login(browser, who[blueprint].email)
        before, accounts_at_stripe = snapshot(), dict(standin.accounts)
        response = browser.get(path)
        assert response.status_code < 500, path
        assert snapshot() == before, f"GET {path} changed the database"
        assert standin.accounts == accounts_at_stripe, f"GET {path} made something at Stripe"
        checked.append(path)
    assert {"/keys", "/host", "/host/payouts/refresh", "/host/payouts/return", "/admin/money",
            f"/billing/purchases/{purchase.id}", f"/keys/{key.id}/edit"} <= set(checked)
