"""Every cent: units, the ledger and its SQL, Stripe in and out, webhooks, usage, reports, the money simulation."""
