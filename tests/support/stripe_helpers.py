"""The local Stripe stand-in (app/dev/stripe_standin) on a real HTTP server, wired to the app under test."""
from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from app.dev.stripe_standin import StandIn
from app.extensions import db
from app.money import ledger, purchases

API_KEY = "sk_test_standin_for_tests"
WEBHOOK_SECRET = "whsec_test_current"
OLD_WEBHOOK_SECRET = "whsec_test_previous"
CONNECT_WEBHOOK_SECRET = "whsec_test_connect"


@pytest.fixture
def standin(app, live_server):
    """A stand-in whose webhooks go to the live app; the app's Stripe settings point at it for the test."""
    standin = StandIn(API_KEY, WEBHOOK_SECRET, f"{live_server}/stripe/webhook")
    standin.connect_webhook_url = f"{live_server}/stripe/connect-webhook"
    standin.connect_webhook_secret = CONNECT_WEBHOOK_SECRET
    server = make_server("127.0.0.1", 0, standin.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    keys = ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET_PREVIOUS",
            "STRIPE_CONNECT_WEBHOOK_SECRET")
    saved = {key: app.config.get(key) for key in keys}
    app.config.update(STRIPE_SECRET_KEY=API_KEY, STRIPE_API_BASE=f"http://127.0.0.1:{server.server_port}",
                      STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, STRIPE_WEBHOOK_SECRET_PREVIOUS=None,
                      STRIPE_CONNECT_WEBHOOK_SECRET=CONNECT_WEBHOOK_SECRET)
    try:
        yield standin
    finally:
        app.config.update(saved)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def start(user, dollars: int = 20) -> str:
    """A Checkout Session for ``dollars`` of credits, made through the service; its id."""
    purchase, _ = purchases.start_checkout(user, dollars, cancel_url="http://app.test/cancelled",
                                         success_url="http://app.test/ok?session_id={CHECKOUT_SESSION_ID}")
    return purchase.session_id


def available(user) -> int:
    """What the client can spend now (committing at once: the account may have just been made)."""
    db.session.rollback()
    return ledger.balance(user).available


def owed(user) -> int:
    db.session.rollback()
    return ledger.owed(user)


def check_ledger() -> None:
    db.session.rollback()
    assert ledger.invariants() == []
