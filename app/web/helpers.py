"""What every page view shares: who may see it, which page of a list, and how an error is told."""
from __future__ import annotations

from functools import wraps

from flask import abort, flash, request
from flask_login import current_user, login_required

MAX_PAGE = 100_000


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


def page_number() -> int:
    """``?page=`` of a paged list: 1 when absent; a page that cannot exist is a 404."""
    raw = request.args.get("page", "1")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7 and 1 <= int(raw) <= MAX_PAGE):
        abort(404)
    return int(raw)


def flash_error(message: str) -> None:
    flash(message, "error")
