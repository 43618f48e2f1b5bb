"""A local stand-in for Stripe: just the Checkout calls gpushare makes, a hosted payment page, and signed webhooks.

Stripe's servers can't be reached from tests or from a laptop demo, so the app's
``StripeClient`` is pointed here (``STRIPE_API_BASE``); the production code path
is the same. It speaks Stripe's API shape for:

- ``POST /v1/checkout/sessions`` (``mode=payment``, ``line_items[].price_data``,
  ``success_url``/``cancel_url``, ``metadata``, ``client_reference_id``; the
  ``Idempotency-Key`` header is honoured), ``GET /v1/checkout/sessions/<id>``
  and ``GET /v1/checkout/sessions`` (``limit``, ``starting_after``, and
  ``expand[]=data.payment_intent.latest_charge`` for what was refunded);
- a hosted page per session with Pay (card), Pay by bank transfer (async:
  settled later with succeed/fail), Decline, and Cancel;
- webhook events signed as Stripe signs them (``Stripe-Signature: t=...,v1=...``,
  HMAC-SHA256 of ``"{t}.{payload}"``): ``checkout.session.completed``,
  ``checkout.session.async_payment_succeeded`` / ``_failed``, ``charge.refunded``,
  ``charge.dispute.created``;
- Connect: ``POST /v1/accounts`` (Express), ``GET /v1/accounts/<id>``,
  ``POST /v1/account_links`` (a local onboarding page that completes the
  account and sends the host to ``return_url``), ``POST /v1/transfers`` and
  ``GET /v1/transfers`` (``destination``, ``limit``, ``starting_after``).
  Transfers keep Stripe's idempotency rules: the first response to a key is
  saved, errors included, and replayed; the same key with other parameters is
  an ``idempotency_error``; ``forget_keys`` prunes keys as Stripe does after
  24 hours. ``balance`` (cents; None is unlimited) is the platform's available
  balance: a transfer beyond it is refused with ``balance_insufficient``.
  Connect events (``account.updated`` on onboarding, ``payout.paid`` /
  ``payout.failed`` from ``bank_payout``) go to ``connect_webhook_url``.
  ``POST /v1/transfers/<id>/reversals`` (and ``reverse_transfer``) takes
  money back from a connected account: a ``transfer.reversed`` event to the
  platform's endpoint; ``charge.dispute.funds_reinstated`` comes from
  ``win_dispute``.

State lives in memory, and in a JSON file with ``--state`` (``make run``
keeps it in the data directory, so purchases and payouts made in one run are
still known to the next). Run it with ``python -m app.dev.stripe_standin`` (``make run`` does
when no ``STRIPE_SECRET_KEY`` is set), or in-process from tests.

- ``state``: the objects and what can happen to them (the events they send);
- ``http``: Stripe's API shape and the hosted pages over that state (``StandIn``);
- ``__main__``: the server.
"""
from .http import StandIn
from .state import sign

__all__ = ["StandIn", "sign"]
