"""Server-rendered pages (HTMX): one blueprint per area."""
from __future__ import annotations

from functools import wraps

from flask import Flask, abort, flash, render_template, request
from flask_login import current_user, login_required
from flask_wtf.csrf import CSRFError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..catalog import format_usd
from ..extensions import db, login_manager
from ..models import User
from ..proxy.errors import openai_error


def role_required(role: str):
    """Signed in and holding ``role`` (client, host or admin), else 403."""
    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if role not in current_user.roles:
                abort(403)
            return view(*args, **kwargs)
        return wrapped
    return decorator


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return db.session.get(User, int(user_id)) if user_id.isdigit() else None


def register_web(app: Flask) -> None:
    from . import admin, auth, billing, hosts, keys, pages, usage

    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to see that page."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"

    for module in (pages, auth, keys, usage, billing, hosts, admin):
        app.register_blueprint(module.bp)
    app.register_blueprint(billing.webhook_bp)

    app.add_template_filter(format_usd, "usd")
    app.add_template_filter(lambda mib: f"{mib / 1024:g} GiB" if mib else "none (CPU)", "vram")
    app.add_template_filter(lambda dt: dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "never", "when")

    @app.after_request
    def vary_on_htmx(response):
        response.vary.add("HX-Request")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
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
        try:
            db.session.rollback()
        except Exception:  # the connection is gone with the server
            pass
        response = _error_page(503, "Briefly unavailable", "A service this page needs is unavailable. "
                                                           "Try again in a few seconds.")(error)
        return response

    for code, title, message in (
        (403, "Not allowed", "Your account cannot use this page."),
        (404, "Not found", "There is nothing here. It may have been removed, or the link is wrong."),
        (405, "Method not allowed", "This page does not accept that kind of request."),
        (413, "Too large", "The request was larger than this server accepts."),
        (500, "Something went wrong", "The error has been logged. Try again in a moment."),
    ):
        app.register_error_handler(code, _error_page(code, title, message))


def _error_page(code: int, title: str, message: str):
    """An error in the caller's format: OpenAI's error object under /v1, JSON under /api, a page elsewhere."""
    def handler(error):
        headers = {"Retry-After": "5"} if code == 503 else {}
        if request.path.startswith("/v1/"):
            return openai_error(code, message, headers=headers)
        if request.path.startswith("/api/"):
            return {"error": message}, code, headers
        return render_template("error.html", code=code, title=title, message=message), code, headers
    return handler


def flash_error(message: str) -> None:
    flash(message, "error")

