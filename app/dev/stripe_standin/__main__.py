"""``python -m app.dev.stripe_standin --port N --webhook-url URL [--connect-webhook-url URL] [--state FILE]``:
the stand-in as a server; its secrets come through the environment."""
from __future__ import annotations

import argparse
import os

from .http import StandIn


def main(argv: list[str] | None = None) -> None:
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description="A local stand-in for Stripe")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--webhook-url", required=True)
    parser.add_argument("--connect-webhook-url", help="where events from connected accounts go")
    parser.add_argument("--state", help="a JSON file that keeps the stand-in's objects across restarts")
    args = parser.parse_args(argv)
    # Secrets come through the environment, never the command line (other users can read that).
    standin = StandIn(os.environ["STRIPE_STANDIN_API_KEY"], os.environ["STRIPE_STANDIN_WEBHOOK_SECRET"],
                      args.webhook_url)
    standin.connect_webhook_url = args.connect_webhook_url
    standin.connect_webhook_secret = os.environ.get("STRIPE_STANDIN_CONNECT_WEBHOOK_SECRET")
    if args.state:
        standin.load(args.state)
    run_simple(args.host, args.port, standin.app, threaded=True)


if __name__ == "__main__":
    main()
