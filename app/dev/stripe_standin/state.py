"""The Stripe stand-in's state: sessions, charges, disputes, accounts and transfers, and the events they send."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request

API_VERSION = "2025-09-30.clover"
KEY_RE = re.compile(r"([^\[\]]+)|\[([^\[\]]*)\]")


def _id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``, made as Stripe makes it."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def parse_form(pairs) -> dict:
    """Stripe's form encoding (``line_items[0][price_data][unit_amount]=500``) as nested dicts and lists."""
    root: dict = {}
    for key, value in pairs:
        parts = [a or b for a, b in KEY_RE.findall(key)]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node):
    if not isinstance(node, dict):
        return node
    if node and all(key.isdigit() for key in node):
        return [_lists(node[key]) for key in sorted(node, key=int)]
    return {key: _lists(value) for key, value in node.items()}


class State:
    """The stand-in's objects and what can happen to them; ``deliver`` sends an event to the webhook URL."""

    def __init__(self, api_key: str, webhook_secret: str, webhook_url: str | None = None):
        self.api_key, self.webhook_secret, self.webhook_url = api_key, webhook_secret, webhook_url
        self.sessions: dict[str, dict] = {}
        self.charges: dict[str, dict] = {}
        self.disputes: dict[str, dict] = {}
        self.events: list[dict] = []
        self.deliveries: list[tuple[str, int | str]] = []
        self._idempotent: dict[str, dict] = {}
        self.accounts: dict[str, dict] = {}
        self.account_links: dict[str, dict] = {}
        self.transfers: dict[str, dict] = {}  # in creation order
        self.balance: int | None = None
        self.connect_webhook_url: str | None = None
        self.connect_webhook_secret: str | None = None
        self._transfer_keys: dict[str, tuple[dict, int, dict]] = {}  # key -> (params, status, body)
        self._lock = threading.Lock()
        self.autodeliver = True  # tests turn this off to deliver events themselves, twice or out of order
        self.state_path: str | None = None

    # --- what tests and the hosted page do ------------------------------------------------------------------

    def event(self, type_: str, obj: dict) -> dict:
        snapshot = json.loads(json.dumps({key: value for key, value in obj.items() if not key.startswith("_")}))
        event = {"id": _id("evt"), "object": "event", "api_version": API_VERSION, "created": int(time.time()),
                 "data": {"object": snapshot}, "livemode": False, "pending_webhooks": 1,
                 "request": {"id": None, "idempotency_key": None}, "type": type_}
        self.events.append(event)
        return event

    def deliver(self, event: dict, *, timestamp: int | None = None, secret: str | None = None,
                url: str | None = None) -> int | str:
        """POST ``event`` to the webhook URL, signed; the HTTP status (or the error) is returned and recorded."""
        payload = json.dumps(event)
        req = urllib.request.Request(url or self.webhook_url, data=payload.encode(), method="POST", headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign(payload, secret or self.webhook_secret, timestamp)})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                status: int | str = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            status = str(exc)
        self.deliveries.append((event["id"], status))
        return status

    def _send(self, type_: str, obj: dict) -> dict:
        event = self.event(type_, obj)
        if self.webhook_url and self.autodeliver:
            self.deliver(event)
        return event

    def pay(self, session_id: str, *, asynchronous: bool = False) -> dict:
        """The customer pays: the session completes (paid, or unpaid until the bank transfer settles)."""
        session = self.sessions[session_id]
        if session["status"] != "open":
            raise ValueError("this session is no longer open")
        payment_intent = _id("pi")
        session.update(status="complete", payment_intent=payment_intent,
                       payment_status="unpaid" if asynchronous else "paid")
        if not asynchronous:
            self._charge(session)
        return self._send("checkout.session.completed", session)

    def settle(self, session_id: str, *, succeeded: bool = True) -> dict:
        """An asynchronous payment (bank transfer) settles, or fails."""
        session = self.sessions[session_id]
        if session["payment_status"] != "unpaid" or session["status"] != "complete":
            raise ValueError("no asynchronous payment is pending on this session")
        if succeeded:
            session["payment_status"] = "paid"
            self._charge(session)
            return self._send("checkout.session.async_payment_succeeded", session)
        return self._send("checkout.session.async_payment_failed", session)

    def refund(self, session_id: str, cents: int | None = None, *, send: bool = True) -> dict:
        """Refund ``cents`` (all that is left by default) of the session's charge: a ``charge.refunded`` event."""
        charge = self._charge_of(session_id)
        if charge["disputed"]:
            raise ValueError("a disputed charge can't be refunded")
        cents = charge["amount"] - charge["amount_refunded"] if cents is None else cents
        charge["amount_refunded"] += cents
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return self._send("charge.refunded", charge) if send else self.event("charge.refunded", charge)

    def dispute(self, session_id: str, cents: int | None = None, *, send: bool = True) -> dict:
        """The cardholder disputes the charge: a ``charge.dispute.created`` event."""
        charge = self._charge_of(session_id)
        dispute = {"id": _id("dp"), "object": "dispute", "amount": charge["amount"] if cents is None else cents,
                   "charge": charge["id"], "currency": charge["currency"], "payment_intent": charge["payment_intent"],
                   "reason": "fraudulent", "status": "needs_response", "created": int(time.time()),
                   "livemode": False, "metadata": {}}
        charge["disputed"] = True
        self.disputes[dispute["id"]] = dispute
        return self._send("charge.dispute.created", dispute) if send else self.event("charge.dispute.created", dispute)

    def win_dispute(self, dispute_id: str, *, send: bool = True) -> dict:
        """The platform wins the dispute: Stripe returns the money, a ``charge.dispute.funds_reinstated`` event."""
        dispute = self.disputes[dispute_id]
        if dispute["status"] == "won":
            raise ValueError("this dispute was already won")
        dispute["status"] = "won"
        self.charges[dispute["charge"]]["disputed"] = False
        event = self.event("charge.dispute.funds_reinstated", dispute)
        if send and self.webhook_url and self.autodeliver:
            self.deliver(event)
        return event

    def _charge(self, session: dict) -> dict:
        charge = {"id": _id("ch"), "object": "charge", "amount": session["amount_total"],
                  "amount_captured": session["amount_total"], "amount_refunded": 0, "captured": True,
                  "currency": session["currency"], "paid": True, "payment_intent": session["payment_intent"],
                  "refunded": False, "disputed": False, "status": "succeeded", "created": int(time.time()),
                  "livemode": False, "metadata": {}}
        self.charges[charge["id"]] = charge
        session["_charge"] = charge["id"]
        return charge

    def _charge_of(self, session_id: str) -> dict:
        session = self.sessions[session_id]
        if "_charge" not in session:
            raise ValueError("this session has no successful charge")
        return self.charges[session["_charge"]]

    def _payment_intent(self, session: dict, *, with_charge: bool) -> dict | None:
        """The session's PaymentIntent as an expanded object (the stand-in keeps no others), its charge too if asked."""
        if not session.get("payment_intent"):
            return None
        charge = self.charges.get(session.get("_charge"))
        return {"id": session["payment_intent"], "object": "payment_intent", "amount": session["amount_total"],
                "amount_received": charge["amount"] if charge else 0, "currency": session["currency"],
                "status": "succeeded" if charge else "processing", "livemode": False, "metadata": {},
                "latest_charge": (dict(charge) if with_charge else charge["id"]) if charge else None}

    def onboard(self, account_id: str) -> dict:
        """The host finishes Stripe's onboarding: details submitted, transfers and payouts enabled."""
        account = self.accounts[account_id]
        account.update(details_submitted=True, payouts_enabled=True, charges_enabled=True,
                       capabilities={"transfers": "active"})
        account["requirements"].update(currently_due=[], eventually_due=[], disabled_reason=None)
        self.connect_event("account.updated", account, account_id)
        return account

    def connect_event(self, type_: str, obj: dict, account_id: str) -> dict:
        """An event from a connected account (it names the account), sent to the Connect endpoint."""
        event = self.event(type_, obj)
        event["account"] = account_id
        if self.connect_webhook_url and self.autodeliver:
            self.deliver(event, url=self.connect_webhook_url, secret=self.connect_webhook_secret)
        return event

    def bank_payout(self, account_id: str, cents: int, *, failed: bool = False) -> dict:
        """The connected account pays its balance out to the host's bank: ``payout.paid`` or ``payout.failed``."""
        payout = {"id": _id("po"), "object": "payout", "amount": cents, "currency": "usd",
                  "arrival_date": int(time.time()), "created": int(time.time()), "livemode": False,
                  "status": "failed" if failed else "paid", "metadata": {},
                  "failure_code": "account_closed" if failed else None,
                  "failure_message": "The bank account has been closed." if failed else None}
        return self.connect_event("payout.failed" if failed else "payout.paid", payout, account_id)

    def reverse_transfer(self, transfer_id: str, cents: int | None = None) -> dict:
        """Take back ``cents`` (all that is left by default) of a transfer: a reversal and a ``transfer.reversed``
        event to the platform's endpoint. The money returns to the platform's balance."""
        with self._lock:
            transfer = self.transfers.get(transfer_id)
            if transfer is None:
                raise StripeApiError("id", f"No such transfer: '{transfer_id}'", 404)
            left = transfer["amount"] - transfer["amount_reversed"]
            cents = left if cents is None else cents
            if not 0 < cents <= left:
                raise StripeApiError("amount", f"Amount must be from 1 to {left}, what is left of the transfer.")
            reversal = {"id": _id("trr"), "object": "transfer_reversal", "amount": cents,
                        "balance_transaction": _id("txn"), "created": int(time.time()),
                        "currency": transfer["currency"], "destination_payment_refund": _id("pyr"), "metadata": {},
                        "transfer": transfer_id}
            transfer["amount_reversed"] += cents
            transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
            transfer["reversals"]["data"].insert(0, reversal)
            transfer["reversals"]["total_count"] += 1
            if self.balance is not None:
                self.balance += cents
        self._send("transfer.reversed", transfer)
        return reversal

    STATE = ("sessions", "charges", "disputes", "accounts", "account_links", "transfers", "balance", "_idempotent",
             "_transfer_keys")

    def save(self) -> None:
        """Write the state to ``state_path`` (when set), so a restarted stand-in still knows what it did."""
        if not self.state_path:
            return
        with self._lock:
            state = json.dumps({name: getattr(self, name) for name in self.STATE})
        partial = f"{self.state_path}.partial"
        with open(partial, "w") as fh:
            fh.write(state)
        os.replace(partial, self.state_path)

    def load(self, path: str) -> None:
        """Read the state a stand-in saved at ``path`` (if any) and keep saving there."""
        self.state_path = path
        if not os.path.exists(path):
            return
        with open(path) as fh:
            state = json.load(fh)
        for name in self.STATE:
            if name in state:
                setattr(self, name, state[name])
        self._transfer_keys = {key: tuple(saved) for key, saved in self._transfer_keys.items()}

    def forget_keys(self) -> None:
        """Prune every saved idempotency key, as Stripe does once a key is 24 hours old."""
        with self._lock:
            self._transfer_keys.clear()
            self._idempotent.clear()

    def create_account(self, params: dict) -> dict:
        if params.get("type") != "express":
            raise StripeApiError("type", "The stand-in supports only type=express.")
        account = {
            "id": _id("acct"), "object": "account", "type": "express", "country": params.get("country", "US"),
            "email": params.get("email"), "created": int(time.time()), "default_currency": "usd",
            "details_submitted": False, "charges_enabled": False, "payouts_enabled": False,
            "capabilities": {"transfers": "inactive"}, "metadata": params.get("metadata") or {},
            "requirements": {"currently_due": ["external_account", "individual.first_name"],
                             "eventually_due": ["external_account", "individual.first_name"],
                             "past_due": [], "disabled_reason": "requirements.past_due"},
        }
        self.accounts[account["id"]] = account
        return account

    def create_account_link(self, params: dict, base_url: str) -> dict:
        account_id = params.get("account")
        if account_id not in self.accounts:
            raise StripeApiError("account", f"No such account: '{account_id}'")
        if params.get("type") not in ("account_onboarding", "account_update"):
            raise StripeApiError("type", "type must be account_onboarding or account_update.")
        for name in ("refresh_url", "return_url"):
            if not params.get(name):
                raise StripeApiError(name, f"Missing required param: {name}.")
        now = int(time.time())
        token = secrets.token_urlsafe(16)
        link = {"object": "account_link", "created": now, "expires_at": now + 300,
                "url": f"{base_url}connect/onboarding/{token}"}
        self.account_links[token] = {**link, "_account": account_id, "_return_url": params["return_url"],
                                     "_refresh_url": params["refresh_url"]}
        return link

    def create_transfer(self, params: dict) -> tuple[int, dict]:
        """The status and body of ``POST /v1/transfers``; errors after validation are Stripe-shaped bodies."""
        try:
            amount = int(params["amount"])
            currency, destination = params["currency"], params["destination"]
        except (KeyError, ValueError):
            raise StripeApiError("amount", "Missing required param: amount, currency or destination.") from None
        if amount < 1:
            raise StripeApiError("amount", "This value must be greater than or equal to 1.")
        account = self.accounts.get(destination)
        if account is None:
            raise StripeApiError("destination", f"No such destination: '{destination}'")
        if account["capabilities"].get("transfers") != "active":
            return 400, {"error": {
                "type": "invalid_request_error", "code": "insufficient_capabilities_for_transfer",
                "param": "destination",
                "message": "Your destination account needs to have at least one of the following capabilities "
                           "enabled: transfers, crypto_transfers, legacy_payments"}}
        if self.balance is not None and amount > self.balance:
            return 400, {"error": {
                "type": "invalid_request_error", "code": "balance_insufficient",
                "message": "You have insufficient available funds in your Stripe account. Try adding funds "
                           "directly to your available balance by creating Top-ups."}}
        if self.balance is not None:
            self.balance -= amount
        transfer = {
            "id": _id("tr"), "object": "transfer", "amount": amount, "amount_reversed": 0,
            "balance_transaction": _id("txn"), "created": int(time.time()), "currency": currency,
            "description": params.get("description"), "destination": destination,
            "destination_payment": _id("py"), "livemode": False, "metadata": params.get("metadata") or {},
            "reversals": {"object": "list", "data": [], "has_more": False, "total_count": 0,
                          "url": "/v1/transfers/reversals"},
            "reversed": False, "source_transaction": None, "source_type": "card",
            "transfer_group": params.get("transfer_group"),
        }
        self.transfers[transfer["id"]] = transfer
        return 200, transfer

    # --- the API ----------------------------------------------------------------------------------------------

    def create_session(self, params: dict, base_url: str) -> dict:
        if params.get("mode") != "payment":
            raise StripeApiError("mode", "The stand-in supports only mode=payment.")
        for name in ("success_url", "cancel_url"):
            if not params.get(name):
                raise StripeApiError(name, f"Missing required param: {name}.")
        items = params.get("line_items") or []
        if not items:
            raise StripeApiError("line_items", "Missing required param: line_items.")
        total, currency = 0, None
        for i, item in enumerate(items):
            price = item.get("price_data") or {}
            try:
                unit, quantity = int(price["unit_amount"]), int(item.get("quantity", 1))
                currency = price["currency"]
                price["product_data"]["name"]
            except (KeyError, TypeError, ValueError):
                raise StripeApiError(f"line_items[{i}][price_data]",
                                     "Each line item needs price_data with currency, unit_amount and "
                                     "product_data[name].") from None
            if unit < 50 or quantity < 1:
                raise StripeApiError(f"line_items[{i}][price_data][unit_amount]",
                                     "The amount must be at least 50 cents.")
            total += unit * quantity
        session_id = _id("cs")
        now = int(time.time())
        session = {
            "id": session_id, "object": "checkout.session", "amount_subtotal": total, "amount_total": total,
            "cancel_url": params["cancel_url"], "client_reference_id": params.get("client_reference_id"),
            "created": now, "currency": currency, "customer": None, "customer_email": params.get("customer_email"),
            "expires_at": now + 24 * 3600, "livemode": False, "metadata": params.get("metadata") or {},
            "mode": "payment", "payment_intent": None, "payment_method_types": ["card"],
            "payment_status": "unpaid", "status": "open",
            "success_url": params["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id),
            "url": f"{base_url}pay/{session_id}",
        }
        self.sessions[session_id] = session
        return session


class StripeApiError(Exception):
    def __init__(self, param: str, message: str, status: int = 400):
        super().__init__(message)
        self.param, self.message, self.status = param, message, status
