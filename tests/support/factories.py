"""Rows for tests, made through the same services the app uses."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from flask import current_app
from sqlalchemy import select

from app import accounts
from app.accounts import api_keys
from app.dev import demo
from app.extensions import db
from app.models import CatalogModel, Host, HostModel, Invite, User, utcnow
from app.money import ledger, units

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
    """The models on sale and the demo and test models (the tests' hosts serve the tiny test model)."""
    demo.seed_models()


def personas() -> SimpleNamespace:
    return SimpleNamespace(
        alice=make_user("alice@example.com"),
        bob=make_user("bob@example.com", client=False, host=True),
        carol=make_user("carol@example.com", client=False, admin=True),
        mallory=make_user("mallory@example.com"),
    )


def make_host(owner: User, models: list[str], *, api_base: str = "http://127.0.0.1:9", name: str = "rig",
              healthy: bool = True, enabled: bool = True, status: str = "approved", trust_state: str = "verified",
              reference: bool = False) -> Host:
    """A host serving ``models`` (catalog ids; the catalog is seeded when empty) at ``api_base``, verified unless
    ``trust_state`` says otherwise."""
    if not db.session.scalar(select(CatalogModel.id).limit(1)):
        seed_catalog()
    host = Host(owner_id=owner.id, name=name, status=status, enabled=enabled, healthy=healthy, api_base=api_base,
                trust_state=trust_state, reference=reference)
    db.session.add(host)
    db.session.flush()
    for hf_id in models:
        model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == hf_id))
        db.session.add(HostModel(host_id=host.id, model_id=model.id))
    db.session.commit()
    refresh_routes()
    return host


def refresh_routes() -> None:
    """Routing tables cache for a few seconds; tests change hosts and want the change seen at once."""
    gateway = current_app.extensions.get("gateway")
    if gateway is not None:
        gateway.routing.invalidate()


def give_credits(user: User, dollars: str) -> None:
    ledger.grant(None, user, units.usd(dollars), memo="test credits", transfer_id=f"test:{user.id}:{dollars}")
