"""The Stripe stand-in over HTTP: Stripe's API shape for the calls gpushare makes, and the hosted pages."""
from __future__ import annotations

import time
from html import escape

from flask import Flask, abort, jsonify, redirect, request

from .state import State, StripeApiError, parse_form


class StandIn(State):
    """The stand-in's state and its WSGI app (``app``)."""

    def __init__(self, api_key: str, webhook_secret: str, webhook_url: str | None = None):
        super().__init__(api_key, webhook_secret, webhook_url)
        self.app = make_app(self)


def make_app(standin: State) -> Flask:
    """Stripe's API, as far as gpushare calls it, and the hosted pages, over ``standin``'s state."""
    app = Flask(__name__)

    def public(session: dict) -> dict:
        return {k: v for k, v in session.items() if not k.startswith("_")}

    @app.errorhandler(StripeApiError)
    def api_error(exc):
        return jsonify(error={"type": "invalid_request_error", "message": exc.message, "param": exc.param}), \
            exc.status

    @app.after_request
    def persist(response):
        if request.method == "POST":
            standin.save()
        return response

    @app.before_request
    def authenticate():
        if request.path.startswith("/v1/") and request.headers.get("Authorization") != f"Bearer {standin.api_key}":
            return jsonify(error={"type": "invalid_request_error",
                                  "message": "Invalid API Key provided."}), 401

    @app.post("/v1/checkout/sessions")
    def create():
        key = request.headers.get("Idempotency-Key")
        with standin._lock:
            if key and key in standin._idempotent:
                return jsonify(public(standin._idempotent[key]))
            session = standin.create_session(parse_form(request.form.items(multi=True)), request.host_url)
            if key:
                standin._idempotent[key] = session
        return jsonify(public(session))

    @app.get("/v1/checkout/sessions/<session_id>")
    def retrieve(session_id):
        if session_id not in standin.sessions:
            raise StripeApiError("id", f"No such checkout.session: '{session_id}'", status=404)
        return jsonify(public(standin.sessions[session_id]))

    @app.get("/v1/checkout/sessions")
    def list_sessions():
        """Newest first, paged as Stripe pages; ``expand[]=data.payment_intent(.latest_charge)`` as Stripe does."""
        params = parse_form(request.args.items(multi=True))
        expand = params.get("expand") or []
        expand = [expand] if isinstance(expand, str) else expand
        rows = list(reversed(list(standin.sessions.values())))
        after = params.get("starting_after")
        if after:
            ids = [s["id"] for s in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        limit = min(int(params.get("limit", 10)), 100)
        data = [public(s) for s in rows[:limit]]
        if "data.payment_intent" in expand or "data.payment_intent.latest_charge" in expand:
            for shown, session in zip(data, rows):
                shown["payment_intent"] = standin._payment_intent(
                    session, with_charge="data.payment_intent.latest_charge" in expand)
        return jsonify(object="list", url="/v1/checkout/sessions", has_more=len(rows) > limit, data=data)

    @app.post("/v1/accounts")
    def create_account():
        key = request.headers.get("Idempotency-Key")
        with standin._lock:
            if key and key in standin._idempotent:
                return jsonify(standin._idempotent[key])
            account = standin.create_account(parse_form(request.form.items(multi=True)))
            if key:
                standin._idempotent[key] = account
        return jsonify(account)

    @app.get("/v1/accounts/<account_id>")
    def retrieve_account(account_id):
        if account_id not in standin.accounts:
            raise StripeApiError("account", f"No such account: '{account_id}'", status=404)
        return jsonify(standin.accounts[account_id])

    @app.post("/v1/account_links")
    def create_account_link():
        return jsonify(standin.create_account_link(parse_form(request.form.items(multi=True)), request.host_url))

    @app.get("/connect/onboarding/<token>")
    def onboarding(token):
        link = standin.account_links.get(token) or abort(404)
        if link["expires_at"] < time.time():
            return redirect(link["_refresh_url"], 303)
        return (f"<!doctype html><html><head><meta charset=utf-8><title>Onboarding (Stripe stand-in)</title>"
                f"</head><body><h1>Set up payouts</h1><p>Local Stripe stand-in: no real account is made.</p>"
                f"<p>Account <code>{escape(link['_account'])}</code></p>"
                f'<form method="post"><button>Submit details</button></form></body></html>')

    @app.post("/connect/onboarding/<token>")
    def finish_onboarding(token):
        link = standin.account_links.pop(token, None) or abort(404)
        standin.onboard(link["_account"])
        return redirect(link["_return_url"], 303)

    @app.post("/v1/transfers")
    def create_transfer():
        key = request.headers.get("Idempotency-Key")
        params = parse_form(request.form.items(multi=True))
        with standin._lock:
            if key and key in standin._transfer_keys:
                saved_params, status, body = standin._transfer_keys[key]
                if saved_params != params:
                    return jsonify(error={
                        "type": "idempotency_error",
                        "message": "Keys for idempotent requests can only be used with the same parameters "
                                   "they were first used with. Try using a key other than "
                                   f"'{key}' if you meant to execute a different request."}), 400
                return jsonify(body), status, {"Idempotent-Replayed": "true"}
            status, body = standin.create_transfer(params)  # validation errors raise: not saved, as Stripe
            if key:
                standin._transfer_keys[key] = (params, status, body)
        return jsonify(body), status

    @app.post("/v1/transfers/<transfer_id>/reversals")
    def reverse_transfer(transfer_id):
        params = parse_form(request.form.items(multi=True))
        amount = params.get("amount")
        if amount is not None and not str(amount).isdigit():
            raise StripeApiError("amount", "Invalid integer: amount")
        return jsonify(standin.reverse_transfer(transfer_id, int(amount) if amount is not None else None))

    @app.get("/v1/transfers")
    def list_transfers():
        rows = list(reversed(list(standin.transfers.values())))  # newest first, as Stripe lists
        if request.args.get("destination"):
            rows = [t for t in rows if t["destination"] == request.args["destination"]]
        after = request.args.get("starting_after")
        if after:
            ids = [t["id"] for t in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        limit = min(int(request.args.get("limit", 10)), 100)
        return jsonify(object="list", url="/v1/transfers", has_more=len(rows) > limit, data=rows[:limit])

    @app.get("/pay/<session_id>")
    def show(session_id):
        return checkout_page(standin.sessions.get(session_id) or abort(404))

    @app.post("/pay/<session_id>")
    def act(session_id):
        session = standin.sessions.get(session_id) or abort(404)
        action = request.form.get("action")
        try:
            if action == "pay":
                standin.pay(session_id)
            elif action == "pay_later":
                standin.pay(session_id, asynchronous=True)
            elif action == "decline":
                return checkout_page(session, error="Your card was declined. Try another card."), 402
            elif action in ("settle", "fail"):
                standin.settle(session_id, succeeded=action == "settle")
                return redirect(f"/pay/{session_id}", 303)
            elif action in ("refund", "dispute"):
                getattr(standin, action)(session_id)
                return redirect(f"/pay/{session_id}", 303)
            else:
                abort(400)
        except ValueError as exc:
            return checkout_page(session, error=str(exc)), 409
        return redirect(session["success_url"], 303)

    return app


def checkout_page(session: dict, error: str = "") -> str:
    """The hosted Checkout page of ``session``: pay, pay later, decline, cancel; refund or dispute once paid."""
    amount = f"${session['amount_total'] / 100:,.2f} {session['currency'].upper()}"
    sid = escape(session["id"])
    button = '<form method="post"><button name="action" value="{0}">{1}</button></form>'.format
    if session["status"] == "open":
        actions = (button("pay", "Pay with card 4242 4242 4242 4242") + button("pay_later", "Pay by bank transfer")
                   + button("decline", "Pay with a card that is declined")
                   + f'<p><a href="{escape(session["cancel_url"])}">Cancel and go back</a></p>')
    elif session["payment_status"] == "unpaid":
        actions = ("<p>Bank transfer pending.</p>" + button("settle", "The transfer arrives")
                   + button("fail", "The transfer fails"))
    else:
        actions = (f'<p>Paid. <a href="{escape(session["success_url"])}">Return to the merchant</a></p>'
                   + button("refund", "Refund (merchant)") + button("dispute", "Dispute (cardholder)"))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Checkout (Stripe stand-in)</title></head>"
            f"<body><h1>Checkout</h1><p>Local Stripe stand-in: no real money moves.</p>"
            f"<p id=amount>{amount}</p><p>Session <code>{sid}</code></p>"
            + (f'<p class=error role=alert>{escape(error)}</p>' if error else "") + actions + "</body></html>")
