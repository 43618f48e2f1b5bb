"""gpushare: a marketplace for LLM inference.

Where things live (views -> services -> models; nothing here imports ``dev``):

- ``__init__`` (``create_app``), ``config``, ``extensions``, ``cli``, ``models`` (every table);
- ``money/``: every cent: units, the ledger, Stripe, purchases, host payouts, usage and reports;
- ``proxy/``: the OpenAI-compatible API, in the order a request meets it;
- ``hostapi/``: the JSON API hostkit talks to; ``web/``: the HTMX pages; ``static/``;
- ``accounts/``: people and access: users, passwords, sessions, invites, API keys, tokens, the audit log;
- ``catalog/``: what is sold: the catalog (real models only) and pricing;
- ``hosts/``: a machine's life: enrolment, approval, heartbeats, ``serving(host)``, schedule, diagnostics, hub;
- ``dev/``: what only ``make run`` and the tests use.
"""
from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask

from .config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def create_app(config: dict | None = None) -> Flask:
    """Build the app: config, extensions, blueprints, error handlers and CLI.

    ``config`` overrides what the environment says. A database and a Redis URL are required: ``make run``
    runs PostgreSQL and Redis itself and says where (``config``'s ``services.env``).
    """
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder="static")
    app.config.update(load_config())
    if config:
        app.config.update(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (app.config["SQLALCHEMY_DATABASE_URI"] and app.config["REDIS_URL"]):
        raise ConfigError("DATABASE_URL and REDIS_URL must be set (`make run` runs PostgreSQL and Redis itself, and "
                          "flask commands beside it find them)")
    if app.config["PROXY_FIX_HOPS"]:
        from werkzeug.middleware.proxy_fix import ProxyFix
        hops = app.config["PROXY_FIX_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    from . import extensions, models  # noqa: F401  (models register their tables)
    extensions.db.init_app(app)
    extensions.migrate.init_app(app, extensions.db, directory=str(ROOT / "migrations"))
    extensions.csrf.init_app(app)
    extensions.htmx.init_app(app)
    extensions.redis_client.init_app(app)
    extensions.login_manager.init_app(app)

    from .web import register_web
    register_web(app)
    from .proxy import bp as proxy_bp
    extensions.csrf.exempt(proxy_bp)  # authenticated by API key, never by cookie
    app.register_blueprint(proxy_bp)

    from .hostapi import bp as hostapi_bp
    extensions.csrf.exempt(hostapi_bp)  # authenticated by enrollment key or host token, never by cookie
    app.register_blueprint(hostapi_bp)

    from .cli import register_cli
    register_cli(app)
    return app
