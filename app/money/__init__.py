"""Every cent: the ledger, money coming in from clients, money going out to hosts, and the reports on both.

- ``units``: micro-USD (the ledger's unit), cents (Stripe's), dollars as people type them, and the cost of
  tokens at a price. No other module writes the size of a dollar.
- ``ledger``: the double-entry ledger PostgreSQL keeps honest; ``ledger.sql`` holds the current bodies of its
  functions (``gs_hold``, ``gs_finish``, ``gs_release``, ``gs_void_expired`` and their helpers).
- ``stripe``: the Stripe client, and checking that a webhook delivery is Stripe's.
- ``purchases``: buying credits with Checkout, refunds and disputes.
- ``connect``: host owners' Stripe Connect accounts: onboarding, their state, their payout threshold.
- ``payouts``: paying hosts their earnings, exactly once.
- ``webhooks``: the one table of the Stripe events acted on, for both webhook endpoints.
- ``usage``: what a client spent; ``reports``: the platform's position and reconciliation with Stripe.

Imports go one way: ``webhooks`` -> ``purchases``, ``connect``, ``payouts`` -> ``stripe``, ``ledger`` ->
``units``; ``reports`` reads them all. Nothing here imports views.
"""
