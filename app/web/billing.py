"""The client's billing page (balance, buying credits, purchases) and Stripe's two webhook endpoints."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from wtforms import IntegerField
from wtforms.validators import InputRequired

from ..extensions import csrf
from ..money import ledger, purchases, stripe, usage, webhooks
from ..money.units import dollars
from .forms import Form
from .helpers import role_required

bp = Blueprint("billing", __name__, url_prefix="/billing")
webhook_bp = Blueprint("stripe_webhook", __name__)


class BuyForm(Form):
    dollars = IntegerField("Amount (USD)", validators=[InputRequired("Choose an amount.")])


def _page(form: BuyForm, status: int = 200):
    low, high = purchases.limits()
    account = ledger.balance(current_user)
    return render_template("billing/index.html", form=form, account=account, owed=ledger.owed(current_user),
                           purchases=purchases.purchases(current_user), packs=purchases.PACKS_USD, low=low, high=high,
                           enabled=stripe.enabled(), totals=purchases.totals(current_user),
                           spend=usage.spend_per_day(current_user),
                           low_balance=account.available < dollars(current_app.config["LOW_BALANCE_USD"]),
                           cancelled="cancelled" in request.args), status


@bp.get("")
@role_required("client")
def index():
    return _page(BuyForm(formdata=None))


@bp.post("/checkout")
@role_required("client")
def checkout():
    form = BuyForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    success = url_for("billing.success", _external=True) + "?session_id={CHECKOUT_SESSION_ID}"
    try:
        _, url = purchases.start_checkout(current_user, form.dollars.data, success_url=success,
                                        cancel_url=url_for("billing.index", cancelled=1, _external=True))
    except purchases.PurchaseError as exc:
        form.dollars.errors = [str(exc)]
        return _page(form, 400)
    return redirect(url, 303)


@bp.get("/success")
@role_required("client")
def success():
    purchase = purchases.get_purchase(current_user, session_id=request.args.get("session_id", ""))
    if purchase is None:
        abort(404)
    return render_template("billing/success.html", purchase=purchase)


@bp.get("/purchases/<int:purchase_id>")
@role_required("client")
def receipt(purchase_id: int):
    purchase = purchases.get_purchase(current_user, purchase_id=purchase_id)
    if purchase is None:
        abort(404)
    if request.htmx:
        # The success page polls this until Stripe has decided; 286 tells htmx to stop.
        done = purchase.status in ("paid", "failed")
        return render_template("billing/_purchase_status.html", purchase=purchase), 286 if done else 200
    return render_template("billing/receipt.html", purchase=purchase)


def _receive(label: str, secret_keys: tuple[str, ...]):
    """A verified Stripe event, acted on through the one table of events; 400 (nothing changed) when it is not
    provably Stripe's."""
    try:
        event = stripe.verify(request.get_data(cache=False), request.headers.get("Stripe-Signature"),
                              secret_keys=secret_keys)
    except stripe.WebhookRejected as exc:
        return jsonify(error=str(exc)), 400
    outcome = webhooks.handle(event)
    current_app.logger.info("%s %s (%s): %s", label, event["id"], event["type"], outcome)
    return jsonify(received=True, outcome=outcome)


@webhook_bp.post("/stripe/webhook")
@csrf.exempt
def stripe_webhook():
    return _receive("stripe event", stripe.PLATFORM_SECRETS)


@webhook_bp.post("/stripe/connect-webhook")
@csrf.exempt
def stripe_connect_webhook():
    """Events from host owners' connected accounts (Stripe sends them to a separate Connect endpoint)."""
    return _receive("stripe connect event", stripe.CONNECT_SECRETS)
