"""The platform's tables. Money and prices are integer micro-units (1 USD = 1,000,000)."""
from __future__ import annotations

from datetime import datetime, timezone

from flask_login import UserMixin
from sqlalchemy import (BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, Integer, String, Text,
                        func)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


Timestamp = DateTime(timezone=True)


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_client: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    is_host: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="user", order_by="ApiKey.id")

    __table_args__ = (CheckConstraint("email = lower(email)", name="email_lowercase"),)

    @property
    def roles(self) -> list[str]:
        return [role for role, on in (("client", self.is_client), ("host", self.is_host),
                                      ("admin", self.is_admin)) if on]


class ApiKey(db.Model):
    """A client's API key. Only its SHA-256 and a display prefix are stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    spend_limit: Mapped[int | None] = mapped_column(BigInteger)
    allowed_models: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)

    user: Mapped[User] = relationship(back_populates="api_keys")

    __table_args__ = (CheckConstraint("spend_limit IS NULL OR spend_limit > 0", name="spend_limit_positive"),)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class Invite(db.Model):
    """A single-use, expiring host invite. The code is stored hashed."""

    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(32))
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    note: Mapped[str] = mapped_column(String(200), default="", server_default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    used_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    created_by: Mapped[User | None] = relationship(foreign_keys=[created_by_id])
    used_by: Mapped[User | None] = relationship(foreign_keys=[used_by_id])

    @property
    def state(self) -> str:
        if self.used_at is not None:
            return "used"
        if self.expires_at <= utcnow():
            return "expired"
        return "open"


class CatalogModel(db.Model):
    """A model clients may call and hosts may serve. Prices are micro-units per million tokens."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    hf_id: Mapped[str] = mapped_column(String(200), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    license_name: Mapped[str] = mapped_column(String(120))
    license_url: Mapped[str] = mapped_column(String(500))
    attribution: Mapped[str] = mapped_column(Text, default="", server_default="")
    context_length: Mapped[int] = mapped_column(Integer)
    min_vram_mib: Mapped[int] = mapped_column(Integer)
    reference_input_price: Mapped[int] = mapped_column(BigInteger)
    reference_output_price: Mapped[int] = mapped_column(BigInteger)
    floor_input_price: Mapped[int] = mapped_column(BigInteger)
    floor_output_price: Mapped[int] = mapped_column(BigInteger)
    ceiling_input_price: Mapped[int] = mapped_column(BigInteger)
    ceiling_output_price: Mapped[int] = mapped_column(BigInteger)
    input_price: Mapped[int] = mapped_column(BigInteger)
    output_price: Mapped[int] = mapped_column(BigInteger)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow,
                                                 server_default=func.now())

    __table_args__ = (
        CheckConstraint("context_length > 0", name="context_length_positive"),
        CheckConstraint("min_vram_mib >= 0", name="min_vram_not_negative"),
        CheckConstraint("0 <= floor_input_price AND floor_input_price <= ceiling_input_price "
                        "AND ceiling_input_price < reference_input_price", name="input_price_bounds"),
        CheckConstraint("0 <= floor_output_price AND floor_output_price <= ceiling_output_price "
                        "AND ceiling_output_price < reference_output_price", name="output_price_bounds"),
        CheckConstraint("input_price BETWEEN floor_input_price AND ceiling_input_price", name="input_price_in_band"),
        CheckConstraint("output_price BETWEEN floor_output_price AND ceiling_output_price",
                        name="output_price_in_band"),
    )


class Host(db.Model):
    """A GPU machine offered by a host user. Nothing is routed to it until an admin approves it."""

    __tablename__ = "hosts"

    STATUSES = ("pending", "approved", "rejected", "suspended")

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    public_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    peer_id: Mapped[str | None] = mapped_column(String(80), unique=True)
    overlay_address: Mapped[str | None] = mapped_column(INET, unique=True)
    api_base: Mapped[str | None] = mapped_column(String(300))
    enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    healthy: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    hardware: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())
    approved_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(Timestamp)

    owner: Mapped[User] = relationship()
    offers: Mapped[list[HostModel]] = relationship(back_populates="host", cascade="all, delete-orphan")

    __table_args__ = (CheckConstraint("status IN ('pending', 'approved', 'rejected', 'suspended')",
                                      name="status_known"),)


class HostModel(db.Model):
    """A model a host offers to serve."""

    __tablename__ = "host_models"

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now())

    host: Mapped[Host] = relationship(back_populates="offers")
    model: Mapped[CatalogModel] = relationship()


class AuditEvent(db.Model):
    """Who did what, when, from where. The database refuses UPDATE and DELETE on this table."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, server_default=func.now(), index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict] = mapped_column(JSONB, default=dict, server_default="{}")
    ip_address: Mapped[str | None] = mapped_column(INET)

    actor: Mapped[User | None] = relationship()

