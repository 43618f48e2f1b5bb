"""Rows for tests, made through the same services the app uses."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from app import accounts, api_keys, catalog
from app.extensions import db
from app.models import Invite, User, utcnow

PASSWORD = "correct horse battery staple"


def make_user(email: str, *, client: bool = True, host: bool = False, admin: bool = False,
              password: str = PASSWORD) -> User:
    user = accounts.create_user(email, password, is_admin=admin)
    user.is_client, user.is_host = client, host
    db.session.commit()
    return user


def make_key(user: User, name: str = "laptop", **options):
    """(ApiKey row, full secret)."""
    return api_keys.create_key(user, name, **options)


def make_invite(admin: User, *, hours: int = 72, note: str = "") -> tuple[Invite, str]:
    return accounts.create_invite(admin, note, hours)


def expire(invite: Invite) -> None:
    invite.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()


def seed_catalog() -> None:
    catalog.seed()


def personas() -> SimpleNamespace:
    return SimpleNamespace(
        alice=make_user("alice@example.com"),
        bob=make_user("bob@example.com", client=False, host=True),
        carol=make_user("carol@example.com", client=False, admin=True),
        mallory=make_user("mallory@example.com"),
    )
