"""Server-rendered pages (HTMX): one blueprint per area."""
from __future__ import annotations

from flask import Flask, abort, g, render_template, request
from flask_wtf.csrf import CSRFError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.routing import IntegerConverter

from .. import accounts
from ..extensions import db, login_manager
from ..models import User
from ..money.units import format_usd
from ..proxy.errors import openai_error, route_error

# Everything from this site, nothing inline: no script or style in the page itself, no frames, no plugins.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
                           "frame-ancestors 'none'")


@login_manager.user_loader
def load_user(session_token: str) -> User | None:
    """The user of the web session whose secret the signed cookie holds (see ``accounts.session_user``)."""
    if g.get("service_away"):  # rendering the error page for a database that is away
        return None
    try:
        return accounts.session_user(session_token)
    except (OperationalError, PoolTimeout):
        g.service_away = True
        raise


MAX_ID = 2**31 - 1  # every id in the database is a PostgreSQL integer


class IdConverter(IntegerConverter):
    """``<int:...>`` in every URL: a positive id that fits the database; anything else is no such page (404)."""

    def __init__(self, url_map, **kwargs):
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, **kwargs)


def _refuse_nul_bytes() -> None:
    """A NUL byte in a form field or query parameter is never meant: refuse it before any service sees it (the
    database would refuse it anyway, later and less kindly)."""
    if request.path.startswith("/v1/"):
        return  # the API's own parser answers in OpenAI's format
    values = [*request.args.values(), *(request.form.values() if request.method == "POST" else ())]
    if any("\x00" in value for value in values):
        abort(400, "The request contained a character that is not allowed (a NUL byte).")


def register_web(app: Flask) -> None:
    from . import admin, auth, billing, hosts, keys, pages, trust, usage

    app.url_map.converters["int"] = IdConverter
    app.before_request(_refuse_nul_bytes)

    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to see that page."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"

    for module in (pages, auth, keys, usage, billing, hosts, admin, trust):
        app.register_blueprint(module.bp)
    app.register_blueprint(billing.webhook_bp)

    app.add_template_filter(format_usd, "usd")
    app.add_template_filter(lambda mib: f"{mib / 1024:g} GiB" if mib else "none (CPU)", "vram")
    app.add_template_filter(lambda dt: dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "never", "when")

    @app.after_request
    def security_headers(response):
        response.vary.add("HX-Request")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if request.endpoint != "static":
            response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            # Pages show balances, keys, invites and tokens: no copy of any of them stays in a cache.
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return render_template("error.html", code=400, title="The form expired",
                               message="The form was missing its security token or it expired. "
                                       "Reload the page and try again."), 400

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeout)
    @app.errorhandler(RedisError)
    def service_unavailable(error):
        """PostgreSQL or Redis is away: a page that says so, not a stack trace."""
        app.logger.warning("%s %s: a backing service is unavailable: %s", request.method, request.path,
                           type(error).__name__)
        g.service_away = True
        try:
            db.session.rollback()
        except Exception:  # the connection is gone with the server
            pass
        return _error_page(503, "Briefly unavailable", "A service this page needs is unavailable. "
                                                       "Try again in a few seconds.")(error)

    for code, title, message in (
        (400, "Bad request", "The request could not be understood."),
        (403, "Not allowed", "Your account cannot use this page."),
        (404, "Not found", "There is nothing here. It may have been removed, or the link is wrong."),
        (405, "Method not allowed", "This page does not accept that kind of request."),
        (413, "Too large", "The request was larger than this server accepts."),
        (500, "Something went wrong", "The error has been logged. Try again in a moment."),
    ):
        app.register_error_handler(code, _error_page(code, title, message))


def _error_page(code: int, title: str, message: str):
    """An error in the caller's format: OpenAI's error object under /v1, JSON under /api, a page elsewhere. An
    ``abort(code, description)`` of ours says its own words."""
    def handler(error):
        headers = {"Retry-After": "5"} if code == 503 else {}
        said = getattr(error, "description", None)
        text = said if isinstance(said, str) and said and not said.startswith(DEFAULT_DESCRIPTIONS) else message
        if request.path.startswith("/v1/"):
            return route_error(code, request.method, request.path, headers) or openai_error(code, text,
                                                                                             headers=headers)
        if request.path.startswith("/api/"):
            return {"error": text}, code, headers
        return render_template("error.html", code=code, title=title, message=text), code, headers
    return handler


# werkzeug's own descriptions (what every abort without words carries): our pages say theirs instead.
DEFAULT_DESCRIPTIONS = ("The browser (or proxy) sent a request", "You don't have the permission",
                        "The requested URL was not found", "The method is not allowed", "The data value transmitted",
                        "The server encountered an internal error", "The server is temporarily unable")
